import pytest

from angle_ray.config import TrainConfig
from angle_ray.train.engine import deepspeed_config, lr_lambda, warmup_steps
from angle_ray.train.streams import pick_stream


def test_warmup_fraction_and_absolute_steps():
    assert warmup_steps(TrainConfig(warmup_steps=0.1), 200) == 20
    assert warmup_steps(TrainConfig(warmup_steps=15), 200) == 15


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(TrainConfig(warmup_steps=10, schedule="linear"), 110)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0)


def test_cosine_schedule_is_half_at_midpoint():
    f = lr_lambda(TrainConfig(warmup_steps=0, schedule="cosine"), 100)
    assert f(0) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_deepspeed_config_maps_zero_stage_offload_and_precision():
    cfg = TrainConfig(zero_stage=3, offload=True, batch_size=16, grad_accum=2, max_grad_norm=0.5)
    ds = deepspeed_config(cfg, "bf16", on_gpu=True)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    # bf16 is a GPU feature: a CPU run stays fp32
    assert not deepspeed_config(cfg, "bf16", on_gpu=False)["bf16"]["enabled"]


def test_mixed_streams_get_their_weights_share_of_steps():
    picks = [pick_stream(42, step, [3.0, 1.0]) for step in range(4000)]
    share = picks.count(0) / len(picks)
    assert share == pytest.approx(0.75, abs=0.02)
    assert picks == [pick_stream(42, step, [3.0, 1.0]) for step in range(4000)]
