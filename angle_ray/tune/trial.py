"""The Tune trainable: one trial is one full distributed training run.

Ray 2.60 cannot tune a TorchTrainer directly (`Tuner(trainer)` fails), so the trainable is a
function that builds and fits the trainer through `run_training` and passes a
`TuneReportCallback`: the Train controller forwards each dev evaluation to Tune, where ASHA
compares trials (PBT takes another path, `tune/pbt.py`). The function itself reserves almost
no CPU; its workers ask for their own (`train.num_workers` x `train.cpus_per_worker`).
"""

from __future__ import annotations

import math
import os

import ray
from ray import tune
from ray.train.v2._internal import constants as train_constants
from ray.tune.integration.ray_train import TuneReportCallback

from angle_ray.train.driver import run_training
from angle_ray.tune.layout import Sweep
from angle_ray.tune.pbt import run_pbt_trial


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
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    train_constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")


def run_trial(config: dict, sweep: Sweep) -> None:
    """One trial: a full training run with the trial's values.

    The run folder is `trials/<trial id>`: a retried or resumed trial continues from its last
    Train checkpoint instead of starting over.
    """
    name_this_cluster_for_train()
    trial_id = tune.get_context().get_trial_id()
    values = sweep.spec.decode(config)
    if sweep.spec.scheduler.type == "pbt":
        run_pbt_trial(sweep, values, trial_id)
        return
    run_training(sweep.trial_job(values, name=trial_id),
                 callbacks=[MetricReportCallback(sweep.spec.metric)])


def trainable(sweep: Sweep):
    """`run_trial` bound to the sweep, with the trial function's own (small) resources."""
    return tune.with_resources(tune.with_parameters(run_trial, sweep=sweep),
                               sweep.spec.trial_resources)


def trial_dirname(trial) -> str:
    """Tune's folder of a trial is named after its id, like its Train run folder."""
    return trial.trial_id
