"""PBT over real training runs: two trials at once, the weak one continues from the strong one's
weights (a Tune checkpoint holding the model folder) as a new Train run, counting steps on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from angle_ray.models.backbone import ANGLE_RAY_FILE
from angle_ray.tune.layout import PBT_STAGING_DIR, TRIALS_DIR
from angle_ray.tune.pbt import MODEL, STATE, staged_checkpoint
from angle_ray.tune.sweep import plan_sweep, run_sweep

pytestmark = pytest.mark.slow


def test_pbt_weak_trial_continues_from_the_strong_trials_weights(tiny_job_file, tmp_path, ray_local):
    space = tmp_path / "pbt.yaml"
    space.write_text(yaml.safe_dump({
        "config": str(tiny_job_file), "num_samples": 2, "max_concurrent_trials": 2,
        "include_base": True,
        # synch: both trials reach each point before either is perturbed, so the strong one has
        # a checkpoint for the weak one whichever reached the point first
        "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                      "resample_probability": 0.0, "synch": True},
        # the base trial (lr 5e-5) learns; the other one (2e-2) wrecks the model at once
        "params": {"train.lr": {"choice": [2.0e-2]}}}))
    # an evaluation (a checkpoint, a perturbation point) every step: points 1 and 2 before the
    # last step 3, each leaves steps to train after the weak trial took the strong weights.
    sweep = plan_sweep(space, output=tmp_path / "sweep",
                       overrides=["train.max_steps=3", "train.eval_every=1"])
    outcome = run_sweep(sweep)
    report = outcome.report
    assert not outcome.interrupted and len(report.rows) == 2
    assert {r.status for r in report.rows} == {"completed"}  # PBT never stops a trial for good
    assert all(r.step == 3 and r.total_steps == 3 for r in report.rows)  # steps count on
    base = next(r for r in report.rows if r.is_base)
    weak = next(r for r in report.rows if not r.is_base)
    runs = sorted((sweep.folder / TRIALS_DIR).glob(f"{weak.trial_id}-g*"))
    assert runs, "the weak trial never continued from another trial's checkpoint"
    from_base = [json.loads((r / "warm_start.json").read_text()) for r in runs]
    assert base.trial_id in [w["from_trial"] for w in from_base]  # it took the strong weights
    # a generation Tune paused again before its Train run began has no config.yaml; one trained
    trained = [(r, w) for r, w in zip(runs, from_base) if (r / "config.yaml").exists()]
    assert trained, f"no generation of the weak trial trained: {runs}"
    run, start = trained[0]
    assert (run / "init_model" / ANGLE_RAY_FILE).exists()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name_or_path"] == str(run / "init_model")
    assert config["train"]["max_steps"] == 3 - start["step"]  # only the steps left
    steps = [s for s, _ in weak.curve]  # one curve across generations, counting on
    assert steps == sorted(set(steps)) and steps[-1] == 3 and len(steps) >= 2
    tune_ckpts = list((sweep.folder / "tune").rglob(STATE))
    assert tune_ckpts and all(json.loads(p.read_text())["step"] in (1, 2, 3) for p in tune_ckpts)
    assert Path(report.files["best"]).exists()
    # every checkpoint report's staging folder is gone once Tune copied it, the folder with the sweep
    assert not sweep.pbt_staging_dir.exists()


def test_staged_checkpoint_clears_a_killed_reports_leftovers_and_removes_itself(tmp_path):
    model = tmp_path / "ckpt" / MODEL
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    staging = tmp_path / "sweep" / PBT_STAGING_DIR / "trial_a"
    (staging / MODEL).mkdir(parents=True)  # what a trial killed mid-report left behind
    (staging / MODEL / "stale.bin").write_bytes(b"old")
    state = {"step": 2, "trial_id": "trial_a", "metrics": {"dev_metric": 0.5, "step": 2}}
    with staged_checkpoint(staging, model, state) as checkpoint:
        folder = Path(checkpoint.path)
        assert folder == staging
        assert sorted(p.name for p in (folder / MODEL).iterdir()) == ["model.safetensors"]
        assert json.loads((folder / STATE).read_text()) == state
    assert not staging.exists()
