"""When a worker logs, checkpoints and evaluates (`angle_ray.train.reporting.due`), by hand."""

from angle_ray.config import JobConfig, TrainConfig
from angle_ray.train.reporting import due
from angle_ray.tune.layout import first_eval_step


def schedule(total: int, has_dev: bool = True, **train) -> dict[str, list[int]]:
    t = TrainConfig(**train)
    steps = {"log": [], "checkpoint": [], "eval": []}
    for step in range(1, total + 1):
        for name, hit in zip(steps, due(step, total, t, has_dev)):
            if hit:
                steps[name].append(step)
    return steps


def test_dev_metric_at_every_checkpoint_by_default():
    s = schedule(100, log_every=10, checkpoint_every=40, eval_every=25)
    assert s["log"] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert s["checkpoint"] == [40, 80, 100]  # the last step always checkpoints
    assert s["eval"] == [25, 40, 50, 75, 80, 100]


def test_eval_on_checkpoint_false_evaluates_at_eval_every_and_the_last_step_only():
    s = schedule(100, log_every=10, checkpoint_every=20, eval_every=50, eval_on_checkpoint=False)
    assert s["checkpoint"] == [20, 40, 60, 80, 100]
    assert s["eval"] == [50, 100]
    assert schedule(90, checkpoint_every=20, eval_on_checkpoint=False)["eval"] == [90]
    assert schedule(90, has_dev=False, checkpoint_every=20)["eval"] == []


def test_first_eval_step_follows_what_is_evaluated():
    def job(**train):
        return JobConfig(train=TrainConfig(**train))

    assert first_eval_step(job(checkpoint_every=40)) == 40
    assert first_eval_step(job(checkpoint_every=40, eval_every=25, max_steps=20)) == 20
    assert first_eval_step(job(checkpoint_every=40, eval_on_checkpoint=False, max_steps=120)) == 120
    assert first_eval_step(job(checkpoint_every=40, eval_on_checkpoint=False, eval_every=60)) == 60
