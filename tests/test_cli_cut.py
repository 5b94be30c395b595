"""`angle-ray eval --layer/--dim` scores the model cut to a layer and a size (ESE), and
`angle-ray export --layer` writes the cut model; a layer or size out of range is a user error."""

import json

import numpy as np
import pytest

from angle_ray.cli import USER_ERROR_EXIT, main
from angle_ray.eval.sts import cosine_rows, spearman_x100
from angle_ray.models.backbone import load_embedding_model
from angle_ray.models.embedder import Embedder


@pytest.fixture(scope="module")
def small_stsb(data_dir, tmp_path_factory):
    """A data folder whose STS-B test set is the first 40 real pairs."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "stsb").mkdir()
    lines = (data_dir / "stsb" / "test.jsonl").read_text().splitlines()[:40]
    (folder / "stsb" / "test.jsonl").write_text("\n".join(lines) + "\n")
    return folder, [json.loads(line) for line in lines]


def test_eval_layer_and_dim_score_the_cut_embedding(small_stsb, minilm_small, tmp_path):
    folder, rows = small_stsb
    out = tmp_path / "results.json"
    code = main(["eval", "--model", "all-MiniLM-L6-v2", "--tasks", "stsb", "--data-dir", str(folder),
                 "--layer", "3", "--dim", "64", "--output", str(out)])
    assert code == 0
    got = json.loads(out.read_text())
    embedder = Embedder(minilm_small)
    e1 = embedder.encode([r["text1"] for r in rows], layer=3, truncate_dim=64)
    e2 = embedder.encode([r["text2"] for r in rows], layer=3, truncate_dim=64)
    want = spearman_x100(cosine_rows(e1, e2), [r["label"] for r in rows])
    assert got["tasks"]["stsb"]["spearman"] == pytest.approx(want, abs=1e-3)
    full = spearman_x100(cosine_rows(embedder.encode([r["text1"] for r in rows]),
                                     embedder.encode([r["text2"] for r in rows])),
                         [r["label"] for r in rows])
    assert abs(full - want) > 0.5  # the cut is what was scored


def test_export_layer_writes_the_cut_model(tmp_path, minilm_small):
    code = main(["export", "--model", "all-MiniLM-L6-v2", "--output", str(tmp_path),
                 "--layer", "2", "--no-sentence-transformers"])
    assert code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 2
    texts = ["A man is playing a flute.", "Rain falls."]
    np.testing.assert_allclose(Embedder(load_embedding_model(tmp_path / "hf")).encode(texts),
                               Embedder(minilm_small).encode(texts, layer=2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("flags", "message"), [(["--layer", "7"], "--layer 7: the model has layers 1..6"),
                                                (["--dim", "500"], "--dim 500: the embedding has 1..384")])
def test_out_of_range_layer_or_dim_is_a_user_error(small_stsb, capsys, flags, message):
    folder, _ = small_stsb
    code = main(["eval", "--model", "all-MiniLM-L6-v2", "--tasks", "stsb", "--data-dir", str(folder),
                 *flags])
    assert code == USER_ERROR_EXIT
    assert message in capsys.readouterr().err
