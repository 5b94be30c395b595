"""A sweep's YAML space file: which config keys to search, over what, and how the search runs.

The file is checked completely before anything starts: every searched key is applied, at its
bounds and at each of its choices, to the base job and validated by the JobConfig schema, so a
typo (`loss.angle_ww`) or a value the schema refuses is an error naming the space file and the
key, not a trial that fails an hour in.

    config: jobs/configs/quickstart.yaml     # base job (optional when --config is given)
    num_samples: 8
    scheduler: {type: asha, grace_period: 40, reduction_factor: 2}
    overrides: {train.max_steps: 200, train.eval_every: 40}
    params:
      loss.angle_w: {loguniform: [0.005, 1.0]}
      loss.ibn_w: {uniform: [0.0, 2.0]}
      model.pooling: {choice: [mean, cls]}
      mining.window: {choice: [[1, 50], [3, 100]]}   # lists are choices too
      train.lr: {grid: [2.0e-5, 5.0e-5]}

Distributions: `choice` (one of a list), `grid` (every value, crossed with the other grid
keys), `uniform` and `loguniform` ([low, high], low < high; loguniform needs low > 0), `randint`
([low, high], integers, both ends included).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from angle_ray.config import ConfigError, config_from_dict, set_key
from angle_ray.errors import UserError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "pbt", "fifo")
SEARCHERS = ("random", "optuna")

TOP_KEYS = {
    "config": "base job YAML (relative to the current folder or to the space file's project)",
    "name": "sweep name (default: the space file's name)",
    "metric": "the reported metric to optimise (default dev_metric)",
    "mode": "max or min (default max)",
    "search": "random or optuna (TPE)",
    "seed": "seed of the searcher",
    "num_samples": "trials to run (each grid combination this many times)",
    "max_concurrent_trials": "trials running at once",
    "max_failures": "retries of a failed trial",
    "trial_resources": "resources of the Tune function itself (its workers ask for their own)",
    "include_base": "run the base config's values of the searched keys as the first trial",
    "scheduler": "asha (default), pbt or fifo, with their settings",
    "overrides": "fixed `key: value` changes to the base job for every trial",
    "report": "more reported metrics for the results table (each trial's largest value)",
    "params": "the searched keys and their distributions",
}
SCHEDULER_KEYS = {
    "asha": {"type", "time_attr", "grace_period", "reduction_factor", "max_t", "brackets"},
    "pbt": {"type", "time_attr", "perturbation_interval", "quantile_fraction",
            "resample_probability", "synch"},
    "fifo": {"type"},
}


class SpaceError(UserError):
    """A space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution.

    Non-scalar choices (lists such as `mining.window`) are searched as their JSON text, since
    Optuna only accepts scalars as categories, and decoded back when a trial builds its config.
    """

    key: str
    dist: str
    values: tuple

    @property
    def encoded(self) -> bool:
        return self.dist in ("choice", "grid") and any(
            isinstance(v, (list, dict)) for v in self.values)

    @property
    def log(self) -> bool:
        return self.dist == "loguniform"

    @property
    def numeric(self) -> bool:
        return self.dist in ("uniform", "loguniform", "randint") or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)

    def domain(self):
        """The Ray Tune search domain."""
        if self.dist == "uniform":
            return tune.uniform(*self.values)
        if self.dist == "loguniform":
            return tune.loguniform(*self.values)
        if self.dist == "randint":
            return tune.randint(self.values[0], self.values[1] + 1)  # Tune's high is exclusive
        values = [self.encode(v) for v in self.values]
        return tune.grid_search(values) if self.dist == "grid" else tune.choice(values)

    def encode(self, value):
        return json.dumps(value) if self.encoded else value

    def decode(self, value):
        return json.loads(value) if self.encoded and isinstance(value, str) else value

    def probes(self) -> list:
        """Values that show whether the schema accepts the whole range: bounds and every choice."""
        return list(self.values)


@dataclass
class SchedulerSpec:
    type: str = "asha"
    time_attr: str = "step"  # the training step (monotonic, survives a trial's restart)
    grace_period: int | None = None  # default: the step of the first dev evaluation
    reduction_factor: float = 2.0
    max_t: int | None = None  # default: train.max_steps (else unbounded)
    brackets: int = 1
    perturbation_interval: float | None = None  # pbt; default: twice the evaluation interval
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    # pbt: perturb only when every trial reached the point (all pause there, so no weak trial
    # runs ahead of the strong ones and skips its exploit for want of their checkpoint)
    synch: bool = False


@dataclass
class SweepSpec:
    source: str  # the space file, for messages
    params: list[Param]
    config: str | None = None
    name: str = "sweep"
    metric: str = "dev_metric"
    mode: str = "max"
    search: str = "random"
    seed: int = 0
    num_samples: int = 8
    max_concurrent_trials: int = 1
    max_failures: int = 1
    trial_resources: dict[str, float] = field(default_factory=lambda: {"cpu": 0.01})
    include_base: bool = False
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    overrides: dict[str, Any] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)

    def param_space(self) -> dict:
        return {p.key: p.domain() for p in self.params}

    def decode(self, config: dict) -> dict:
        """A trial's Tune config -> {config key: value} for the searched keys."""
        return {p.key: p.decode(config[p.key]) for p in self.params if p.key in config}


# PyYAML reads `1e-5` (no dot) as a string; a space means the number
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_number(v):
    return float(v) if isinstance(v, str) and _EXPONENT.fullmatch(v.strip()) else v


def _err(source: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{source}: {key}: {msg}")


def _number(source: str, key: str, v, integer: bool = False) -> float:
    v = _yaml_number(v)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (integer and int(v) != v):
        raise _err(source, key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
    return int(v) if integer else v


def parse_param(source: str, key: str, spec) -> Param:
    where = f"params.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _err(source, where, "expected one distribution, e.g. {uniform: [0.0, 1.0]} or "
                   f"{{choice: [a, b]}}; got {spec!r}")
    dist, values = next(iter(spec.items()))
    if dist not in DISTRIBUTIONS:
        raise _err(source, where, f"unknown distribution {dist!r}; use one of "
                   f"{', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list):
        raise _err(source, where, f"{dist} takes a list, got {values!r}")
    if dist in ("choice", "grid"):
        if not values:
            raise _err(source, where, f"{dist} needs at least one value, got []")
        return Param(key, dist, tuple(_yaml_number(v) for v in values))
    if len(values) != 2:
        raise _err(source, where, f"{dist} takes [low, high], got {values!r}")
    low, high = (_number(source, where, v, integer=dist == "randint") for v in values)
    if dist == "randint" and not low <= high:
        raise _err(source, where, f"randint needs low <= high, got [{low}, {high}]")
    if dist != "randint" and not low < high:
        raise _err(source, where, f"{dist} needs low < high, got [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        raise _err(source, where, f"loguniform needs low > 0, got [{low}, {high}]")
    return Param(key, dist, (low, high))


def _scheduler(source: str, raw) -> SchedulerSpec:
    if raw is None:
        return SchedulerSpec()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise _err(source, "scheduler", f"expected a mapping or a name, got {raw!r}")
    kind = raw.get("type", "asha")
    if kind not in SCHEDULERS:
        raise _err(source, "scheduler.type", f"unknown scheduler {kind!r}; use {', '.join(SCHEDULERS)}")
    unknown = sorted(set(raw) - SCHEDULER_KEYS[kind])
    if unknown:
        raise _err(source, f"scheduler.{unknown[0]}", f"unknown key for scheduler {kind!r}; "
                   f"known: {', '.join(sorted(SCHEDULER_KEYS[kind]))}")
    out = SchedulerSpec(type=kind)
    for k, v in raw.items():
        if k == "type":
            continue
        if k == "time_attr":
            if not isinstance(v, str):
                raise _err(source, "scheduler.time_attr", f"expected a metric name, got {v!r}")
        elif k == "synch":
            if not isinstance(v, bool):
                raise _err(source, "scheduler.synch", f"expected true or false, got {v!r}")
        elif k in ("grace_period", "max_t", "brackets"):
            v = _number(source, f"scheduler.{k}", v, integer=True)
            if v < 1:
                raise _err(source, f"scheduler.{k}", f"must be >= 1, got {v}")
        else:
            v = _number(source, f"scheduler.{k}", v)
            if k == "reduction_factor" and v <= 1:
                raise _err(source, f"scheduler.{k}", f"must be > 1, got {v}")
            if k in ("quantile_fraction", "resample_probability") and not 0 <= v <= (
                    0.5 if k == "quantile_fraction" else 1):
                raise _err(source, f"scheduler.{k}", f"out of range, got {v}")
            if k == "perturbation_interval" and v <= 0:
                raise _err(source, f"scheduler.{k}", f"must be > 0, got {v}")
        setattr(out, k, v)
    if out.grace_period and out.max_t and out.grace_period > out.max_t:
        raise _err(source, "scheduler.grace_period",
                   f"grace_period {out.grace_period} > max_t {out.max_t}")
    return out


def parse_space(raw, source: str) -> SweepSpec:
    """The structure of a space file (distributions, scheduler, counts); keys not yet checked."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _err(source, unknown[0], "unknown key; known: " + ", ".join(TOP_KEYS))
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise _err(source, "params", "needs at least one searched key, e.g. "
                   "`loss.angle_w: {loguniform: [0.005, 1.0]}`")
    spec = SweepSpec(source=source, params=[parse_param(source, str(k), v) for k, v in params.items()])
    spec.name = str(raw.get("name") or Path(source).stem)
    for key in ("config", "metric"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise _err(source, key, f"expected a string, got {raw[key]!r}")
            setattr(spec, key, raw[key])
    choices = {"mode": ("max", "min"), "search": SEARCHERS}
    for key, allowed in choices.items():
        if key in raw:
            if raw[key] not in allowed:
                raise _err(source, key, f"{raw[key]!r} is not one of {', '.join(allowed)}")
            setattr(spec, key, raw[key])
    for key, low in (("seed", 0), ("num_samples", 1), ("max_concurrent_trials", 1),
                     ("max_failures", -1)):
        if key in raw:
            v = _number(source, key, raw[key], integer=True)
            if v < low:
                raise _err(source, key, f"must be >= {low}, got {v}")
            setattr(spec, key, v)
    if "include_base" in raw:
        if not isinstance(raw["include_base"], bool):
            raise _err(source, "include_base", f"expected true or false, got {raw['include_base']!r}")
        spec.include_base = raw["include_base"]
    if "trial_resources" in raw:
        res = raw["trial_resources"]
        if not isinstance(res, dict) or not res:
            raise _err(source, "trial_resources", f"expected a mapping such as {{cpu: 0.01}}, got {res!r}")
        spec.trial_resources = {str(k): _number(source, f"trial_resources.{k}", v)
                                for k, v in res.items()}
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _err(source, "overrides", f"expected `key: value` pairs, got {overrides!r}")
    spec.overrides = {str(k): v for k, v in overrides.items()}
    report = raw.get("report") or []
    if not isinstance(report, list) or not all(isinstance(k, str) and k for k in report):
        raise _err(source, "report", f"expected a list of metric names such as "
                   f"[neg/random_fill], got {report!r}")
    spec.report = list(report)
    spec.scheduler = _scheduler(source, raw.get("scheduler"))
    check_combinations(spec)
    return spec


def check_combinations(spec: SweepSpec) -> None:
    grid = [p.key for p in spec.params if p.dist == "grid"]
    if grid and spec.search == "optuna":
        raise _err(spec.source, f"params.{grid[0]}", "grid is not supported with search: optuna "
                   "(use choice, or search: random)")
    if spec.scheduler.type == "pbt" and grid:
        raise _err(spec.source, f"params.{grid[0]}", "grid cannot be mutated by PBT; use choice")
    if grid and spec.include_base:
        raise _err(spec.source, f"params.{grid[0]}", "include_base cannot be combined with grid "
                   "(the base trial would take the place of a whole grid pass); use choice")
    both = sorted(set(spec.overrides) & {p.key for p in spec.params})
    if both:
        raise _err(spec.source, f"overrides.{both[0]}", "is also a searched key in params")


def load_space(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"space file not found: {path}") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    return parse_space(raw, str(path))


# --- applying values to a job


def with_values(raw: dict, values: dict[str, Any], source: str = "<sweep>"):
    """A copy of the job dict with `values` set, validated into a JobConfig."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        set_key(out, key, value)
    return config_from_dict(out, source)


def check_overrides(spec: SweepSpec, raw: dict) -> None:
    """Each fixed override, applied alone to the base job, must give a valid job."""
    for key, value in spec.overrides.items():
        try:
            with_values(raw, {key: value}, spec.source)
        except ConfigError as err:
            raise _err(spec.source, f"overrides.{key}", _reason(err)) from None


def check_params(spec: SweepSpec, raw: dict) -> None:
    """Every searched key at its bounds and at each of its choices must give a valid job: the
    first that does not is an error naming the space file and the key."""
    for p in spec.params:
        for value in p.probes():
            try:
                with_values(raw, {p.key: value}, spec.source)
            except ConfigError as err:
                raise _err(spec.source, f"params.{p.key}",
                           f"value {value!r} is not valid for the job: {_reason(err)}") from None


def _reason(err: ConfigError) -> str:
    lines = str(err).splitlines()
    return "; ".join(line.strip() for line in lines[1:]) if len(lines) > 1 else lines[0]
