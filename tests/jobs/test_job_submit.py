"""`ray job submit` of jobs/train.py to a real `ray start --head` cluster with token auth on.

The route of cluster/README.md, end to end on this machine: a head started by `ray start`
(its own temp dir and ports, `RAY_AUTH_MODE=token`), the code shipped as the job's working_dir,
the quickstart config with overrides for a tiny budget (random-init Qwen2 + LoRA, real STS-B
rows), and the run's artefacts checked on disk. A client without the token is refused.
"""

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from local_ray_cluster import RAY_CLI, LocalRayCluster, read_csv_rows

from angle_ray.models.backbone import ANGLE_RAY_FILE, load_embedding_model

# slow: minutes; the timeout is a backstop (each wait below has its own bound)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 900


@pytest.fixture
def head(tmp_path):
    """A one-node cluster: `ray start --head --block`, dashboard on 127.0.0.1, token auth."""
    cluster = LocalRayCluster(tmp_path / "cluster")
    try:
        cluster.start_head(num_cpus=2, dashboard=True)
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def working_dir(tmp_path) -> Path:
    """What a user ships as working_dir: the package and the job entrypoints (no venv, no runs)."""
    out = tmp_path / "working_dir"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "angle_ray", out / "angle_ray", ignore=ignore)
    shutil.copytree(REPO / "jobs", out / "jobs", ignore=ignore)
    return out


@pytest.fixture
def stsb_files(data_dir, tmp_path) -> tuple[str, str]:
    """256 real STS-B train pairs and 32 validation pairs as JSONL files."""
    out = []
    for split, n in (("train", 256), ("validation", 32)):
        lines = (data_dir / "stsb" / f"{split}.jsonl").read_text().splitlines()[:n]
        path = tmp_path / f"stsb-{split}-{n}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        out.append(str(path))
    return out[0], out[1]


def _ray(cluster: LocalRayCluster, *args: str, auth: str = "token", timeout: float = 120):
    return subprocess.run([RAY_CLI, *args], env=cluster.client_env(auth), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _get(cluster: LocalRayCluster, path: str):
    """GET <dashboard>/api/jobs/<path> with the token, as the SDK sends it (the answers the
    `ray job list/status/logs` commands print, without starting a client process for each)."""
    request = urllib.request.Request(
        f"{cluster.dashboard_url}/api/jobs/{path}",
        headers={"Authorization": f"Bearer {cluster.token_file.read_text().strip()}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_submitted_quickstart_job_trains_and_leaves_its_artefacts(head, working_dir, stsb_files,
                                                                  tiny_llm_dir, tmp_path,
                                                                  capsys):
    train_path, dev_path = stsb_files
    storage = tmp_path / "runs"

    # auth is on: a client without the token gets 401, one with a wrong token 403, no job runs
    for auth, refusal in (("none", "Unauthorized: Missing authentication token"),
                          ("wrong", "Forbidden: Invalid authentication token")):
        refused = _ray(head, "job", "submit", "--no-wait", "--address", head.dashboard_url,
                       "--", "echo", "should-not-run", auth=auth)
        assert refused.returncode != 0 and refused.stdout.count("submitted successfully") == 0
        assert refusal in refused.stderr, refused.stderr[-2000:]
    for headers, code in (({}, 401), ({"Authorization": "Bearer not-the-token"}, 403)):
        request = urllib.request.Request(
            f"{head.dashboard_url}/api/jobs/", method="POST",
            data=json.dumps({"entrypoint": "echo should-not-run"}).encode(),
            headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as refused_http:
            urllib.request.urlopen(request, timeout=30)
        assert refused_http.value.code == code
    assert not [j for j in _get(head, "") if "should-not-run" in j["entrypoint"]]

    job_id = "angle-ray-quickstart-tiny"
    overrides = [
        f"model.name_or_path={tiny_llm_dir}", "model.is_llm=true", "model.pooling=last",
        "model.max_length=32", "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
        f"data.0.path={train_path}", f"eval.dev.path={dev_path}", "eval.batch_size=32",
        "train.name=submitted", f"train.storage_path={storage}", "train.max_steps=4",
        "train.checkpoint_every=2", "train.log_every=2", "train.batch_size=8", "train.lr=1e-3",
        "train.cpus_per_worker=0.5", "train.shuffle_buffer=64",
        "export.sentence_transformers=false",
    ]
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    submitted = _ray(head, "job", "submit", "--address", head.dashboard_url,
                     "--submission-id", job_id, "--working-dir", str(working_dir),
                     "--runtime-env-json", json.dumps(runtime_env),
                     "--", "python", "jobs/train.py", "--config", "jobs/configs/quickstart.yaml",
                     *overrides, timeout=JOB_TIMEOUT_S)
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-6000:]
    info = _get(head, job_id)
    assert info["status"] == "SUCCEEDED" and info["entrypoint"].startswith("python jobs/train.py")
    assert info["runtime_env"]["working_dir"].startswith("gcs://")  # the code it was sent
    logs = _get(head, f"{job_id}/logs")["logs"]
    assert "[angle-ray] 4 steps" in logs and "model written to" in logs

    run_dir = storage / "submitted"
    rows = read_csv_rows(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(r["dev_metric"] not in ("", "nan") for r in rows)
    states = [json.loads(p.read_text()) for p in run_dir.glob("checkpoint_*/trainer_state.json")]
    assert max(s["step"] for s in states) == 4
    assert any(s["step"] == 4 and s["final"] for s in states)
    assert json.loads((run_dir / "model" / ANGLE_RAY_FILE).read_text())
    assert (run_dir / "config.yaml").is_file()
    model = load_embedding_model(str(run_dir / "model"))
    assert model.cfg.is_llm and model.cfg.pooling == "last"

    with capsys.disabled():
        print(f"\n[test_job_submit] wall time {time.time() - head.created_at:.1f} s "
              f"(head start {head.started_in:.1f} s)")
