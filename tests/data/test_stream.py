"""The Ray Data stream: validation pass on the driver, skip reports, per-epoch sampling, and
the tokenising step (one token-id and hash column per role)."""

import json
from collections import Counter

import numpy as np
import pytest

from angle_ray.config import DatasetConfig, ModelConfig
from angle_ray.data.errors import DataError
from angle_ray.data.stream import (
    normalised_corpus,
    text_hash,
    tokenize_batch,
    tokenized_epochs,
    validate_corpus,
)
from angle_ray.models.backbone import load_tokenizer


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def stsb_rows(data_dir):
    return [json.loads(x) for x in (data_dir / "stsb" / "train.jsonl").open().readlines()[:50]]


# each check both ways: in the driver process (a small local corpus) and as a Ray Data pass
BOTH_WAYS = pytest.mark.parametrize("in_process", [True, pytest.param(False, marks=pytest.mark.slow)],
                                    ids=["in-process", "ray-data"])


def _validate(request, cfg, fmt, in_process):
    if in_process:  # no Ray Dataset (making one would start Ray)
        return validate_corpus(cfg, fmt, None, in_process=True)
    request.getfixturevalue("ray_local")
    return validate_corpus(cfg, fmt, normalised_corpus(cfg, fmt), in_process=False)


@BOTH_WAYS
def test_skip_policy_counts_and_locates_every_bad_row(request, in_process, tmp_path, stsb_rows):
    rows = list(stsb_rows)
    rows[4] = "{not json"
    rows[9] = {**stsb_rows[9], "label": 7.5}
    rows[19] = {**stsb_rows[19], "text1": ""}
    path = _write(tmp_path / "mixed.jsonl", rows)
    cfg = DatasetConfig(path=path, format="A", label_range=(0, 5), on_bad_rows="skip")
    check = _validate(request, cfg, "A", in_process)
    assert check.rows == 47 and check.skipped.count == 3
    assert [(row, file.endswith("mixed.jsonl")) for file, row, _ in check.skipped.first] == [
        (5, True), (10, True), (20, True)]
    assert "line 10" in check.summary() and "outside" in check.summary()


@BOTH_WAYS
def test_error_policy_raises_the_first_bad_row_on_the_driver(request, in_process, tmp_path,
                                                            stsb_rows):
    rows = list(stsb_rows)
    rows[30] = {"text1": "a", "text2": "b"}
    path = _write(tmp_path / "missing.jsonl", rows)
    cfg = DatasetConfig(path=path, format="A", label_range=(0, 5))
    with pytest.raises(DataError, match=r"missing\.jsonl line 31, field 'label'"):
        _validate(request, cfg, "A", in_process)


@pytest.mark.slow
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


def _normalised_batch(records: list[dict]) -> dict:
    """What `normalise_batch` hands the tokeniser: sources, record JSON, bad-row marks."""
    return {"_source": np.array([f"f.jsonl:{i + 1}" for i in range(len(records))], dtype=object),
            "_record": np.array([json.dumps(r) for r in records], dtype=object),
            "_bad": np.array([""] * len(records), dtype=object)}


def test_tokenize_batch_writes_one_ids_and_hash_column_per_role():
    records = [{"query": "q one", "positive": "p one", "negative": ["n a", "n b"]},
               {"query": "q two", "positive": "p two", "negative": ["n c"]}]
    model_cfg = ModelConfig(max_length=16)
    out = tokenize_batch(_normalised_batch(records), model_cfg.model_dump_json(), "C", 2, 7, 0, 16)
    assert set(out) == {f"{r}_{c}" for r in ("query", "positive", "negative_0", "negative_1")
                        for c in ("ids", "hash")}
    # row 1 has one negative: both negative roles reuse it
    assert out["negative_0_hash"][1] == out["negative_1_hash"][1] == text_hash("n c")
    assert out["query_hash"].tolist() == [text_hash("q one"), text_hash("q two")]
    assert out["positive_ids"][0].tolist() == load_tokenizer(model_cfg)("p one")["input_ids"]
    assert out["query_ids"][0].dtype == np.int32


def test_tokenize_batch_keeps_format_a_labels():
    records = [{"text1": "a", "text2": "b", "label": 0.25}, {"text1": "c", "text2": "d", "label": 1.0}]
    out = tokenize_batch(_normalised_batch(records), ModelConfig().model_dump_json(), "A", 1, 7, 0, 16)
    assert out["label"].tolist() == [0.25, 1.0] and out["label"].dtype == np.float32
    assert out["text2_hash"].tolist() == [text_hash("b"), text_hash("d")]
