"""What a worker reports after its steps: running averages, dev metric, checkpoints.

`Reporter.after_step` adds each step to a `Window` and, every `train.log_every` steps (losses,
throughput, steps per stream, negatives), every `train.checkpoint_every` steps and at the end
(a checkpoint, with the dev metric when there is a dev set and `train.eval_on_checkpoint`), every
`train.eval_every` steps (dev metric), calls `ray.train.report`. A checkpoint reported without an
evaluation carries dev_metric NaN: Ray Train ranks it below every evaluated one, so the best-dev
export never picks it. The controller side of those reports (live line, metrics.csv,
TensorBoard) is `angle_ray.train.progress`.
"""

from __future__ import annotations

import time

import ray.train

from angle_ray.config import JobConfig
from angle_ray.train.checkpoint import save_and_report
from angle_ray.train.dev_eval import DevEvaluator
from angle_ray.train.gather import world
from angle_ray.train.plan import WorkerPlan
from angle_ray.train.step import StepResult


class Window:
    """Running averages between two reports.

    `samples_per_s` is wall-clock time of the train steps, data waiting included (what a user
    gets); `compute_s` is the part spent in forward/backward/step. Reporting, checkpoints and
    dev evaluation fall outside the window (`restart_clock` after them).
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.n, self.loss, self.parts = 0, 0.0, {}
        self.examples, self.tokens, self.compute = 0, 0, 0.0
        self.restart_clock()

    def restart_clock(self):
        self.started = time.perf_counter()

    def add(self, result: StepResult, seconds: float):
        self.n += 1
        self.loss += result.loss
        for k, v in result.parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        self.examples += result.examples
        self.tokens += result.tokens
        self.compute += seconds

    def flush(self) -> dict:
        n = max(1, self.n)
        wall = max(time.perf_counter() - self.started, 1e-9)
        out = {"loss": self.loss / n, **{f"loss/{k}": v / n for k, v in self.parts.items()},
               "seconds": wall, "compute_s": self.compute,
               "samples_per_s": self.examples / wall, "tokens_per_s": self.tokens / wall}
        self.reset()
        return out


def due(step: int, total: int, t, has_dev: bool) -> tuple[bool, bool, bool]:
    """(logging, checkpointing, evaluating) after `step` of `total` steps, `t` = train config."""
    last = step == total
    logging = step % t.log_every == 0 or last
    checkpointing = step % t.checkpoint_every == 0 or last
    evaluating = has_dev and (last or (checkpointing and t.eval_on_checkpoint)
                              or bool(t.eval_every and step % t.eval_every == 0))
    return logging, checkpointing, evaluating


class Reporter:
    """Decides, after each step, what to report; see the module doc."""

    def __init__(self, job: JobConfig, plan: WorkerPlan, engine, feed, start_step: int):
        self.job, self.plan, self.engine, self.feed = job, plan, engine, feed
        self.rank, self.world_size = world()
        self.start_step = start_step
        self.dev = DevEvaluator(plan.dev, job.eval.batch_size) if plan.dev is not None else None
        self.stream_steps = [0] * len(plan.streams)
        self.window = Window()

    def _metrics(self, step: int, lr: float) -> dict:
        return {"step": step, "total_steps": self.plan.total_steps, "lr": lr,
                "world_size": self.world_size, "resumed_from": self.start_step}

    def after_step(self, step: int, stream: int, result: StepResult, seconds: float) -> None:
        """`step` counts the steps done (1 after the first); `seconds`: the step's compute."""
        t = self.job.train
        self.stream_steps[stream] += 1
        self.window.add(result, seconds)
        last = step == self.plan.total_steps
        logging, checkpointing, evaluating = due(step, self.plan.total_steps, t,
                                                 self.dev is not None)  # `last` implies all three
        if not (logging or checkpointing or evaluating):
            return
        metrics = self._metrics(step, self.engine.lr())
        if logging:
            metrics.update(self.window.flush())
            metrics.update({f"steps/{s.name}": n
                            for s, n in zip(self.plan.streams, self.stream_steps)})
            if self.feed is not None:
                metrics.update(self.feed.metrics(step))
        if evaluating:
            metrics.update(self.dev.run(self.engine, self.rank))
        elif checkpointing and self.dev is not None:
            metrics["dev_metric"] = float("nan")  # the checkpoint ranks last, see the module doc
        if checkpointing:
            save_and_report(self.engine, self.job, step, metrics, self.rank, last)
        else:
            ray.train.report(metrics)
        self.window.restart_clock()  # reporting, checkpoints and dev evaluation are not step time

    def nothing_left(self) -> None:
        """A finished run re-submitted: one report so the run has a result."""
        ray.train.report(self._metrics(self.start_step, 0.0))
