"""angle_ray/models/onnx_export.py: the ONNX graph gives PyTorch's embeddings (fp32), int8 stays
close, batch and sequence axes are dynamic, and the folder is laid out as sentence-transformers'
ONNX backend expects."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from angle_ray.config import ModelConfig
from angle_ray.models import build_model, encode
from angle_ray.models.card import write_model_card
from angle_ray.models.onnx_export import (
    INT8_FILE,
    ONNX_DIR,
    OUTPUTS,
    OnnxEmbedder,
    export_onnx,
    read_onnx_meta,
)

PROMPTS = {"query": "query: {text}"}


# tests that use the module's MiniLM ONNX export (~20 s on 2 cores) are slow
USES_EXPORT = pytest.mark.slow


@pytest.fixture(scope="module")
def stsb_test_sentences(data_dir) -> list[str]:
    """60 real STS-B test sentences (both sides of the first 30 pairs)."""
    with open(data_dir / "stsb" / "test.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(30), f)]
    return [r["text1"] for r in rows] + [r["text2"] for r in rows]


@pytest.fixture(scope="module")
def prompted_minilm():
    return build_model(ModelConfig(), usage={"prompts": PROMPTS, "default_prompt_name": None,
                                             "normalize": True})


@pytest.fixture(scope="module")
def onnx_dir(prompted_minilm, tmp_path_factory):
    return export_onnx(prompted_minilm, tmp_path_factory.mktemp("minilm-onnx"))


@pytest.fixture(scope="module")
def fp32_runner(onnx_dir):
    return OnnxEmbedder(onnx_dir)


@USES_EXPORT
def test_fp32_onnx_matches_pytorch_on_stsb(prompted_minilm, fp32_runner, stsb_test_sentences):
    expected = encode(prompted_minilm, stsb_test_sentences, show_progress=False)
    got = fp32_runner.encode(stsb_test_sentences, batch_size=16, normalize=False)
    assert got.shape == expected.shape == (60, 384)
    assert np.abs(got - expected).max() < 1e-4
    unit = fp32_runner.encode(stsb_test_sentences, batch_size=16)
    expected_unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(unit - expected_unit).max() < 1e-4


@USES_EXPORT
def test_int8_stays_within_cosine_098_of_fp32_per_sentence(onnx_dir, fp32_runner, stsb_test_sentences):
    int8 = OnnxEmbedder(onnx_dir, variant="int8").encode(stsb_test_sentences)
    fp32 = fp32_runner.encode(stsb_test_sentences)
    cosine = (int8 * fp32).sum(axis=1)
    assert cosine.min() > 0.98
    assert np.abs(int8 - fp32).max() > 1e-4  # really quantised, not a copy of the fp32 graph
    fp32_size = (onnx_dir / ONNX_DIR / "model.onnx").stat().st_size
    assert (onnx_dir / ONNX_DIR / INT8_FILE).stat().st_size < 0.7 * fp32_size


@USES_EXPORT
@pytest.mark.parametrize("batch", [1, 7])
def test_batch_and_sequence_axes_are_dynamic(onnx_dir, prompted_minilm, stsb_test_sentences, batch):
    session = ort.InferenceSession(str(onnx_dir / ONNX_DIR / "model.onnx"))
    for texts in (stsb_test_sentences[:batch], stsb_test_sentences[-batch:]):
        enc = prompted_minilm.tokenize(texts)
        feed = {k: enc[k].numpy() for k in ("input_ids", "attention_mask")}
        hidden, pooled, unit = session.run(list(OUTPUTS), feed)
        seq_len = feed["input_ids"].shape[1]
        assert hidden.shape == (batch, seq_len, 384) and pooled.shape == unit.shape == (batch, 384)
        with torch.no_grad():
            states = prompted_minilm.backbone(**{k: enc[k] for k in feed}).last_hidden_state
            expected = prompted_minilm(**enc)
        assert np.abs(pooled - expected.numpy()).max() < 1e-4
        assert np.abs(hidden - states.numpy()).max() < 1e-4  # what sentence-transformers pools
        assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    lengths = {prompted_minilm.tokenize(t)["input_ids"].shape[1]
               for t in (stsb_test_sentences[:batch], stsb_test_sentences[-batch:])}
    assert len(lengths) == 2  # the two rounds really ran at different sequence lengths


@USES_EXPORT
def test_graph_declares_symbolic_batch_and_sequence_axes(onnx_dir):
    graph = onnx.load(str(onnx_dir / ONNX_DIR / "model.onnx"), load_external_data=False).graph
    for tensor in graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, True], tensor.name


@USES_EXPORT
def test_folder_layout_and_metadata(onnx_dir):
    meta = read_onnx_meta(onnx_dir)
    assert meta["files"] == {"fp32": "model.onnx", "int8": INT8_FILE}
    assert meta["pooling"] == "mean" and meta["embedding_dim"] == 384 and meta["max_length"] == 128
    assert meta["prompts"] == PROMPTS and meta["sentence_transformers_onnx_backend"] is True
    # sentence-transformers' ONNX backend reads onnx/model.onnx next to modules.json + tokenizer
    for name in ("modules.json", "config.json", "tokenizer.json", "1_Pooling/config.json"):
        assert (onnx_dir / name).is_file(), name


@USES_EXPORT
def test_runner_applies_saved_prompts(fp32_runner, stsb_test_sentences):
    texts = stsb_test_sentences[:3]
    np.testing.assert_allclose(fp32_runner.encode(texts, prompt_name="query"),
                               fp32_runner.encode([f"query: {t}" for t in texts]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown prompt_name 'doc'; this model's prompts: query"):
        fp32_runner.encode(texts, prompt_name="doc")


def test_folder_without_onnx_files_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not an ONNX export"):
        OnnxEmbedder(tmp_path)


@USES_EXPORT
def test_sentence_transformers_onnx_backend_loads_the_folder(onnx_dir, stsb_test_sentences):
    # needs optimum's onnxruntime models, which pin transformers < 4.58: not installable beside
    # this project's transformers 5; checked by hand in a side environment (see onnx_export.py)
    pytest.importorskip("optimum.onnxruntime")
    from sentence_transformers import SentenceTransformer

    texts = stsb_test_sentences[:8]
    via_onnx = SentenceTransformer(str(onnx_dir), backend="onnx", device="cpu").encode(texts)
    via_torch = SentenceTransformer(str(onnx_dir), device="cpu").encode(texts)
    assert np.abs(via_onnx - via_torch).max() < 1e-4


@pytest.mark.slow
def test_causal_lm_with_left_padding_and_last_token_pooling_exports(tiny_llm_dir, tmp_path):
    model = build_model(ModelConfig(name_or_path=tiny_llm_dir, is_llm=True, pooling="last"))
    folder = export_onnx(model, tmp_path / "llm-onnx", quantize_int8=False)
    texts = ["a b c", "a much longer sentence with many more words in it", "x", "two words"]
    expected = encode(model, texts, show_progress=False)
    runner = OnnxEmbedder(folder)
    for batch_size in (1, 4):
        assert np.abs(runner.encode(texts, batch_size=batch_size, normalize=False) - expected).max() < 1e-4


@USES_EXPORT
def test_model_card_of_an_onnx_folder_has_a_runnable_onnxruntime_snippet(onnx_dir, fp32_runner):
    import contextlib
    import io
    import re

    card = write_model_card(onnx_dir, base_model="all-MiniLM-L6-v2", data=[], loss={}, train={},
                            eval_table={}, pooling="mean", prompts=PROMPTS, chosen_checkpoint=None)
    text = card.read_text()
    block = re.search(r"```python\n(from angle_ray.models.onnx_export.*?)```", text, flags=re.DOTALL)
    assert block and 'variant="int8"' in block.group(1) and 'prompt_name="query"' in block.group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), "<model card>", "exec"), {})  # noqa: S102 - the card's snippet
    assert out.getvalue().startswith("(3, 384)\n")
