"""The refresher's fault tolerance, with real Ray Data actor pools, real MiniLM and SciFact."""

import gzip
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from angle_ray.config import MiningConfig, ModelConfig, PoolConfig, config_from_dict
from angle_ray.mining.encoder_pool import encode_with_pool
from angle_ray.mining.publish import list_versions, publish_version, read_version
from angle_ray.mining.refresher import (
    SNAPSHOT_FILE,
    Refresher,
    due,
    refresh_doc_subset,
    refresher_options,
    weights_hash,
)
from angle_ray.mining.task import load_mining_task
from angle_ray.mining.token_cache import CACHE_DIR
from angle_ray.mining.training_setup import warm_start
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model


def _alive_encoders():
    import ray
    from ray.util.state import list_actors

    # this session's cluster (other local Ray instances may exist on the machine)
    address = ray.get_runtime_context().gcs_address
    return [a for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
            if "TextEncoder" in a.class_name]


def test_refresher_reserves_mining_refresher_gpus():
    """No GPU by default (a CPU FAISS index); the configured ones otherwise."""
    assert MiningConfig(beir="unused").refresher_gpus == 0
    assert refresher_options(MiningConfig(beir="unused"))["num_gpus"] == 0
    assert refresher_options(MiningConfig(beir="unused", refresher_gpus=1))["num_gpus"] == 1
    with pytest.raises(ValidationError, match="refresher_gpus"):
        MiningConfig(beir="unused", refresher_gpus=-1)
    with pytest.raises(ValidationError, match="faiss_gpu is false"):
        MiningConfig(beir="unused", refresher_gpus=1, faiss_gpu=False)  # a GPU for nothing


@pytest.mark.slow  # a Ray Data encoder actor pool
def test_a_killed_encoder_actor_is_replaced_and_the_refresh_completes(ray_local, data_dir):
    with gzip.open(data_dir / "scifact" / "corpus.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    texts = [f"{d['title']} {d['text']}" for d in docs[:800]]
    pool = PoolConfig(min_actors=1, max_actors=1, cpus_per_actor=0.5, batch_size=16)
    result, errors = {}, []

    def refresh():
        try:
            result["run"] = encode_with_pool("all-MiniLM-L6-v2", texts, ModelConfig(), pool,
                                             max_length=96)
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    worker = threading.Thread(target=refresh)
    worker.start()
    deadline = time.time() + 120
    while not _alive_encoders() and time.time() < deadline:
        time.sleep(0.5)
    victim = _alive_encoders()[0]
    time.sleep(6)  # model loaded, batches under way
    assert worker.is_alive(), "the encode finished before the fault could be injected"
    os.kill(victim.pid, signal.SIGKILL)
    worker.join(timeout=600)
    assert not errors, errors
    emb = result["run"].embeddings
    assert emb.shape == (800, 384)
    # every row came back once and right: the retried batches match an in-process encode
    model = load_model("all-MiniLM-L6-v2", max_length=96, base=ModelConfig())
    expected = encode(model, texts, normalize=True, show_progress=False)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    assert victim.actor_id not in {a.actor_id for a in _alive_encoders()}


def _refresher(tmp_path: Path, beir: Path, **mining) -> tuple[Refresher, Path]:
    job = config_from_dict({
        "model": {"max_length": 48},
        "mining": {"beir": str(beir), "k": 2, "window": [2, 20], "max_length": 48,
                   "refresh_every": 4, "pool": {"min_actors": 1, "max_actors": 1,
                                                "cpus_per_actor": 0.5, "batch_size": 64},
                   **mining},
    })
    neg_dir = tmp_path / "negatives"
    warm_start(job, load_mining_task(job.mining), neg_dir)  # v0 from BM25
    return Refresher(job.model_dump_json(), str(tmp_path), str(neg_dir)), neg_dir


def _torn_copy(src: Path, dst: Path) -> None:
    """A checkpoint folder like ``src`` whose weights file was cut short (a torn write)."""
    shutil.copytree(src, dst)
    weights = dst / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])


@pytest.fixture(scope="module")
def refresh_sequence(ray_local, tmp_path_factory, mini_scifact, minilm_small) -> dict:
    """One refresher (one pool run per refresh) through four checkpoints: step 4 publishes,
    step 8's weights are torn (the refresh fails), step 12 has new weights, step 16 the same
    bytes as step 12. What the folder and the refresher held after each step is kept."""
    tmp_path = tmp_path_factory.mktemp("refresh-sequence")
    refresher, neg_dir = _refresher(tmp_path, mini_scifact)
    seen = {"versions_before": [s for s, _ in list_versions(neg_dir)]}
    minilm_small.save(tmp_path / "checkpoint_4" / "model")
    refresher.refresh(4, tmp_path / "checkpoint_4")
    tokens = refresher.tokens
    seen.update(tokens=tokens, tokens_built=tokens is not None and tokens.built,
                tokens_stat=tokens.path.stat() if tokens is not None else None)

    _torn_copy(tmp_path / "checkpoint_4", tmp_path / "checkpoint_8")
    refresher.refresh(8, tmp_path / "checkpoint_8")
    seen.update(failed_at=[f["step"] for f in refresher.failures],
                versions_after_failure=[s for s, _ in list_versions(neg_dir)],
                leftovers=[p.name for p in neg_dir.iterdir()
                           if p.name not in ("v0", "v4", ".work", CACHE_DIR)],
                work_after_failure=list((neg_dir / ".work").iterdir()))

    _perturbed_copy(tmp_path / "checkpoint_4", tmp_path / "checkpoint_12")
    refresher.refresh(12, tmp_path / "checkpoint_12")  # new weights: a new version, same tokens
    shutil.copytree(tmp_path / "checkpoint_12", tmp_path / "checkpoint_16")
    refresher.refresh(16, tmp_path / "checkpoint_16")  # the same bytes at a later step
    # a restarted refresher carries on from what is on disk
    again = Refresher(refresher.job.model_dump_json(), str(tmp_path), str(neg_dir))
    return {**seen, "refresher": refresher, "neg_dir": neg_dir, "tmp_path": tmp_path,
            "restarted_last_step": again.last_step}


@pytest.mark.slow  # a Ray Data encoder actor pool
def test_a_failed_refresh_keeps_the_previous_version_and_publishes_nothing_partial(refresh_sequence):
    seen = refresh_sequence
    assert seen["versions_before"] == [0]
    assert seen["failed_at"] == [8]
    assert seen["versions_after_failure"] == [0, 4]  # the previous version stays in use
    assert seen["leftovers"] == []  # no v8, no .tmp-* folder
    assert seen["work_after_failure"] == []
    # the next checkpoint refreshes as usual
    assert [s for s, _ in list_versions(seen["neg_dir"])] == [0, 4, 12]
    assert seen["restarted_last_step"] == 12  # the latest version on disk (step 16 was skipped)


def test_refresh_cadence():
    job = config_from_dict({"mining": {"beir": "x", "refresh_every": 40}})
    assert not due(30, 0, job.mining) and due(40, 0, job.mining) and not due(40, 40, job.mining)
    assert due(40, -1, job.mining)  # no warm start: the first refresh after refresh_every steps
    every = config_from_dict({"mining": {"beir": "x", "refresh_on_checkpoint": True}})
    assert due(1, 0, every.mining) and not due(5, 5, every.mining)


@pytest.mark.slow  # a Ray Data encoder actor pool
def test_the_pool_runs_with_what_fits_below_its_maximum(ray_local, data_dir):
    # 2 CPUs in the test cluster: a second 1.5-CPU actor never fits, the refresh goes on with one
    texts = [t for t in load_mining_task(config_from_dict(
        {"mining": {"beir": str(data_dir / "scifact")}}).mining).query_texts[:200]]
    pool = PoolConfig(min_actors=1, max_actors=2, cpus_per_actor=1.5, batch_size=32)
    run = encode_with_pool("all-MiniLM-L6-v2", texts, ModelConfig(), pool, max_length=48)
    model = load_model("all-MiniLM-L6-v2", max_length=48, base=ModelConfig())
    expected = encode(model, texts, normalize=True, show_progress=False)
    np.testing.assert_allclose(run.embeddings, expected, atol=1e-5)


def _perturbed_copy(src: Path, dst: Path) -> None:
    """A checkpoint folder like ``src`` whose weights differ in one value."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model" / "model.safetensors")
    name = min(weights)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, dst / "model" / "model.safetensors")


def test_weights_hash_follows_the_weight_bytes_only(tmp_path, minilm_small):
    minilm_small.save(tmp_path / "a" / "model")
    _perturbed_copy(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    (tmp_path / "c" / "model" / "angle_ray.json").write_text("{}")  # not a weight file
    a, b, c = (weights_hash(tmp_path / x / "model") for x in "abc")
    assert a == c and a != b and len(a) == 64
    assert weights_hash(tmp_path) is not None and weights_hash(tmp_path / "a" / "model" / "1_Pooling") is None


def test_an_unchanged_model_is_skipped_without_encoding(tmp_path, mini_scifact, minilm_small):
    refresher, neg_dir = _refresher(tmp_path, mini_scifact)
    checkpoint = tmp_path / "checkpoint_8"
    minilm_small.save(checkpoint / "model")
    # v4 as a refresh from these very weights would have published it
    rows, manifest = read_version(neg_dir / "v0")
    publish_version(neg_dir, 4, rows, {**manifest, "model_sha256": weights_hash(checkpoint / "model")})
    refresher.refresh(8, checkpoint)
    assert [s for s, _ in list_versions(neg_dir)] == [0, 4]
    assert refresher.status() == {"published": [], "skipped": [8], "past_refresh_until": [],
                                  "failures": [], "last_step": 8}
    assert refresher.tokens is None  # nothing was tokenised or encoded
    assert not any((neg_dir / ".work").iterdir())


def test_a_partial_refresh_samples_reproducibly_and_keeps_what_matters():
    keep = {3, 997, 998}
    a = refresh_doc_subset(1000, 0.1, seed=7, keep=keep)
    assert np.array_equal(a, refresh_doc_subset(1000, 0.1, seed=7, keep=keep))
    assert not np.array_equal(a, refresh_doc_subset(1000, 0.1, seed=8, keep=keep))
    assert keep <= set(a.tolist()) and 100 <= len(a) <= 103 and np.all(np.diff(a) > 0)
    assert len(refresh_doc_subset(10, 1.0, seed=0, keep=())) == 10


@pytest.mark.slow  # a Ray Data encoder actor pool
def test_a_second_refresh_from_the_same_weights_publishes_nothing(refresh_sequence):
    seen, refresher = refresh_sequence, refresh_sequence["refresher"]
    tokens, stat, tmp_path = seen["tokens"], seen["tokens_stat"], seen["tmp_path"]
    assert seen["tokens_built"]
    assert refresher.status() == {"published": [4, 12], "skipped": [16], "past_refresh_until": [],
                                  "failures": refresher.failures, "last_step": 16}
    assert [f["step"] for f in refresher.failures] == [8]
    assert refresher.tokens is tokens  # tokenised once, at the first refresh
    assert (tokens.path.stat().st_ino, tokens.path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    manifest = read_version(seen["neg_dir"] / "v12")[1]
    assert manifest["model_sha256"] == weights_hash(tmp_path / "checkpoint_16" / "model")
    assert manifest["model_sha256"] != read_version(seen["neg_dir"] / "v4")[1]["model_sha256"]
    assert manifest["token_cache"] == tokens.path.name
    assert manifest["encoded_docs"] == len(refresher.task.doc_ids)


@pytest.mark.slow  # a Ray Data encoder actor pool
def test_a_partial_refresh_searches_only_the_reencoded_documents(ray_local, tmp_path, mini_scifact,
                                                                  minilm_small):
    refresher, neg_dir = _refresher(tmp_path, mini_scifact)
    refresher.job = refresher.job.model_copy(update={"mining": refresher.job.mining.model_copy(
        update={"refresh_sample": 0.2})})
    minilm_small.save(tmp_path / "checkpoint_4" / "model")
    current = refresher.current_candidates()  # v0's negatives (BM25)
    refresher.refresh(4, tmp_path / "checkpoint_4")
    assert refresher.status()["published"] == [4]
    task = refresher.task
    subset = set(refresh_doc_subset(len(task.doc_ids), 0.2, seed=4, keep=current | {
        d for p in task.positives for d in p}).tolist())
    rows, manifest = read_version(neg_dir / "v4")
    assert manifest["encoded_docs"] == len(subset) < len(task.doc_ids)
    index = {d: i for i, d in enumerate(task.doc_ids)}
    assert refresher.candidate_docs <= subset  # candidates come from the re-encoded documents
    assert refresher.candidate_docs
    picked = {r["query_id"]: {index[d] for d in r["negative_ids"]} for r in rows}
    outside = sum(len(negs - subset) for negs in picked.values())
    assert outside <= manifest["stats"]["filled_random"]  # only a random fill reaches outside


def test_refresh_until_stops_refreshing_in_the_last_part_of_the_run():
    job = config_from_dict({"mining": {"beir": "x", "refresh_every": 40, "refresh_until": 0.8}})
    # 240 steps: 160 is within 0.8 x 240 = 192, 200 is past it
    assert due(160, 120, job.mining, total_steps=240) and not due(200, 160, job.mining, total_steps=240)
    assert due(200, 160, job.mining)  # no total known (an old snapshot): the cadence alone
    full = config_from_dict({"mining": {"beir": "x", "refresh_every": 40}})
    assert due(200, 160, full.mining, total_steps=240)  # the default 1.0 refreshes up to the end
    with pytest.raises(ValueError, match="max_staleness"):
        config_from_dict({"mining": {"beir": "x", "refresh_every": 4, "refresh_until": 0.5,
                                     "max_staleness": 6}})


def _snapshot(run_dir: Path, step: int, total_steps: int) -> None:
    """A Ray Train checkpoint snapshot naming a step-`step` checkpoint of a `total_steps` run."""
    (run_dir / SNAPSHOT_FILE).write_text(json.dumps({"latest_checkpoint_result": {
        "checkpoint_dir_name": f"checkpoint_{step}",
        "metrics": {"step": step, "total_steps": total_steps}}}))


def test_the_refresher_loop_skips_checkpoints_past_refresh_until(tmp_path, mini_scifact):
    refresher, _ = _refresher(tmp_path, mini_scifact, refresh_until=0.7)
    refresher.poll_s = 0.05
    # step 12 of 14 is past 0.7 x 14: no refresh is tried (there is no checkpoint folder, so a
    # refresh would fail and be recorded), and the loop says so once
    _snapshot(tmp_path, 12, 14)
    loop = threading.Thread(target=refresher.run)
    loop.start()
    time.sleep(0.5)
    refresher.stop()
    loop.join(timeout=30)
    status = refresher.status()
    assert status["past_refresh_until"] == [12]
    assert status["published"] == [] and status["failures"] == []
    # step 8 is within the bound: the loop tries it (and records the failure: no folder)
    _snapshot(tmp_path, 8, 14)
    refresher.stopping.clear()
    loop = threading.Thread(target=refresher.run)
    loop.start()
    time.sleep(0.5)
    refresher.stop()
    loop.join(timeout=30)
    assert [f["step"] for f in refresher.failures] == [8]
