"""The Ray Data stream: validation pass on the driver, skip reports, per-epoch sampling."""

import json
from collections import Counter

import pytest

from angle_ray.config import DatasetConfig, ModelConfig
from angle_ray.data.errors import DataError
from angle_ray.data.stream import (
    normalised_corpus,
    roles,
    text_hash,
    tokenize_batch,
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
    batch = next(iter(normalised.iter_batches(batch_format="numpy", batch_size=100)))
    model_json = ModelConfig().model_dump_json()

    def epoch_pairs(epoch):
        out = tokenize_batch(batch, model_json, "B", 1, 7, epoch, 128)
        return list(zip(out["query_hash"].tolist(), out["positive_hash"].tolist()))

    assert epoch_pairs(0) == epoch_pairs(0)  # same seed and epoch, same picks
    assert epoch_pairs(0) != epoch_pairs(1)  # another epoch draws other items
    assert {p for _, p in epoch_pairs(0) + epoch_pairs(1)} <= {text_hash(c) for c in choices}
    # the 3-epoch stream carries exactly those per-epoch picks (in whatever order it runs)
    stream = tokenized_epochs(normalised, cfg, ModelConfig(), "B", epochs=3, seed=7)
    seen = Counter(pair for b in stream.iter_batches(batch_format="numpy")
                   for pair in zip(b["query_hash"].tolist(), b["positive_hash"].tolist()))
    assert seen == Counter(epoch_pairs(0) + epoch_pairs(1) + epoch_pairs(2))


def test_roles_name_every_text_the_model_encodes():
    assert roles("A") == ["text1", "text2"]
    assert roles("C", 2) == ["query", "positive", "negative_0", "negative_1"]
    with pytest.raises(ValueError, match="unknown data format"):
        roles("D")
