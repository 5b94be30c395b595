"""ANCE in one Ray job: training consumes negatives that the refresher re-mines from its own
checkpoints (real MiniLM, real SciFact slice, real FAISS, real encoder actor pool)."""

import json
import math
from pathlib import Path

import pytest

from angle_ray.config import config_from_dict
from angle_ray.mining.publish import list_versions, read_version
from angle_ray.train.driver import run_training
from angle_ray.train.progress import read_metrics

pytestmark = pytest.mark.slow  # Ray Train + an encoder actor pool


def ance_job(tmp_path, beir: Path, **mining):
    return config_from_dict({
        "model": {"max_length": 48},
        "loss": {"ibn_w": 1.0, "cln_w": 1.0, "angle_w": 0.02},
        "mining": {"beir": str(beir), "holdout_fraction": 0.2, "k": 2, "window": [2, 20],
                   "max_length": 48, "warm_start": "bm25", "refresh_every": 4, "poll_every": 1,
                   "pool": {"min_actors": 1, "max_actors": 1, "cpus_per_actor": 0.25,
                            "batch_size": 32}, **mining},
        "train": {"name": "ance", "storage_path": str(tmp_path / "runs"), "batch_size": 4,
                  "max_steps": 14, "lr": 2e-5, "log_every": 1, "num_workers": 1,
                  "cpus_per_worker": 0.5, "shuffle_buffer": 0, "keep_checkpoints": 2,
                  "eval_every": 7, "eval_on_checkpoint": False},
        # the held-out queries, evaluated at steps 7 and 14 only: not at the checkpoints the
        # refresh cadence makes (4, 8, 12)
        "eval": {"retrieval_dev": {"path": str(beir), "dev_fraction": 0.2, "seed": 0}},
        "export": {"sentence_transformers": False},
    })


def test_refresh_every_n_steps_trains_on_several_versions_within_the_staleness_bound(
        ray_local, tmp_path, judged_scifact):
    # refresh every 4 steps; training may run at most 6 steps past its negatives' checkpoint,
    # so it must pick up refreshed versions (and wait for them if they are late)
    run = run_training(ance_job(tmp_path, judged_scifact, max_staleness=6))
    rows = read_metrics(run.run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, 15))
    versions = [int(float(r["neg/version"])) for r in rows]
    assert versions[0] == 0  # the BM25 warm start from step 1
    assert len(set(versions)) >= 3, versions  # v0 and at least two refreshed versions
    assert versions == sorted(versions)  # never goes back to an older version
    evaluated = {int(r["step"]): r for r in rows if not math.isnan(r.get("dev_metric", math.nan))}
    assert sorted(evaluated) == [7, 14]  # eval_every and the last step, no other checkpoint
    assert all(math.isnan(rows[step - 1]["dev_metric"]) for step in (4, 8, 12))  # checkpoints
    last = evaluated[14]
    assert 0 <= last["dev/mrr@10"] <= 100 and 0 < last["dev_metric"] <= 100
    assert last["dev/recall@100"] == pytest.approx(100.0)  # 80 documents: all are in the top 100
    for r in rows:  # the bound held at every step
        assert int(r["step"]) - int(float(r["neg/version"])) <= 6 + 1
    status = json.loads((run.run_dir / "negatives" / "refresher.json").read_text())
    assert status["failures"] == []
    published = [step for step, _ in list_versions(run.run_dir / "negatives")]
    assert set(versions) - {0} <= set(status["published"])
    assert published == sorted(published)[-3:]  # keep_versions=3 prunes older ones
    # a refreshed version: mined from a checkpoint, k negatives per row, never a known positive
    rows_v, manifest = read_version(list_versions(run.run_dir / "negatives")[-1][1])
    assert manifest["kind"] == "refresh" and manifest["step"] > 0
    qrels = {}
    for line in (judged_scifact / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        qrels.setdefault(q, set()).add(d)
    for row in rows_v:
        assert len(row["negative_ids"]) == 2
        assert not set(row["negative_ids"]) & qrels[row["query_id"]]
