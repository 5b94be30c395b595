"""A worker's training batches: which dataset feeds a step, and its batches from this shard.

    streams = Streams(plan.streams, job.train, rank)
    streams.skip(step)                           # after a resume: past what was trained on
    i = pick_stream(seed, step, streams.weights)
    tokens = streams.next(i)                     # a TokenBatch of that dataset's format
"""

from __future__ import annotations

import random

import ray.train

from angle_ray.config import TrainConfig
from angle_ray.data.collate import TokenBatch, length_grouped_batches
from angle_ray.train.plan import StreamPlan


def pick_stream(seed: int, step: int, weights: list[float]) -> int:
    """Which dataset feeds `step`: weighted, reproducible, identical on every rank."""
    if len(weights) == 1:
        return 0
    return random.Random(f"{seed}:{step}").choices(range(len(weights)), weights=weights)[0]


class Streams:
    """This worker's batch iterators, one per training dataset, restarted when exhausted."""

    def __init__(self, plans: list[StreamPlan], train: TrainConfig, rank: int):
        self.plans = plans
        self.train = train
        self.rank = rank
        self.shards = [ray.train.get_dataset_shard(s.name) for s in plans]
        self.iters = [None] * len(self.shards)
        self.restarts = [0] * len(self.shards)

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.plans]

    def _open(self, i: int):
        s, t = self.plans[i], self.train
        seed = t.seed + 7919 * self.restarts[i] + i
        batches = self.shards[i].iter_batches(
            batch_size=t.batch_size * t.group_by_length, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=t.shuffle_buffer or None,
            local_shuffle_seed=seed + self.rank if t.shuffle_buffer else None)
        return length_grouped_batches(batches, s.fmt, s.num_negatives, t.batch_size, seed,
                                      group=t.group_by_length > 1)

    def next(self, i: int) -> TokenBatch:
        if self.iters[i] is None:
            self.iters[i] = self._open(i)
        try:
            return next(self.iters[i])
        except StopIteration:
            self.restarts[i] += 1
            self.iters[i] = self._open(i)
            return next(self.iters[i])

    def skip(self, steps: int) -> None:
        """Move past the batches of the first `steps` steps (what a checkpoint has seen)."""
        for step in range(steps):
            self.next(pick_stream(self.train.seed, step, self.weights))
