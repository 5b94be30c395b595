"""The per-worker training loop that Ray Train runs on every worker.

    TorchTrainer(train_loop_per_worker,
                 train_loop_config={"job": job.model_dump(mode="json"), "plan": WorkerPlan(...)})

Reads top to bottom: set up (threads, seeds, device, model, one loss per dataset, engine) ->
resume from the latest checkpoint if there is one -> for each planned step: pick a dataset
(weighted, same choice on every rank), take a batch from this worker's shard (the negatives
feed makes the mined stream's batches Format C), pad it, `train_step` (with the job's teacher,
ESE or GradCache) -> report metrics, dev metric and checkpoints (`Reporter`).

The loop knows nothing of where the rows or negatives come from: it consumes the Ray Data
shards named in the plan (`train_0`, `train_1`, ...) and the versions the feed loads.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray.train
import torch

from angle_ray.config import JobConfig, TrainConfig
from angle_ray.data.collate import pad
from angle_ray.losses import build_loss
from angle_ray.models.backbone import build_model
from angle_ray.train.checkpoint import resume
from angle_ray.train.engine import make_engine
from angle_ray.train.gather import world
from angle_ray.train.negatives_feed import open_negatives_feed
from angle_ray.train.plan import WorkerPlan
from angle_ray.train.reporting import Reporter
from angle_ray.train.step import step_extras, train_step
from angle_ray.train.streams import Streams, pick_stream
from angle_ray.train.worker_logs import quiet_report_log


def _threads(train: TrainConfig) -> int:
    if train.torch_threads:
        return int(train.torch_threads)
    local = max(1, ray.train.get_context().get_local_world_size())
    return max(1, (os.cpu_count() or 1) // local)


def set_up_worker(train: TrainConfig) -> torch.device:
    """Threads, seeds, console and the device of this worker."""
    quiet_report_log()  # no "Reporting training result N" lines on the driver's console
    torch.set_num_threads(_threads(train))
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    if train.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", ray.train.get_context().get_local_rank())
    os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed picks its accelerator on first use
    return torch.device("cpu")


def train_loop_per_worker(config: dict) -> None:
    job = JobConfig.model_validate(config["job"])
    plan: WorkerPlan = config["plan"]
    t = job.train
    rank, _ = world()
    device = set_up_worker(t)
    model = build_model(job.model).to(device)
    model.train()
    losses = [build_loss(job.loss.model_copy(update=s.loss)) for s in plan.streams]
    extras = step_extras(job, model)  # teacher (frozen, beside the engine), ESE, GradCache
    engine = make_engine(model, t, plan.total_steps, device)
    start_step = resume(engine, rank, plan.total_steps)
    streams = Streams(plan.streams, t, rank)
    streams.skip(start_step)
    feed = open_negatives_feed(plan.negatives, job.model)
    reporter = Reporter(job, plan, engine, feed, start_step)
    for step in range(start_step, plan.total_steps):
        i = pick_stream(t.seed, step, streams.weights)
        tokens = streams.next(i)
        if feed is not None:
            feed.advance(step)
            if i == plan.negatives.stream:
                tokens = feed.attach(tokens)
        batch = pad(tokens, plan.pad_id, plan.left_pad)
        started = time.perf_counter()
        result = train_step(engine, losses[i], batch, device, extras)
        reporter.after_step(step + 1, i, result, time.perf_counter() - started)
    if start_step >= plan.total_steps:  # a finished run re-submitted: nothing left to do
        reporter.nothing_left()
