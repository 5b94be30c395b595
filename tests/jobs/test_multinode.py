"""A worker node dies mid-run on a real multi-node Ray cluster: training resumes and finishes.

The cluster is three `ray start` nodes on this machine (tests/jobs/local_ray_cluster.py): a
head (1 CPU, runs the driver, the Train controller and Ray Data's coordinator) and two worker
nodes (1 CPU each, one `node_slot` each). The job pins each training worker to a node with
`train.resources_per_worker: {node_slot: 1}` (driver: tests/jobs/spread_train.py), so the
elastic group [1, 2] runs one worker per worker node. After the first checkpoint is committed
the test SIGKILLs one worker node's raylet (the node dies with its processes, as a crashed
machine does); the group must come back on the surviving node from the checkpoint (shared
storage: every node sees the same run folder) and finish the planned steps.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from local_ray_cluster import LocalRayCluster, read_csv_rows

from angle_ray.models.backbone import load_embedding_model

# slow: minutes; the timeout is a backstop (each wait below has its own bound)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

HERE = Path(__file__).resolve().parent
SLOT = "node_slot"
MAX_STEPS, CHECKPOINT_EVERY, LOG_EVERY = 80, 10, 5
RUN_TIMEOUT_S = 900


@pytest.fixture
def cluster(tmp_path):
    """Head (1 CPU, dashboard) + worker nodes `node-a` and `node-b` (1 CPU, 1 node_slot each); token auth."""
    c = LocalRayCluster(tmp_path / "cluster")
    try:
        c.start_head(num_cpus=1, dashboard=True)  # Train's state checks use the dashboard
        c.add_node(num_cpus=1, resources={SLOT: 1}, name="node-a")
        c.add_node(num_cpus=1, resources={SLOT: 1}, name="node-b")
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def driver(cluster, tmp_path):
    """Start spread_train.py against the cluster; the process is killed at teardown if alive."""
    procs = []

    def start(job_yaml: Path, result: Path, log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "spread_train.py"), "--config", str(job_yaml),
                 "--nodes", "3", "--result", str(result)],
                stdout=out, stderr=subprocess.STDOUT, env=cluster.driver_env(), cwd=tmp_path,
                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _job(tmp_path, tiny_llm_dir, data_dir) -> Path:
    train = tmp_path / "stsb-train-256.jsonl"
    train.write_text("\n".join((data_dir / "stsb" / "train.jsonl").read_text()
                               .splitlines()[:256]) + "\n")
    job = {
        "model": {"name_or_path": tiny_llm_dir, "is_llm": True, "pooling": "last",
                  "max_length": 32, "lora": {"enabled": True, "r": 4, "alpha": 8}},
        "data": [{"path": str(train), "format": "A", "label_range": [0, 5]}],
        "loss": {"cosine_w": 1.0, "ibn_w": 1.0, "angle_w": 0.02},
        "train": {"name": "multinode", "storage_path": str(tmp_path / "shared" / "runs"),
                  "batch_size": 8, "max_steps": MAX_STEPS, "lr": 1e-3,
                  "log_every": LOG_EVERY, "checkpoint_every": CHECKPOINT_EVERY,
                  "num_workers": [1, 2], "cpus_per_worker": 0.5, "max_failures": 3,
                  "resources_per_worker": {SLOT: 1},
                  "strategy": "deepspeed", "shuffle_buffer": 64, "torch_threads": 1},
        "export": {"sentence_transformers": False},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_worker_node_killed_after_a_checkpoint_resumes_on_the_survivor_and_finishes(
        cluster, driver, tiny_llm_dir, data_dir, tmp_path, capsys):
    run_dir = tmp_path / "shared" / "runs" / "multinode"
    log = tmp_path / "driver.log"
    proc = driver(_job(tmp_path, tiny_llm_dir, data_dir), tmp_path / "result.json", log)
    node_a, node_b = cluster.nodes[1], cluster.nodes[2]

    def tail() -> str:
        return log.read_text(errors="replace")[-6000:]

    # wait until the step-10 checkpoint is committed (its metrics row comes with it) on 2 workers;
    # the tiny model's steps take milliseconds, so the kill comes as soon as that row shows
    deadline = time.time() + RUN_TIMEOUT_S
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        rows = read_csv_rows(run_dir / "metrics.csv")
        if any(int(r["step"]) >= CHECKPOINT_EVERY for r in rows):
            assert int(rows[-1]["world_size"]) == 2, rows
            # one training worker on each worker node (the head has no node_slot)
            assert len(node_a.train_worker_pids()) == 1, tail()
            assert len(node_b.train_worker_pids()) == 1, tail()
            killed_at = int(rows[-1]["step"])
            cluster.kill_node(node_b)
            break
        time.sleep(0.2)
    assert killed_at is not None, "the run ended or timed out before its first checkpoint:\n" + tail()
    assert node_b.proc.poll() is not None and node_b.raylet() is None  # node-b is gone
    assert killed_at < MAX_STEPS, "the run finished before the node was killed"

    try:
        proc.wait(max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not finish after the node was killed:\n" + tail())
    assert proc.returncode == 0, tail()

    rows = read_csv_rows(run_dir / "metrics.csv")
    assert int(rows[-1]["step"]) == MAX_STEPS, rows
    after = [r for r in rows if int(r["resumed_from"]) > 0]
    assert after, f"no worker group resumed from a checkpoint: {rows}"
    resumed = int(after[0]["resumed_from"])
    # the controller writes metrics.csv after the workers report and a SIGKILLed raylet's
    # workers live on for a moment, so the first group may commit a checkpoint past `killed_at`;
    # the resume point is one the first group reported (its row and its checkpoint come together)
    first_group_last = max(int(r["step"]) for r in rows if int(r["resumed_from"]) == 0)
    assert resumed % CHECKPOINT_EVERY == 0
    assert CHECKPOINT_EVERY <= resumed <= first_group_last < MAX_STEPS
    assert all(int(r["world_size"]) == 1 for r in after)  # the survivor alone
    steps_after = [int(r["step"]) for r in after]
    assert steps_after == list(range(resumed + LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["total_steps"] == MAX_STEPS
    states = [json.loads(p.read_text()) for p in run_dir.glob("checkpoint_*/trainer_state.json")]
    assert any(s["step"] == MAX_STEPS and s["final"] for s in states)
    model = load_embedding_model(result["model_dir"])
    assert model.cfg.is_llm
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it trained

    with capsys.disabled():
        print(f"\n[test_multinode] wall time {time.time() - cluster.created_at:.1f} s "
              f"(killed node-b at step {killed_at}, resumed from step {resumed})")
