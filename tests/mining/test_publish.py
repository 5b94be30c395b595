"""Versioned negatives folders: atomic publish, listing, pruning, crash leftovers."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from angle_ray.mining.publish import (
    clean_partial,
    latest_version,
    list_versions,
    prune_versions,
    publish_version,
    read_version,
)

ROWS = [
    {"query_id": "1", "query": "q one", "positive_id": "d1", "positive": "p one",
     "negative": ["n1", "n2"], "negative_ids": ["d7", "d8"]},
    {"query_id": "2", "query": "q two — ünïcode", "positive_id": "d2", "positive": "p two",
     "negative": ["n3", "n4"], "negative_ids": ["d9", "d10"]},
]


def leftovers(neg_dir) -> list[str]:
    return sorted(p.name for p in neg_dir.iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip(tmp_path, fmt):
    folder = publish_version(tmp_path, 40, ROWS, {"source": "bm25", "k": 2}, fmt=fmt)
    assert folder == tmp_path / "v40"
    rows, manifest = read_version(folder)
    assert rows == ROWS
    assert manifest["step"] == 40 and manifest["rows"] == 2 and manifest["format"] == fmt
    assert manifest["source"] == "bm25" and manifest["k"] == 2 and "created" in manifest
    assert leftovers(tmp_path) == []


def test_jsonl_is_one_json_per_line(tmp_path):
    folder = publish_version(tmp_path, 1, ROWS, {})
    lines = (folder / "negatives.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == ROWS


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_unserialisable_row_leaves_previous_version_and_no_partial(tmp_path, fmt):
    publish_version(tmp_path, 10, ROWS, {"source": "bm25"}, fmt=fmt)
    before = (tmp_path / "v10").stat().st_mtime_ns, read_version(tmp_path / "v10")
    bad = [*ROWS, {**ROWS[0], "negative": [object()]}]
    with pytest.raises((TypeError, pa.ArrowException)):  # json / pyarrow
        publish_version(tmp_path, 20, bad, {"source": "model"}, fmt=fmt)
    assert not (tmp_path / "v20").exists()
    assert leftovers(tmp_path) == []
    assert ((tmp_path / "v10").stat().st_mtime_ns, read_version(tmp_path / "v10")) == before
    assert latest_version(tmp_path) == (10, tmp_path / "v10")


def test_unserialisable_manifest_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        publish_version(tmp_path, 5, ROWS, {"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_same_step_twice_keeps_the_first_complete_version(tmp_path):
    first = publish_version(tmp_path, 30, ROWS[:1], {"run": "first"})
    again = publish_version(tmp_path, 30, ROWS, {"run": "restarted"})
    assert again == first
    rows, manifest = read_version(first)
    assert rows == ROWS[:1] and manifest["run"] == "first"
    assert leftovers(tmp_path) == []


def test_a_manifest_less_folder_under_the_version_name_is_replaced(tmp_path):
    (tmp_path / "v30").mkdir()
    (tmp_path / "v30" / "junk.txt").write_text("not a version")
    folder = publish_version(tmp_path, 30, ROWS, {})
    assert read_version(folder)[0] == ROWS
    assert not (folder / "junk.txt").exists()
    assert leftovers(tmp_path) == []


def test_list_and_latest_see_complete_versions_only(tmp_path):
    assert list_versions(tmp_path / "missing") == [] and latest_version(tmp_path) is None
    for step in (100, 20, 3):
        publish_version(tmp_path, step, ROWS, {})
    (tmp_path / ".tmp-v500-abc").mkdir()  # a publisher still writing (or crashed)
    (tmp_path / ".tmp-v500-abc" / "manifest.json").write_text("{}")
    (tmp_path / "v400").mkdir()  # no manifest
    (tmp_path / "vlatest").mkdir()
    (tmp_path / "vlatest" / "manifest.json").write_text("{}")
    (tmp_path / "v900").write_text("a file, not a folder")
    assert [s for s, _ in list_versions(tmp_path)] == [3, 20, 100]  # numeric, not string, order
    assert latest_version(tmp_path) == (100, tmp_path / "v100")


def test_prune_keeps_the_newest(tmp_path):
    for step in (0, 40, 80, 120):
        publish_version(tmp_path, step, ROWS, {})
    removed = prune_versions(tmp_path, keep=2)
    assert removed == [tmp_path / "v0", tmp_path / "v40"]
    assert [s for s, _ in list_versions(tmp_path)] == [80, 120]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v120", "v80"]
    assert prune_versions(tmp_path, keep=5) == []
    with pytest.raises(ValueError):
        prune_versions(tmp_path, keep=0)


def test_clean_partial_removes_crash_leftovers_only(tmp_path):
    publish_version(tmp_path, 7, ROWS, {})
    for name in (".tmp-v8-aaa", ".tmp-v9-bbb"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "negatives.jsonl").write_text("{\"half\": ")
    assert clean_partial(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v7"]
    assert clean_partial(tmp_path) == 0
    assert clean_partial(tmp_path / "missing") == 0


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="format"):
        publish_version(tmp_path, 1, ROWS, {}, fmt="csv")
    with pytest.raises(ValueError, match="step"):
        publish_version(tmp_path, -1, ROWS, {})
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_version(tmp_path)
