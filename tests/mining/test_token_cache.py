"""The refresher's token cache on a real SciFact slice with the real MiniLM tokenizer."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from angle_ray.config import config_from_dict
from angle_ray.mining import token_cache
from angle_ray.mining.refresher import Refresher
from angle_ray.mining.task import load_mining_task
from angle_ray.mining.token_cache import CACHE_DIR, mining_tokens
from angle_ray.models.backbone import load_tokenizer


def _job(beir, max_length: int = 64, doc_prompt: str | None = "passage: {text}"):
    return config_from_dict({"mining": {"beir": str(beir), "max_length": max_length,
                                        "doc_prompt": doc_prompt, "query_prompt": "query: {text}"}})


@pytest.fixture
def counted_tokenize(monkeypatch):
    """Counts the calls that really tokenise (the real function still runs)."""
    calls = []
    real = token_cache.tokenize_texts

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(token_cache, "tokenize_texts", counting)
    return calls


def test_ids_are_the_tokenizers_own_with_the_prompts_truncated_and_unpadded(mini_scifact, tmp_path):
    job = _job(mini_scifact, max_length=64)
    task = load_mining_task(job.mining)
    cache = mining_tokens(job, task, tmp_path)
    texts = ([f"passage: {t}" for t in task.doc_texts] + [f"query: {t}" for t in task.query_texts])
    tokenizer = load_tokenizer(job.model)
    want = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    assert cache.table.column("input_ids").to_pylist() == want
    assert cache.table.column("i").to_pylist() == list(range(len(texts)))
    lengths = cache.lengths()
    assert lengths.max() == 64 and lengths.min() < 64  # truncated, and no padding
    # [CLS] passage : ...: the prompt's tokens lead every document row
    assert all(row[1:3] == tokenizer("passage: x")["input_ids"][1:3] for row in want[: len(task.doc_texts)])
    assert str(cache.path.parent) == str(tmp_path / CACHE_DIR)


def test_built_once_then_reused_by_a_restarted_refresher(mini_scifact, tmp_path, counted_tokenize, capsys):
    job = _job(mini_scifact)
    neg_dir = tmp_path / "negatives"
    first = Refresher(job.model_dump_json(), str(tmp_path), str(neg_dir)).token_cache()
    assert first.built and len(counted_tokenize) == 1
    stat = first.path.stat()
    again = Refresher(job.model_dump_json(), str(tmp_path), str(neg_dir))  # e.g. after a restart
    second = again.token_cache()
    assert not second.built and len(counted_tokenize) == 1  # read back, not tokenised
    assert again.token_cache() is second  # one refresher keeps it for every refresh
    assert second.path == first.path
    assert (second.path.stat().st_ino, second.path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert second.table.equals(first.table)
    assert "token cache reused" in capsys.readouterr().out


def test_a_changed_key_rebuilds_and_removes_the_old_file(mini_scifact, tmp_path, counted_tokenize):
    task = load_mining_task(_job(mini_scifact).mining)
    at64 = mining_tokens(_job(mini_scifact, max_length=64), task, tmp_path)
    at32 = mining_tokens(_job(mini_scifact, max_length=32), task, tmp_path)
    assert at32.built and at32.path != at64.path and not at64.path.exists()
    assert at32.lengths().max() == 32
    no_prompt = mining_tokens(_job(mini_scifact, max_length=32, doc_prompt=None), task, tmp_path)
    assert no_prompt.built and no_prompt.path != at32.path
    fewer = dataclasses.replace(task, doc_texts=task.doc_texts[:-1], doc_ids=task.doc_ids[:-1])
    assert mining_tokens(_job(mini_scifact, max_length=32, doc_prompt=None), fewer, tmp_path).built
    assert len(counted_tokenize) == 4
    assert len(list((tmp_path / CACHE_DIR).glob("tokens-*.parquet"))) == 1  # only the live key


def test_a_torn_or_wrong_file_under_the_key_is_rebuilt(mini_scifact, tmp_path, counted_tokenize):
    job = _job(mini_scifact)
    task = load_mining_task(job.mining)
    good = mining_tokens(job, task, tmp_path)
    good.path.write_bytes(good.path.read_bytes()[:200])  # torn
    rebuilt = mining_tokens(job, task, tmp_path)
    assert rebuilt.built and rebuilt.table.equals(good.table)
    pq.write_table(good.table.slice(0, 10), good.path)  # a readable file with the wrong rows
    assert mining_tokens(job, task, tmp_path).built
    assert len(counted_tokenize) == 3
    assert not mining_tokens(job, task, tmp_path).built
