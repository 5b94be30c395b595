"""The job's extras through Ray Train on 2 workers (slow): GradCache with a self-distillation
teacher under DeepSpeed ZeRO-2 on the tiny LoRA LLM and real STS-B rows (ESE runs with ZeRO-3 in
test_run.py). Gradient equality is tested in one process (test_step_extras.py) and for the
cached step on 2 gloo processes (test_grad_cache.py); this checks the wiring in the worker loop."""

import math

import pytest

from angle_ray.train.driver import run_training
from angle_ray.train.progress import read_metrics
from tests.train.conftest import assert_lora_trained

pytestmark = pytest.mark.slow


def test_grad_cache_with_a_teacher_on_two_zero2_workers(ray_local, tiny_job, tiny_llm_dir):
    cfg = tiny_job(loss={"cosine_w": 1.0, "ibn_w": 1.0, "angle_w": 0.02,
                         "teacher": {"path": tiny_llm_dir, "weight": 0.5}},
                   train={"zero_stage": 2, "num_workers": 2, "max_steps": 4, "log_every": 1,
                          "checkpoint_every": 4, "name": "gc-teacher",
                          "grad_cache": {"enabled": True, "mini_batch_size": 3}})
    run = run_training(cfg)
    rows = [r for r in read_metrics(run.run_dir) if "loss" in r]
    assert int(rows[-1]["step"]) == 4 and int(rows[-1]["world_size"]) == 2
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    teacher = [float(r["loss/teacher"]) for r in rows]
    assert teacher[0] == pytest.approx(0.0, abs=1e-6)  # the adapters start as a no-op: student = teacher
    assert teacher[-1] > 0  # the student moved away from its starting point
    assert_lora_trained(run.model_dir)  # ZeRO-2 over 2 workers trained the adapters
