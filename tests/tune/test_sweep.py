"""A real 3-trial sweep (MiniLM, STS-B slices, Ray Tune + Train + DeepSpeed), interrupted and
resumed, then its report and its best job file checked.

One sweep serves every test here (it is the slow part): `angle-ray sweep` runs in a child
process (a second driver on this session's Ray) and gets SIGINT (Ctrl-C) once its third trial
has started; the same sweep is then resumed in this process. The grid over the learning rate
puts two good trials (5e-5, 3e-5) and one that wrecks the model (1e-2) in a fixed order, one
trial at a time, 4 steps each, so ASHA (grace 2 steps, reduction factor 2) has an earlier trial
to compare each later one against.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from angle_ray.config import load_config
from angle_ray.models.backbone import ANGLE_RAY_FILE
from angle_ray.train.driver import run_training
from angle_ray.tune.layout import TRIALS_DIR
from angle_ray.tune.report import read_curve
from angle_ray.tune.sweep import can_resume, plan_sweep, run_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LRS = [5.0e-5, 1.0e-2, 3.0e-5]
MAX_STEPS = 4  # evaluations at steps 2 and 4 (tiny_job_file evaluates every 2 steps)


def _started_trials(folder: Path) -> list[Path]:
    trials = folder / TRIALS_DIR
    return sorted(trials.iterdir()) if trials.is_dir() else []


def _interrupt_when_third_trial_starts(proc: subprocess.Popen, folder: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(_started_trials(folder)) >= 3:
            proc.send_signal(signal.SIGINT)
            return
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"the sweep never started its third trial (rc {proc.poll()})")


@pytest.fixture(scope="module")
def sweep_run(tiny_job_file, tmp_path_factory, ray_local):
    """Interrupted by SIGINT in a child process, then resumed here; what each phase left."""
    tmp = tmp_path_factory.mktemp("sweep")
    space = tmp / "lr_grid.yaml"
    space.write_text(yaml.safe_dump({
        "config": str(tiny_job_file), "num_samples": 1, "max_concurrent_trials": 1,
        "max_failures": 1, "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
        "overrides": {"train.max_steps": MAX_STEPS},
        "params": {"train.lr": {"grid": LRS}, "loss.angle_w": {"choice": [0.02]}}}))
    folder = tmp / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    address = ray_local.get_runtime_context().gcs_address  # no second Ray to start
    started = time.time()
    with (tmp / "first.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "angle_ray.cli", "sweep", "--space", str(space),
                                 "--output", str(folder), "--address", address], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        _interrupt_when_third_trial_starts(proc, folder, timeout=600)
        rc = proc.wait(timeout=300)
    first_s = time.time() - started
    before = {p.name: (p / "metrics.csv").read_bytes() for p in _started_trials(folder)[:2]}
    interrupted = sorted(p.name for p in _started_trials(folder))
    assert can_resume(folder)

    started = time.time()
    outcome = run_sweep(plan_sweep(space, output=folder))  # the same command resumes
    print(f"\nsweep: first part {first_s:.0f}s (interrupted), resumed part {time.time() - started:.0f}s")
    return {"rc": rc, "log": (tmp / "first.log").read_text(), "before": before,
            "interrupted": interrupted, "outcome": outcome, "folder": folder, "space": space}


def _rows(folder: Path) -> list[dict]:
    with (folder / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_ctrl_c_stops_the_sweep_with_unfinished_trials_and_a_resume_hint(sweep_run):
    assert sweep_run["rc"] == 130, sweep_run["log"][-3000:]
    assert "run the same command again to resume" in sweep_run["log"]
    assert len(sweep_run["interrupted"]) == 3  # two finished, the third one cut short


def test_resumed_sweep_finishes_the_remaining_trials_without_rerunning_finished_ones(sweep_run):
    outcome, folder = sweep_run["outcome"], sweep_run["folder"]
    assert outcome.resumed and not outcome.interrupted
    rows = {r["trial_id"]: r for r in _rows(folder)}
    assert len(rows) == 3 and all(r["status"] in ("completed", "stopped") for r in rows.values())
    for trial_id, metrics in sweep_run["before"].items():
        # a finished trial's Train run was not started again: its metrics.csv is byte-identical
        assert (folder / TRIALS_DIR / trial_id / "metrics.csv").read_bytes() == metrics
    assert len(_started_trials(folder)) == 3
    cut_short = sweep_run["interrupted"][2]  # started before Ctrl-C, trained to its end after
    assert cut_short not in sweep_run["before"] and rows[cut_short]["status"] == "completed"
    assert int(rows[cut_short]["step"]) == MAX_STEPS
    assert sorted(float(r["train.lr"]) for r in rows.values()) == sorted(LRS)


def test_asha_stops_the_weak_trials_at_an_early_rung(sweep_run):
    rows = {float(r["train.lr"]): r for r in _rows(sweep_run["folder"])}
    assert rows[5.0e-5]["status"] == "completed" and int(rows[5.0e-5]["step"]) == MAX_STEPS
    stopped = [lr for lr, r in rows.items() if r["status"] == "stopped"]
    assert 1.0e-2 in stopped  # compared against the first trial at step 2, and far below it
    for lr in stopped:
        assert int(rows[lr]["step"]) < MAX_STEPS
        curve = read_curve(Path(rows[lr]["run_dir"]), "dev_metric")
        assert curve and max(s for s, _ in curve) < MAX_STEPS  # its training really stopped there
    report = sweep_run["outcome"].report
    assert report.stopped == len(stopped) >= 1


def test_report_tables_are_sorted_by_the_metric_and_plots_are_written(sweep_run):
    folder = sweep_run["folder"]
    rows = _rows(folder)
    metrics = [float(r["dev_metric"]) for r in rows]
    assert metrics == sorted(metrics, reverse=True)
    md = (folder / "results.md").read_text()
    ranked = [line.split("|")[2].strip() for line in md.splitlines()
              if line.startswith(("| 1 ", "| 3 "))]
    assert ranked[0].startswith(rows[0]["trial_id"]) and "**best**" in ranked[0]
    for name in ("dev_metric_vs_train.lr.png", "dev_metric_vs_loss.angle_w.png",
                 "dev_metric_curves.png"):
        png = folder / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_best_yaml_reruns_as_is_to_the_same_dev_metric(sweep_run, tmp_path):
    report = sweep_run["outcome"].report
    best = report.best
    assert best.status == "completed" and best.values["train.lr"] in (5.0e-5, 3.0e-5)
    path = report.files["best"]
    cfg = load_config(path)
    assert cfg.train.lr == best.values["train.lr"] and cfg.train.seed == 42
    assert Path(cfg.train.storage_path).is_absolute() and cfg.train.name == "best"
    run = run_training(cfg)
    assert run.run_dir == sweep_run["folder"] / "best"
    rerun = read_curve(run.run_dir, "dev_metric")
    trial = read_curve(Path(best.run_dir), "dev_metric")
    assert [s for s, _ in rerun] == [s for s, _ in trial] == [2, 4]
    for (_, a), (_, b) in zip(rerun, trial):
        assert a == pytest.approx(b, abs=1e-4)  # Spearman x100: same seed, same batches, same sums
    assert run.model_dir is not None and (run.model_dir / ANGLE_RAY_FILE).exists()
