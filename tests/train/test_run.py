"""End-to-end training runs on the session's local Ray: real Ray Data, Ray Train, DeepSpeed."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from angle_ray.cli import find_user_error
from angle_ray.data.errors import DataError
from angle_ray.models.backbone import ANGLE_RAY_FILE, load_embedding_model
from angle_ray.train.checkpoint import CheckpointError
from angle_ray.train.driver import run_training
from angle_ray.train.progress import read_metrics
from angle_ray.train.streams import pick_stream
from tests.train.conftest import assert_lora_trained, write_rows

pytestmark = pytest.mark.slow


def test_zero3_with_ese_trains_tiny_llm_lora_on_two_workers(ray_local, tiny_job):
    # ZeRO-3 partitions the weights across the 2 workers; ESE's shallow-layer and prefix terms
    # ride on the same run (ZeRO-2 runs in test_step_extras_run.py, with GradCache)
    cfg = tiny_job(loss={"cosine_w": 1.0, "ibn_w": 1.0, "angle_w": 0.02,
                         "ese": {"enabled": True, "compression_size": 16}},
                   train={"zero_stage": 3, "num_workers": 2, "max_steps": 4, "log_every": 1,
                          "checkpoint_every": 4, "name": "zero3-ese"})
    run = run_training(cfg)
    rows = [r for r in read_metrics(run.run_dir) if "loss" in r]
    assert int(rows[-1]["step"]) == 4 and int(rows[-1]["world_size"]) == 2
    for r in rows:  # the logged loss is the sum of ESE's parts (and no NaN)
        parts = [float(r[f"loss/ese_{k}"]) for k in ("full", "prefix", "align", "shallow")]
        assert float(r["loss"]) == pytest.approx(sum(parts), rel=1e-4)
    assert_lora_trained(run.model_dir)
    # its ZeRO-3 shards resume only on 2 workers: on 1, a clear error before any step (Ray Train
    # wraps the worker's error; the command line finds it and prints `error: ...`, exit 2)
    one = tiny_job(loss=cfg.loss.model_dump(), train={
        "zero_stage": 3, "num_workers": 1, "max_steps": 6, "checkpoint_every": 4,
        "name": "zero3-ese"})
    with pytest.raises(Exception) as failed:
        run_training(one)
    found = find_user_error(failed.value)
    assert isinstance(found, CheckpointError), failed.value
    assert "written by 2 workers, and this run has 1" in str(found)


def test_bad_row_in_the_stream_fails_naming_file_line_and_field(ray_local, tiny_job, tmp_path,
                                                               data_dir):
    rows = [json.loads(x) for x in (data_dir / "stsb" / "train.jsonl").open().readlines()[:40]]
    rows[22]["text2"] = "   "
    path = write_rows(tmp_path / "bad.jsonl", rows)
    cfg = tiny_job(data=[{"path": path, "format": "A", "label_range": [0, 5]}])
    with pytest.raises(DataError, match=r"bad\.jsonl line 23, field 'text2'"):
        run_training(cfg)


def test_two_mixed_datasets_each_get_their_weights_share_of_steps_on_what_fits(
        ray_local, tiny_job, stsb_slice, nli_slice):
    # elastic [1, 2] at 1.5 CPU a worker: in this Ray's 2 CPUs only one fits, so it runs with 1
    # (the upper bound, [1, 2] at 0.5 CPU running with 2, is the DDP run's test below)
    cfg = tiny_job(data=[{"path": stsb_slice, "format": "A", "label_range": [0, 5], "weight": 3},
                         {"path": nli_slice, "format": "C", "weight": 1}],
                   train={"max_steps": 24, "log_every": 24, "checkpoint_every": 24, "name": "mix",
                          "num_workers": [1, 2], "cpus_per_worker": 1.5})
    run = run_training(cfg)
    last = read_metrics(run.run_dir)[-1]
    assert int(last["world_size"]) == 1
    expected = [pick_stream(cfg.train.seed, s, [3, 1]) for s in range(24)]
    assert int(last["steps/train_0"]) == expected.count(0)
    assert int(last["steps/train_1"]) == expected.count(1)
    assert expected.count(0) > 2 * expected.count(1) > 0
    assert float(last["loss/cln"]) >= 0  # the Format C stream ran its contrastive term


def test_rerunning_a_job_name_resumes_from_its_last_checkpoint(ray_local, tiny_job):
    first = run_training(tiny_job(train={"max_steps": 4, "checkpoint_every": 2, "name": "again"}))
    second = run_training(tiny_job(train={"max_steps": 8, "checkpoint_every": 2, "name": "again"}))
    assert second.run_dir == first.run_dir
    rows = read_metrics(second.run_dir)
    steps = [int(r["step"]) for r in rows]
    assert steps == [2, 4, 6, 8]  # the second run did not start over at step 1
    assert int(rows[-1]["resumed_from"]) == 4


def _train_worker_pids() -> list[int]:
    """PIDs of this session's Ray Train workers (descendants of our raylet), via psutil."""
    import psutil
    import ray._private.worker as ray_worker

    raylet = ray_worker._global_node.all_processes["raylet"][0].process.pid
    return [p.pid for p in psutil.Process(raylet).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def _kill_a_worker_after_first_checkpoint(run_dir, killed: list):
    """Kill a worker once the step-10 checkpoint is committed (metrics.csv has moved past it)."""
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        if (run_dir / "metrics.csv").exists() and any(
                int(r.get("step", 0)) >= 15 for r in read_metrics(run_dir)):
            pids = _train_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
        time.sleep(0.1)


def test_killed_worker_resumes_from_checkpoint_and_finishes_planned_steps(ray_local, tiny_job):
    # 60 steps: the kill lands near step 15, well before the end (a tiny LLM step is ~0.1 s)
    cfg = tiny_job(train={"max_steps": 60, "checkpoint_every": 10, "log_every": 5,
                          "max_failures": 2, "name": "killed"})
    run_dir = Path(cfg.train.storage_path).resolve() / "killed"
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(run_dir, killed))
    killer.start()
    run = run_training(cfg)
    killer.join()
    assert killed, "no worker was killed: the run finished before its first checkpoint"
    rows = read_metrics(run.run_dir)
    assert int(rows[-1]["step"]) == 60
    resumed = {int(r["resumed_from"]) for r in rows}
    assert max(resumed) >= 10  # a restarted worker group loaded a checkpoint
    assert json.loads((run.model_dir / ANGLE_RAY_FILE).read_text())


@pytest.fixture(scope="module")
def scifact_small(data_dir, tmp_path_factory) -> str:
    """A real SciFact slice in BEIR layout: 40 judged queries, their documents and 160 others."""
    import gzip

    src = data_dir / "scifact"
    qrels = [line.split("\t") for line in (src / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    qids = list(dict.fromkeys(q for q, _, _ in qrels))[:40]
    keep = [(q, d, s) for q, d, s in qrels if q in qids]
    with gzip.open(src / "corpus.jsonl.gz", "rt") as f:
        docs = [json.loads(x) for x in f]
    wanted = {d for _, d, _ in keep}
    chosen = [d for d in docs if d["id"] in wanted] + [d for d in docs if d["id"] not in wanted][:160]
    out = tmp_path_factory.mktemp("scifact-small")
    (out / "qrels").mkdir()
    (out / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in keep))
    write_rows(out / "corpus.jsonl", chosen)
    queries = [json.loads(x) for x in (src / "queries.jsonl").open()]
    write_rows(out / "queries.jsonl", [q for q in queries if q["id"] in qids])
    return str(out)


def test_ddp_elastic_run_with_room_for_two_uses_two_workers_and_writes_its_artefacts(
        ray_local, tiny_job, scifact_small):
    # elastic [1, 2] at 0.5 CPU a worker: both fit in this Ray's 2 CPUs, so it runs with 2
    cfg = tiny_job(train={"strategy": "ddp", "num_workers": [1, 2], "max_steps": 4,
                          "checkpoint_every": 2, "keep_checkpoints": 1, "name": "ddp"},
                   eval={"retrieval_dev": {"path": scifact_small, "dev_fraction": 0.5}})
    run = run_training(cfg)
    rows = read_metrics(run.run_dir)
    dev = [float(r["dev_metric"]) for r in rows if "dev_metric" in r]
    assert len(dev) == 2 and all(0.0 <= v <= 100.0 for v in dev)
    assert int(rows[-1]["world_size"]) == 2
    assert (run.run_dir / "curves.png").stat().st_size > 0
    assert list((run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len([p for p in run.run_dir.glob("checkpoint_*") if p.is_dir()]) == 1  # keep 1
    assert load_embedding_model(run.model_dir).cfg.is_llm
