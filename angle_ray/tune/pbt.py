"""Population Based Training over training runs: trials hand weights over as Tune checkpoints.

PBT copies a strong trial's state into a weak one at perturbation points, so every trial must
report Tune checkpoints. `TuneReportCallback` forwards metrics only (Ray 2.60), so under PBT a
trial's reports take another path: the Train controller puts each dev report (and the path of
the Train checkpoint it came with) on a queue; the Tune function, which runs the training in a
thread beside it, takes them off and calls `tune.report` with a small checkpoint holding the
model folder (weights, no optimiser state) and the step.

An exploited trial restarts with its new values from the donor's weights as a new Train run
(`<trial id>-g<n>`) that trains the steps left; reported steps count on from the donor's step.
Tune's PBT also pauses a strong trial while a weak one is being replaced; it comes back the same
way, from its own last checkpoint. Optimiser state is not handed over and the learning-rate
schedule restarts with each generation (a `constant` schedule suits PBT).
Every dev evaluation is a checkpoint under PBT (`train.checkpoint_every` = the eval interval).
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray import tune
from ray.train import UserCallback
from ray.util.queue import Queue

from angle_ray.train.checkpoint import MODEL_DIR
from angle_ray.train.driver import run_training
from angle_ray.tune.layout import Sweep, first_eval_step

STATE = "pbt_state.json"
MODEL = MODEL_DIR  # the Tune checkpoint keeps the Train checkpoint's model folder name


class QueueReportCallback(UserCallback):
    """In the Train controller: each report with the metric -> the trial's queue."""

    def __init__(self, metric: str, reports, step_offset: int):
        self.metric = metric
        self.reports = reports  # ray.util.queue.Queue
        self.offset = step_offset

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0]) if metrics else {}
        value = m.get(self.metric)
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            return
        for key in ("step", "total_steps"):
            if key in m:
                m[key] += self.offset
        self.reports.put({"metrics": m, "checkpoint": checkpoint.path if checkpoint else None})


def warm_start(trials_dir: Path, trial_id: str, max_steps: int) -> dict | None:
    """The Tune checkpoint this trial was (re)started from, opened once: None on a first start,
    else {"model", "step": donor step, "from_trial": donor, "metrics": donor's metrics}.

    With steps left, its model is unpacked into the next generation's run folder
    (`<trial>-gN/init_model/`, beside `warm_start.json` holding this dict) and "model" names it.
    A checkpoint already at `max_steps` (Tune restarted a trial paused after its last report)
    is not unpacked: "model" is None and no run folder is made."""
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        state = json.loads((Path(folder) / STATE).read_text())
        start = {"model": None, "step": int(state["step"]), "from_trial": state.get("trial_id"),
                 "metrics": state.get("metrics", {})}
        if start["step"] >= max_steps:
            return start
        run_dir = trials_dir / next_run_name(trials_dir, trial_id)
        target = run_dir / "init_model"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(folder) / MODEL, target)
    start["model"] = str(target)
    (run_dir / "warm_start.json").write_text(json.dumps(start))
    return start


def next_run_name(trials_dir: Path, trial_id: str) -> str:
    n = len(list(trials_dir.glob(f"{trial_id}-g*"))) + 1
    return f"{trial_id}-g{n}"


@contextmanager
def staged_checkpoint(folder: Path, model: Path, state: dict) -> Iterator[tune.Checkpoint]:
    """A Tune checkpoint built in `folder` (the model folder and the PBT state), removed after.

    A fixed folder per trial, not a temporary one: Tune kills a trial it pauses or stops, even in
    the middle of a report, and no cleanup runs then; what is left stays in the sweep folder and
    the trial's next report (after it is resumed) clears it first."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(model, folder / MODEL)
    (folder / STATE).write_text(json.dumps(state))
    try:
        yield tune.Checkpoint.from_directory(str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report_with_checkpoints(reports, training: threading.Thread, errors: list, trial_id: str,
                            staging: Path) -> None:
    """In the Tune function's thread: forward the queued reports until the training thread ends."""
    while True:
        try:
            item = reports.get(timeout=1.0)
        except queue.Empty:  # ray.util.queue.Empty subclasses it
            if not training.is_alive() and reports.empty():
                break
            continue
        path = item["checkpoint"]
        if path is None:
            tune.report(item["metrics"])
            continue
        state = {"step": item["metrics"]["step"], "trial_id": trial_id, "metrics": item["metrics"]}
        # tune.report copies the checkpoint into the sweep's storage before it returns
        with staged_checkpoint(staging, Path(path) / MODEL, state) as checkpoint:
            tune.report(item["metrics"], checkpoint=checkpoint)
    training.join()
    if errors:
        raise errors[0]


def run_pbt_trial(sweep: Sweep, values: dict, trial_id: str) -> None:
    """One PBT trial: warm start from the checkpoint Tune hands over, train the steps left."""
    trials_dir = sweep.trials_dir
    cfg = sweep.trial_job(values, name=trial_id)
    if cfg.train.max_steps is None:
        raise ValueError("PBT trials need train.max_steps (steps count on across generations)")
    every = first_eval_step(cfg)
    train = {"checkpoint_every": every, "eval_every": every}
    # exploited (or retried, or resumed): continue from the weights Tune hands over
    start = warm_start(trials_dir, trial_id, cfg.train.max_steps)
    if start is not None:
        if start["model"] is None:
            # restarted from its final checkpoint: one more step would count past the budget
            tune.report(start["metrics"])
            return
        train["name"] = Path(start["model"]).parent.name
        train["max_steps"] = cfg.train.max_steps - start["step"]
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"name_or_path": start["model"]})})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})
    reports = Queue(actor_options={"num_cpus": 0})
    errors: list = []

    def fit():
        try:
            run_training(cfg, callbacks=[QueueReportCallback(sweep.spec.metric, reports,
                                                             start["step"] if start else 0)])
        except Exception as err:  # noqa: BLE001 - re-raised in the Tune function's thread
            errors.append(err)

    training = threading.Thread(target=fit, name="pbt-training", daemon=True)
    training.start()
    try:
        report_with_checkpoints(reports, training, errors, trial_id,
                                staging=sweep.pbt_staging_dir / trial_id)
    finally:
        reports.shutdown()
