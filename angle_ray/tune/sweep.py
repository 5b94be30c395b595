"""A Ray Tune sweep over the training driver: each trial is a full distributed training run.

    angle-ray sweep --space tune_spaces/stsb_loss_weights.yaml train.max_steps=200
    angle-ray sweep --config jobs/configs/quickstart.yaml --space tune_spaces/stsb_loss_weights.yaml

Ray 2.60 cannot tune a TorchTrainer directly (`Tuner(trainer)` fails), so the Tune trainable
is a function that builds and fits the trainer through `run_training` and passes a
`TuneReportCallback`: the Train controller forwards each dev evaluation to Tune, where ASHA
(or PBT) compares trials. The function itself reserves almost no CPU; its workers ask for
their own (`train.num_workers` x `train.cpus_per_worker`).

The sweep folder holds everything: `sweep.json` (the space and base job it was started with),
`tune/` (Tune's experiment state, so an interrupted sweep resumes), `trials/<trial id>/` (each
trial's Train run folder) and the report (`results.csv`, `results.md`, `plots/`, `best.yaml`).
Running the same command again resumes an unfinished sweep: finished trials are kept, running
ones restart from their last Train checkpoint (a trial's run folder is named after its id).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.tune.integration.ray_train import TuneReportCallback

from angle_ray.config import ConfigError, JobConfig, apply_overrides, config_from_dict
from angle_ray.tune.space import (
    SpaceError,
    SweepSpec,
    check_combinations,
    check_overrides,
    check_params,
    get_key,
    load_space,
    set_key,
    with_values,
)

STATE_FILE = "sweep.json"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"


@dataclass
class Sweep:
    """A checked sweep: its space, the base job (overrides applied) and its folder."""

    spec: SweepSpec
    job: dict  # JSON-able job dict every trial starts from
    folder: Path

    @property
    def base(self) -> JobConfig:
        return config_from_dict(copy.deepcopy(self.job), self.spec.source)

    def base_values(self) -> dict[str, Any]:
        """The base job's values of the searched keys (schema defaults included)."""
        dumped = self.base.model_dump(mode="json")
        return {p.key: get_key(dumped, p.key) for p in self.spec.params}

    def trial_job(self, values: dict[str, Any], name: str) -> JobConfig:
        """The job of one trial: base + searched values, its own run folder, no extra exports."""
        cfg = with_values(self.job, values, self.spec.source)
        train = cfg.train.model_copy(update={"name": name,
                                             "storage_path": str(self.folder / TRIALS_DIR)})
        export = cfg.export.model_copy(update={"output_dir": None, "sentence_transformers": False})
        return cfg.model_copy(update={"train": train, "export": export})

    def state(self) -> dict:
        return {"spec": json.loads(json.dumps(asdict(self.spec))), "job": self.job}


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
    for key, value in flags.items():
        if value is None:
            continue
        if key == "trial_cpus":
            spec.trial_resources = {**spec.trial_resources, "cpu": float(value)}
        elif key == "scheduler":
            spec.scheduler.type = value
        else:
            setattr(spec, key, value)
    check_combinations(spec)
    path = _resolve_config_path(spec, config)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    config_from_dict(copy.deepcopy(raw), str(path))  # the base job itself must be valid
    check_overrides(spec, raw)
    for key, value in spec.overrides.items():
        set_key(raw, key, value)
    raw = apply_overrides(raw, overrides or [])
    base = config_from_dict(copy.deepcopy(raw), f"{path} with overrides")
    searched = {p.key for p in spec.params}
    for item in overrides or []:
        if item.split("=", 1)[0].strip() in searched:
            raise SpaceError(f"{spec.source}: params.{item.split('=', 1)[0].strip()}: "
                             f"searched by the space, so it cannot also be overridden ({item})")
    check_params(spec, raw)
    if spec.metric == "dev_metric" and base.eval.dev is None and base.eval.retrieval_dev is None:
        raise SpaceError(f"{spec.source}: metric: dev_metric is reported only when the job has "
                         f"eval.dev or eval.retrieval_dev; {path} has neither")
    if spec.num_samples < 1 or spec.max_concurrent_trials < 1:
        raise SpaceError(f"{spec.source}: num_samples and max_concurrent_trials must be >= 1")
    folder = Path(output) if output else (
        Path(base.train.storage_path).expanduser() / "sweeps" / spec.name)
    sweep = Sweep(spec=spec, job=json.loads(json.dumps(raw)), folder=folder.resolve())
    if spec.scheduler.type == "pbt" and (base.train.max_steps is None or base.model.lora.enabled):
        raise SpaceError(f"{spec.source}: scheduler: pbt hands full model weights between trials "
                         "and counts steps across them: it needs train.max_steps and no LoRA")
    if spec.include_base and spec.search == "optuna":
        for p in spec.params:
            if p.dist in ("choice", "grid") and sweep.base_values()[p.key] not in p.values:
                raise SpaceError(f"{spec.source}: params.{p.key}: include_base with optuna needs "
                                 f"the base value {sweep.base_values()[p.key]!r} among the choices")
    return sweep


# --- inside a trial


class MetricReportCallback(TuneReportCallback):
    """Forwards to Tune only the reports that carry the sweep's metric.

    The loop reports loss every `log_every` steps and the dev metric at evaluations; Tune
    requires the metric in every result, and the schedulers compare trials only on it.
    """

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        value = (metrics[0] if metrics else {}).get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            super().after_report(run_context, metrics, checkpoint)


def name_this_cluster_for_train() -> None:
    """Give the Train controller (and the actors it starts) this cluster's address.

    A scheduler stops a trial by ending its process, which takes the Train controller with it;
    Train's placement-group cleaner then frees the worker group's CPUs, finding the controller
    through the state API. Without an address that lookup scans the host for Ray instances and
    fails when there are several (a shared machine, or a test session beside a sweep): the
    cleaner gives up, the stopped trial's CPUs stay reserved and later trials wait forever.
    Ray Train passes its listed environment variables on to the controller; RAY_ADDRESS joins them.
    """
    import ray
    from ray.train.v2._internal import constants

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")


def run_trial(config: dict, sweep: Sweep) -> None:
    """The Tune trainable: one full training run with the trial's values.

    The run folder is `trials/<trial id>`: a retried or resumed trial continues from its last
    Train checkpoint instead of starting over.
    """
    from ray import tune

    from angle_ray.train.driver import run_training

    name_this_cluster_for_train()
    trial_id = tune.get_context().get_trial_id()
    values = sweep.spec.decode(config)
    if sweep.spec.scheduler.type == "pbt":
        from angle_ray.tune.pbt import run_pbt_trial

        run_pbt_trial(sweep, values, trial_id)
        return
    run_training(sweep.trial_job(values, name=trial_id),
                 callbacks=[MetricReportCallback(sweep.spec.metric)])


def _trial_dirname(trial) -> str:
    return trial.trial_id


# --- the Tuner


def first_eval_step(cfg: JobConfig) -> int:
    t = cfg.train
    step = t.eval_every or t.checkpoint_every
    return min(step, t.max_steps) if t.max_steps else step


def make_scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

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
    )


def make_searcher(sweep: Sweep):
    spec = sweep.spec
    points = None
    if spec.include_base:
        base = sweep.base_values()
        points = [{p.key: p.encode(base[p.key]) for p in spec.params}]
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(points_to_evaluate=points, seed=spec.seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # a SearchGenerator: Tune ignores TuneConfig.max_concurrent_trials for it
    return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.seed,
                                 max_concurrent=spec.max_concurrent_trials)


def trainable(sweep: Sweep):
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, sweep=sweep),
                               sweep.spec.trial_resources)


def build_tuner(sweep: Sweep):
    from ray import tune

    spec = sweep.spec
    return tune.Tuner(
        trainable(sweep),
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=make_searcher(sweep),
            scheduler=make_scheduler(sweep), num_samples=spec.num_samples,
            # random search limits itself (BasicVariantGenerator); Tune wraps Optuna in a limiter
            max_concurrent_trials=spec.max_concurrent_trials if spec.search == "optuna" else None,
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(sweep.folder),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1),
    )


def can_resume(folder: str | Path) -> bool:
    from ray import tune

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
    report: Any  # angle_ray.tune.report.Report


def run_sweep(sweep: Sweep, address: str | None = None, resume: bool | None = None) -> SweepOutcome:
    """Run (or resume) the sweep, then write its report. `resume=None`: resume when the sweep
    folder holds an unfinished sweep; True: it must; False: refuse to touch an existing one."""
    from ray import tune

    from angle_ray.train.driver import init_ray
    from angle_ray.tune.report import write_report

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
        tuner = tune.Tuner.restore(str(folder / TUNE_DIR), trainable=trainable(sweep),
                                   resume_unfinished=True, resume_errored=False)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).write_text(json.dumps(sweep.state(), indent=1))
        tuner = build_tuner(sweep)
    tuner.fit()
    report = write_report(sweep)
    return SweepOutcome(folder=folder, resumed=exists, interrupted=report.unfinished > 0,
                        report=report)
