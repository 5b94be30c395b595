"""The Ray Data stream: validation pass on the driver, skip reports, per-epoch sampling."""

import json

import numpy as np
import pytest

from angle_ray.config import DatasetConfig, ModelConfig
from angle_ray.data.errors import DataError
from angle_ray.data.stream import (
    normalised_corpus,
    roles,
    text_hash,
    tokenized_epochs,
    validate_corpus,
)

pytestmark = pytest.mark.slow


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def stsb_rows(data_dir):
    return [json.loads(x) for x in (data_dir / "stsb" / "train.jsonl").open().readlines()[:50]]


def test_skip_policy_counts_and_locates_every_bad_row(ray_local, tmp_path, stsb_rows):
    rows = list(stsb_rows)
    rows[4] = "{not json"
    rows[9] = {**stsb_rows[9], "label": 7.5}
    rows[19] = {**stsb_rows[19], "text1": ""}
    path = _write(tmp_path / "mixed.jsonl", rows)
    cfg = DatasetConfig(path=path, format="A", label_range=(0, 5), on_bad_rows="skip")
    check = validate_corpus(cfg, normalised_corpus(cfg, "A"))
    assert check.rows == 47 and check.skipped.count == 3
    assert [(row, file.endswith("mixed.jsonl")) for file, row, _ in check.skipped.first] == [
        (5, True), (10, True), (20, True)]
    assert "line 10" in check.summary() and "outside" in check.summary()


def test_error_policy_raises_the_first_bad_row_on_the_driver(ray_local, tmp_path, stsb_rows):
    rows = list(stsb_rows)
    rows[30] = {"text1": "a", "text2": "b"}
    path = _write(tmp_path / "missing.jsonl", rows)
    cfg = DatasetConfig(path=path, format="A", label_range=(0, 5))
    with pytest.raises(DataError, match=r"missing\.jsonl line 31, field 'label'"):
        validate_corpus(cfg, normalised_corpus(cfg, "A"))


def test_each_epoch_samples_list_fields_reproducibly(ray_local, tmp_path, stsb_rows):
    choices = [r["text2"] for r in stsb_rows[:6]]
    rows = [{"query": r["text1"], "positive": choices} for r in stsb_rows[:20]]
    path = _write(tmp_path / "lists.jsonl", rows)
    cfg = DatasetConfig(path=path, format="B")
    normalised = normalised_corpus(cfg, "B")
    ray_local.data.DataContext.get_current().execution_options.preserve_order = True  # as the driver

    def picks(seed):
        ds = tokenized_epochs(normalised, cfg, ModelConfig(), "B", epochs=3, seed=seed)
        out = [int(h) for b in ds.iter_batches(batch_format="numpy") for h in b["positive_hash"]]
        return np.array(out).reshape(3, 20)

    first, again = picks(7), picks(7)
    assert (first == again).all()
    assert not (first[0] == first[1]).all()  # epochs draw different items
    assert set(first.ravel()) <= {text_hash(c) for c in choices}
    assert len(set(first.ravel())) > 1


def test_roles_name_every_text_the_model_encodes():
    assert roles("A") == ["text1", "text2"]
    assert roles("C", 2) == ["query", "positive", "negative_0", "negative_1"]
    with pytest.raises(ValueError, match="unknown data format"):
        roles("D")
