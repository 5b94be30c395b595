"""A Ray Tune sweep over the training driver: plan it, run (or resume) it, write its report.

    angle-ray sweep --space tune_spaces/stsb_loss_weights.yaml train.max_steps=200
    angle-ray sweep --config jobs/configs/quickstart.yaml --space tune_spaces/stsb_loss_weights.yaml

Each trial is a full distributed training run (`tune/trial.py`; PBT trials: `tune/pbt.py`); the
sweep folder's layout is in `tune/layout.py`, the report in `tune/report.py`. Running the same
command again resumes an unfinished sweep: finished trials are kept, running ones restart from
their last Train checkpoint (a trial's run folder is named after its id).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

from angle_ray.config import apply_overrides, config_from_dict, read_job_file, set_key
from angle_ray.train.driver import init_ray
from angle_ray.tune.layout import STATE_FILE, TUNE_DIR, Sweep, first_eval_step
from angle_ray.tune.report import Report, write_report
from angle_ray.tune.space import (
    SpaceError,
    SweepSpec,
    check_combinations,
    check_overrides,
    check_params,
    load_space,
)
from angle_ray.tune.trial import trainable, trial_dirname


def _resolve_config_path(spec: SweepSpec, config: str | None) -> Path:
    if config is not None:
        return Path(config)
    if spec.config is None:
        raise SpaceError(f"{spec.source}: config: no base job; name one in the space file "
                         "(`config: jobs/configs/quickstart.yaml`) or pass --config")
    named = Path(spec.config)
    if named.is_absolute() or named.exists():
        return named
    # a space file in <project>/tune_spaces/ names its config from the project root
    beside = Path(spec.source).resolve().parent.parent / named
    if beside.exists():
        return beside
    raise SpaceError(f"{spec.source}: config: base job {spec.config} not found "
                     f"(looked in {Path.cwd()} and {beside.parent})")


def plan_sweep(space: str | Path, config: str | None = None, overrides: list[str] | None = None,
               output: str | Path | None = None, **flags) -> Sweep:
    """Read and check the space and its base job; nothing runs yet.

    `flags` (CLI options) replace the space file's settings: num_samples,
    max_concurrent_trials, max_failures, search, metric, mode, seed, trial_cpus, scheduler.
    """
    spec = load_space(space)
    _apply_flags(spec, flags)
    check_combinations(spec)
    path = _resolve_config_path(spec, config)
    raw = read_job_file(path)
    config_from_dict(copy.deepcopy(raw), str(path))  # the base job itself must be valid
    check_overrides(spec, raw)
    for key, value in spec.overrides.items():
        set_key(raw, key, value)
    raw = apply_overrides(raw, overrides or [])
    base = config_from_dict(copy.deepcopy(raw), f"{path} with overrides")
    searched = {p.key for p in spec.params}
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key in searched:
            raise SpaceError(f"{spec.source}: params.{key}: "
                             f"searched by the space, so it cannot also be overridden ({item})")
    check_params(spec, raw)
    if spec.num_samples < 1 or spec.max_concurrent_trials < 1:
        raise SpaceError(f"{spec.source}: num_samples and max_concurrent_trials must be >= 1")
    folder = Path(output) if output else (
        Path(base.train.storage_path).expanduser() / "sweeps" / spec.name)
    sweep = Sweep(spec=spec, job=json.loads(json.dumps(raw)), folder=folder.resolve())
    _check_fits_the_job(sweep, path)
    return sweep


def _apply_flags(spec: SweepSpec, flags: dict) -> None:
    for key, value in flags.items():
        if value is None:
            continue
        if key == "trial_cpus":
            spec.trial_resources = {**spec.trial_resources, "cpu": float(value)}
        elif key == "scheduler":
            spec.scheduler.type = value
        else:
            setattr(spec, key, value)


def _check_fits_the_job(sweep: Sweep, path: Path) -> None:
    """What the space asks of its (overridden) base job: a dev set, max_steps for PBT, ..."""
    spec, base = sweep.spec, sweep.base
    if spec.metric == "dev_metric" and base.eval.dev is None and base.eval.retrieval_dev is None:
        raise SpaceError(f"{spec.source}: metric: dev_metric is reported only when the job has "
                         f"eval.dev or eval.retrieval_dev; {path} has neither")
    if spec.scheduler.type == "pbt" and (base.train.max_steps is None or base.model.lora.enabled):
        raise SpaceError(f"{spec.source}: scheduler: pbt hands full model weights between trials "
                         "and counts steps across them: it needs train.max_steps and no LoRA")
    if spec.include_base and spec.search == "optuna":
        base_values = sweep.base_values()
        for p in spec.params:
            if p.dist in ("choice", "grid") and base_values[p.key] not in p.values:
                raise SpaceError(f"{spec.source}: params.{p.key}: include_base with optuna needs "
                                 f"the base value {base_values[p.key]!r} among the choices")


# --- the Tuner


def make_scheduler(sweep: Sweep):
    s, base = sweep.spec.scheduler, sweep.base
    if s.type == "fifo":
        return FIFOScheduler()
    by_step = s.time_attr == "step"
    if s.type == "asha":
        return ASHAScheduler(
            time_attr=s.time_attr,
            grace_period=s.grace_period or (first_eval_step(base) if by_step else 1),
            reduction_factor=s.reduction_factor,
            max_t=s.max_t or (base.train.max_steps if by_step and base.train.max_steps else 2**31),
            brackets=s.brackets,
            stop_last_trials=False,  # a trial that reaches its last step ends on its own
        )
    mutations = {p.key: (list(p.domain().categories) if p.dist == "choice" else p.domain())
                 for p in sweep.spec.params}
    return PopulationBasedTraining(
        time_attr=s.time_attr,
        perturbation_interval=s.perturbation_interval or (
            2 * first_eval_step(base) if by_step else 2),
        hyperparam_mutations=mutations,
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        synch=s.synch,
    )


def make_searcher(sweep: Sweep):
    spec = sweep.spec
    points = None
    if spec.include_base:
        base = sweep.base_values()
        points = [{p.key: p.encode(base[p.key]) for p in spec.params}]
    if spec.search == "optuna":
        # lazy: Optuna (and its SQLAlchemy) load only for sweeps that search with it
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(points_to_evaluate=points, seed=spec.seed)
    # a SearchGenerator: Tune ignores TuneConfig.max_concurrent_trials for it
    return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.seed,
                                 max_concurrent=spec.max_concurrent_trials)


def build_tuner(sweep: Sweep) -> tune.Tuner:
    spec = sweep.spec
    return tune.Tuner(
        trainable(sweep),
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=make_searcher(sweep),
            scheduler=make_scheduler(sweep), num_samples=spec.num_samples,
            # random search limits itself (BasicVariantGenerator); Tune wraps Optuna in a limiter
            max_concurrent_trials=spec.max_concurrent_trials if spec.search == "optuna" else None,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(sweep.folder),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1),
    )


def can_resume(folder: str | Path) -> bool:
    return tune.Tuner.can_restore(str(Path(folder).resolve() / TUNE_DIR))


def _check_same_sweep(sweep: Sweep) -> None:
    saved = json.loads((sweep.folder / STATE_FILE).read_text())
    now = sweep.state()
    for state in (saved, now):  # the same space file may be named by another path
        state["spec"].pop("source", None)
    for part in ("spec", "job"):
        if saved[part] != now[part]:
            keys = sorted(k for k in set(saved[part]) | set(now[part])
                          if saved[part].get(k) != now[part].get(k))
            raise SpaceError(
                f"{sweep.folder} holds a sweep started from a different "
                f"{'space' if part == 'spec' else 'job'} (differs in: "
                f"{', '.join(keys)}); rerun with the original space and config to resume it, "
                "or pass --output for a new sweep folder")


@dataclass
class SweepOutcome:
    folder: Path
    resumed: bool
    interrupted: bool
    report: Report


def run_sweep(sweep: Sweep, address: str | None = None, resume: bool | None = None) -> SweepOutcome:
    """Run (or resume) the sweep, then write its report. `resume=None`: resume when the sweep
    folder holds an unfinished sweep; True: it must; False: refuse to touch an existing one."""
    folder = sweep.folder
    exists = can_resume(folder)
    if resume and not exists:
        raise SpaceError(f"--resume: {folder} holds no sweep to resume")
    if resume is False and exists:
        raise SpaceError(f"{folder} already holds a sweep; resume it or pass another --output")
    init_ray(address)
    if exists:
        _check_same_sweep(sweep)
        print(f"[angle-ray] resuming the sweep in {folder}", flush=True)
        tuner = tune.Tuner.restore(str(sweep.tune_dir), trainable=trainable(sweep),
                                   resume_unfinished=True, resume_errored=False)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).write_text(json.dumps(sweep.state(), indent=1))
        tuner = build_tuner(sweep)
    tuner.fit()
    # what a trial Tune killed in the middle of a PBT report left (no trial runs any more)
    shutil.rmtree(sweep.pbt_staging_dir, ignore_errors=True)
    report = write_report(sweep)
    return SweepOutcome(folder=folder, resumed=exists, interrupted=report.unfinished > 0,
                        report=report)
