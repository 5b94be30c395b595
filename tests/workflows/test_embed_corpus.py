"""`angle-ray embed`: row checks, deterministic shards, the manifest guard (fast), and end to end
on Ray Data with MiniLM (slow): embeddings equal in-process `encode`, ids kept, a deleted shard
is the only one redone, a FAISS index finds each row, BEIR corpora get title + text."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from angle_ray.config import PoolConfig
from angle_ray.data.errors import DataError
from angle_ray.errors import UserError
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from angle_ray.workflows.embed_corpus import (
    INDEX_FILE,
    INDEX_IDS,
    EmbedSpec,
    Fields,
    embed_corpus,
    input_files,
    plan_shards,
    read_pending,
)

POOL = PoolConfig(min_actors=1, max_actors=1, cpus_per_actor=1, batch_size=8)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def scifact_docs(data_dir: Path, n: int) -> list[dict]:
    with gzip.open(data_dir / "scifact" / "corpus.jsonl.gz", "rt") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


@pytest.mark.parametrize("row, field, words", [
    ({"id": "a"}, "body", "missing"),
    ({"id": "a", "body": "   "}, "body", "empty text"),
    ({"id": "a", "body": 5}, "body", "expected a string, got int"),
    ({"body": "fine"}, "id", "missing or invalid id None"),
])
def test_a_bad_row_names_file_line_and_field(tmp_path, row, field, words):
    file = write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "body": "ok"}, row])
    with pytest.raises(DataError) as info:
        plan_shards([file], Fields(text="body", id="id"), shard_rows=10)
    err = info.value
    assert (err.file, err.row, err.field) == (file, 2, field)
    assert words in str(err) and f"{file} line 2, field '{field}'" in str(err)


def test_parquet_rows_are_named_by_index(tmp_path):
    file = str(tmp_path / "c.parquet")
    pq.write_table(pa.table({"text": ["a", "", "c"]}), file)
    with pytest.raises(DataError, match=r"row 1 \(0-based\), field 'text': empty text"):
        plan_shards([file], Fields(), shard_rows=10)


def test_shards_are_row_ranges_per_file_and_reads_return_only_pending_rows(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"t": f"a{i}"} for i in range(25)])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"t": f"b{i}"}) for i in range(7)) + "\n\n")
    shards = plan_shards([a, str(tmp_path / "b.jsonl")], Fields(text="t"), shard_rows=10)
    assert [(Path(s.file).name, s.start, s.stop, s.first_row) for s in shards] == [
        ("a.jsonl", 0, 10, 0), ("a.jsonl", 10, 20, 10), ("a.jsonl", 20, 25, 20), ("b.jsonl", 0, 7, 25)]
    rows = pa.concat_tables(read_pending(a, [shards[2], shards[0]], Fields(text="t"))).to_pylist()
    assert [r["row"] for r in rows] == [*range(10), *range(20, 25)]
    assert [r["text"] for r in rows] == [f"a{i}" for i in [*range(10), *range(20, 25)]]
    assert [r["shard"] for r in rows] == [0] * 10 + [2] * 5
    assert [r["id"] for r in rows] == [str(r["row"]) for r in rows]  # no id field: the row number


def test_beir_folder_reads_its_corpus_with_title_and_id(data_dir):
    files, fields = input_files(str(data_dir / "scifact"))
    # resolved on both sides: ../shared may be a symlink, which the reader resolves
    assert [Path(f).resolve() for f in files] == [(data_dir / "scifact" / "corpus.jsonl.gz").resolve()]
    assert fields == Fields(text="text", id="id", title="title")


def test_an_output_folder_of_another_run_is_refused(tmp_path, data_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": "two"}])
    out = tmp_path / "out"
    out.mkdir()
    plan = {"model": "other-model", "max_length": None, "prompt": None, "fields": {}, "shard_rows": 1,
            "inputs": []}
    (out / "_embed.json").write_text(json.dumps({"plan": plan, "shards": []}))
    with pytest.raises(UserError, match="other settings or inputs .differs in: model, fields, shard_rows"):
        embed_corpus(EmbedSpec(model="all-MiniLM-L6-v2", input=corpus, output=str(out), pool=POOL))


def test_missing_model_or_input_is_a_user_error(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}])
    with pytest.raises(UserError, match="no such model folder"):
        embed_corpus(EmbedSpec(model="/no/such/model", input=corpus, output=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--input /no/such.jsonl: no such file"):
        embed_corpus(EmbedSpec(model="all-MiniLM-L6-v2", input="/no/such.jsonl", output=str(tmp_path / "o")))


@pytest.mark.slow
def test_embed_matches_encode_keeps_ids_resumes_and_indexes(ray_local, tmp_path, data_dir):
    docs = scifact_docs(data_dir, 45)
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"doc": d["id"], "body": d["text"][:300]} for d in docs])
    out = tmp_path / "emb.parquet"
    spec = EmbedSpec(model="all-MiniLM-L6-v2", input=corpus, output=str(out), text_field="body",
                     id_field="doc", shard_rows=20, index="flat", pool=POOL)
    first = embed_corpus(spec)
    assert (first.rows, first.shards, first.encoded_rows, first.skipped_shards) == (45, 3, 45, 0)
    table = pd.read_parquet(out)  # the folder reads as one dataset (_ files ignored)
    assert list(table["id"]) == [d["id"] for d in docs] and list(table["row"]) == list(range(45))
    expected = encode(load_model("all-MiniLM-L6-v2"), [d["text"][:300] for d in docs], normalize=True,
                      show_progress=False)
    np.testing.assert_allclose(np.stack(table["embedding"]), expected, atol=1e-5)
    index = faiss.read_index(str(out / INDEX_FILE))
    assert index.ntotal == 45 and (index.search(expected, 1)[1][:, 0] == np.arange(45)).all()
    assert pd.read_parquet(out / INDEX_IDS)["id"].tolist() == [d["id"] for d in docs]

    kept = {p: os.stat(out / p).st_mtime_ns for p in ("part-00000.parquet", "part-00002.parquet")}
    (out / "part-00001.parquet").unlink()  # a run stopped before writing shard 1
    (out / ".part-00001.parquet.tmp-1").write_bytes(b"half a file")  # and its temporary leftover
    again = embed_corpus(spec)
    assert (again.encoded_rows, again.skipped_shards) == (20, 2)
    assert {p: os.stat(out / p).st_mtime_ns for p in kept} == kept
    np.testing.assert_allclose(np.stack(pd.read_parquet(out)["embedding"]), expected, atol=1e-5)


@pytest.mark.slow
def test_beir_corpus_embeds_title_and_text_with_a_prompt(ray_local, tmp_path, data_dir):
    docs = scifact_docs(data_dir, 12)
    folder = tmp_path / "beir"
    folder.mkdir()
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"][:200]}) + "\n"
                     for d in docs)
    # two 1-CPU actors fill the session's 2 CPUs: the read task must still run (it reserves none)
    two = PoolConfig(min_actors=2, max_actors=2, cpus_per_actor=1, batch_size=4)
    spec = EmbedSpec(model="all-MiniLM-L6-v2", input=str(folder), output=str(tmp_path / "out"),
                     prompt="passage: {text}", shard_rows=5, pool=two)
    assert embed_corpus(spec).encoded_rows == 12
    table = pd.read_parquet(tmp_path / "out")
    texts = [f"{d['title']} {d['text'][:200]}" for d in docs]
    expected = encode(load_model("all-MiniLM-L6-v2"), texts, prompt="passage: {text}", normalize=True,
                      show_progress=False)
    assert table["id"].tolist() == [d["id"] for d in docs]
    np.testing.assert_allclose(np.stack(table["embedding"]), expected, atol=1e-5)


@pytest.mark.slow
def test_a_model_the_actors_cannot_use_is_a_user_error(ray_local, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": "two"}])
    spec = EmbedSpec(model="all-MiniLM-L6-v2", input=corpus, output=str(tmp_path / "o"),
                     prompt_name="query", pool=POOL)  # MiniLM has no saved prompts
    with pytest.raises(UserError, match=r"prompt name 'query': the model has prompts \[\]"):
        embed_corpus(spec)
    assert not list((tmp_path / "o").glob("part-*.parquet"))
