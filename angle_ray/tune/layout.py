"""A planned sweep and where its files go: the part every other tune module shares.

The sweep folder holds `sweep.json` (the space and base job it was started with), `tune/`
(Tune's experiment state) and `trials/<trial id>/` (each trial's Train run folder; a PBT trial
that continues from another trial's weights adds `trials/<trial id>-g<n>/`; under PBT each
checkpoint report is built in `.pbt-staging/<trial id>/`, removed once Tune has copied it, and
the folder itself when the sweep ends).
The report (`tune/report.py`) is written beside them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from angle_ray.config import JobConfig, config_from_dict, get_key
from angle_ray.tune.space import SweepSpec, with_values

STATE_FILE = "sweep.json"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
PBT_STAGING_DIR = ".pbt-staging"


@dataclass
class Sweep:
    """A checked sweep: its space, the base job (overrides applied) and its folder."""

    spec: SweepSpec
    job: dict  # JSON-able job dict every trial starts from
    folder: Path

    @property
    def trials_dir(self) -> Path:
        return self.folder / TRIALS_DIR

    @property
    def tune_dir(self) -> Path:
        return self.folder / TUNE_DIR

    @property
    def pbt_staging_dir(self) -> Path:
        return self.folder / PBT_STAGING_DIR

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
        train = cfg.train.model_copy(update={"name": name, "storage_path": str(self.trials_dir)})
        export = cfg.export.model_copy(update={"output_dir": None, "sentence_transformers": False})
        return cfg.model_copy(update={"train": train, "export": export})

    def state(self) -> dict:
        """What `sweep.json` holds: a resumed sweep must match it."""
        return {"spec": json.loads(json.dumps(asdict(self.spec))), "job": self.job}


def first_eval_step(cfg: JobConfig) -> int:
    """The step of a job's first dev evaluation: ASHA's first rung, PBT's checkpoint interval."""
    t = cfg.train
    step = t.eval_every or (t.checkpoint_every if t.eval_on_checkpoint else t.max_steps)
    if step is None:  # only the last step is evaluated and the job sets no max_steps
        return t.checkpoint_every
    return min(step, t.max_steps) if t.max_steps else step
