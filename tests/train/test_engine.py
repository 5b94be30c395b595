"""The engine's schedule and DeepSpeed config, stream picking, and mixed precision: the plan per
device / strategy / ZeRO stage, and bf16 training on real MiniLM and real STS-B pairs with the
real DDP and DeepSpeed ZeRO-0 engines in one process (gloo, world size 1, DeepSpeed on CPU),
its loss tracking fp32 step by step with fp32 master weights and optimiser state."""

import copy
import json
from collections import Counter

import pytest
import torch

from angle_ray.config import LoraConfig, LossConfig, ModelConfig, TrainConfig
from angle_ray.losses import build_loss
from angle_ray.models.backbone import build_model
from angle_ray.train.engine import (
    Precision,
    _optimizer,
    deepspeed_config,
    fp32_master_weights,
    lr_lambda,
    make_engine,
    precision_plan,
    warmup_steps,
)
from angle_ray.train.step import train_step
from angle_ray.train.streams import pick_stream
from tests.train.conftest import format_a_batch

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)  # only named: precision_plan decides, nothing runs on it


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
    ds = deepspeed_config(cfg, precision_plan("bf16", cfg, GPU, bf16_ok=True), on_gpu=True)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    # DeepSpeed's bf16 is for GPUs at ZeRO-1..3: on CPU and at ZeRO-0 autocast runs bf16 instead
    def ds_precision(dtype: str, train: TrainConfig, device) -> dict:
        ds = deepspeed_config(train, precision_plan(dtype, train, device, bf16_ok=True),
                              on_gpu=device.type == "cuda")
        return {key: ds[key]["enabled"] for key in ("bf16", "fp16")}

    assert ds_precision("bf16", cfg, CPU) == {"bf16": False, "fp16": False}
    assert ds_precision("bf16", TrainConfig(zero_stage=0), GPU) == {"bf16": False, "fp16": False}
    assert ds_precision("fp16", TrainConfig(zero_stage=0), GPU) == {"bf16": False, "fp16": True}


def test_optimizer_is_torch_fused_adamw_and_steps_like_the_foreach_kernel():
    model = build_model(ModelConfig(max_length=16))
    cfg = TrainConfig(lr=1e-3, weight_decay=0.01)
    fused = _optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    twin = copy.deepcopy(model)
    twin_params = dict(twin.named_parameters())
    name_of = {p: n for n, p in model.named_parameters()}
    groups = [{"params": [twin_params[name_of[p]] for p in g["params"]],
               "weight_decay": g["weight_decay"]} for g in fused.param_groups]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # LayerNorms and biases: no decay
    foreach = torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        for net, optimizer in ((model, fused), (twin, foreach)):
            for n, p in net.named_parameters():
                p.grad = grads[n].clone()
            optimizer.step()
    for n, p in model.named_parameters():
        assert not torch.equal(p, start[n])  # every tensor was updated
        torch.testing.assert_close(p, twin_params[n], rtol=1e-5, atol=1e-6)


def test_mixed_streams_get_their_weights_share_of_steps():
    picks = [pick_stream(42, step, [3.0, 1.0]) for step in range(4000)]
    share = picks.count(0) / len(picks)
    assert share == pytest.approx(0.75, abs=0.02)
    assert picks == [pick_stream(42, step, [3.0, 1.0]) for step in range(4000)]


# --- mixed precision ---------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "strategy", "zero", "want"), [
    (CPU, "deepspeed", 0, ("bf16", False, "bf16")),  # CPU: always autocast, fp32 weights
    (CPU, "deepspeed", 2, ("bf16", False, "bf16")),
    (CPU, "ddp", 0, ("bf16", False, "bf16")),
    (GPU, "ddp", 0, ("bf16", False, "bf16")),
    (GPU, "deepspeed", 0, ("bf16", False, "bf16")),  # ZeRO-0: DeepSpeed's bf16 would drift
    (GPU, "deepspeed", 1, ("bf16", True, "fp32")),  # ZeRO-1..3: DeepSpeed's bf16, no autocast
    (GPU, "deepspeed", 3, ("bf16", True, "fp32")),
])
def test_precision_plan_autocast_or_deepspeed_bf16(device, strategy, zero, want):
    plan = precision_plan("bf16", TrainConfig(strategy=strategy, zero_stage=zero), device, bf16_ok=True)
    assert (plan.dtype, plan.deepspeed_native, plan.autocast_dtype) == want
    assert plan.notice is None


def test_precision_plan_falls_back_to_fp32_and_fp16_needs_deepspeed_on_gpu():
    plan = precision_plan("bf16", TrainConfig(), CPU, bf16_ok=False)
    assert (plan.dtype, plan.autocast_dtype) == ("fp32", "fp32")
    assert "running in fp32" in plan.notice
    fp16 = precision_plan("fp16", TrainConfig(strategy="deepspeed", zero_stage=0), GPU)
    assert fp16.deepspeed_native and fp16.autocast_dtype == "fp32"  # its loss scaler, never autocast
    with pytest.raises(ValueError, match="loss scaler"):
        precision_plan("fp16", TrainConfig(strategy="ddp"), GPU)


def test_lora_base_stays_low_precision_only_when_it_runs_so(tiny_llm_dir):
    cfg = ModelConfig(name_or_path=tiny_llm_dir, is_llm=True, pooling="last", dtype="bf16",
                      lora=LoraConfig(enabled=True, r=4, alpha=8))
    model = build_model(cfg)  # frozen base in bf16, adapters fp32 (PEFT upcasts them)
    fp32_master_weights(model, Precision("bf16", deepspeed_native=False))
    kinds = Counter((p.dtype, p.requires_grad) for p in model.parameters())
    assert set(kinds) == {(torch.bfloat16, False), (torch.float32, True)}
    fp32_master_weights(model, Precision("fp32", deepspeed_native=False))  # the CPU fallback
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# few steps: a CPU without native bf16 (AVX2 only) emulates bf16 matmuls ~50x slower; 16 pairs
# because CoSENT over 8 pairs jumps from step to step (bf16 then drifts up to 2% at a step)
PAIRS, STEPS = 16, 3


@pytest.fixture(scope="module")
def stsb_batch(data_dir):
    """The first PAIRS real STS-B train pairs as one padded Format A batch (max length 48)."""
    with open(data_dir / "stsb" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(PAIRS), f)]
    return format_a_batch(rows)


def _train_steps(strategy: str, dtype: str, batch, steps: int = STEPS):
    """Losses of STEPS train_steps from the same start (dropout off), the model, the optimiser,
    and the dtype the first query projection computed in."""
    model = build_model(ModelConfig(max_length=48, dtype=dtype)).eval()
    cfg = TrainConfig(strategy=strategy, zero_stage=0, lr=5e-5, warmup_steps=0, batch_size=PAIRS)
    engine = make_engine(model, cfg, steps, CPU, bf16_ok=True)  # bf16 even where emulated
    seen = []
    query = model.backbone.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    loss_fn = build_loss(LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02))
    try:
        losses = [train_step(engine, loss_fn, batch, CPU).loss for _ in range(steps)]
    finally:
        handle.remove()
    return losses, model, engine.optimizer, seen[0]


@pytest.mark.slow  # bf16 matmuls are emulated where the CPU has no native bf16: ~30 s each
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_bf16_training_loss_tracks_fp32_with_fp32_master_weights(gloo_world_of_one, stsb_batch,
                                                                  strategy):
    ref, _, _, ref_matmul = _train_steps(strategy, "fp32", stsb_batch)
    low, model, optimizer, low_matmul = _train_steps(strategy, "bf16", stsb_batch)
    assert (ref_matmul, low_matmul) == (torch.float32, torch.bfloat16)  # autocast really ran
    assert ref[-1] < 0.8 * ref[0] and low[-1] < 0.8 * low[0], (ref, low)  # both really train
    assert ref != low  # a different precision, not the same path
    # tolerance: 1% of the fp32 loss at every step (measured: <= 0.21% with both engines; the
    # DeepSpeed bf16 config at ZeRO-0, bf16 weights and gradients, drifted 5% by step 2)
    for step, (r, b) in enumerate(zip(ref, low), start=1):
        assert abs(b - r) <= 0.01 * r, f"step {step}: fp32 {ref} vs bf16 {low}"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    states = [optimizer.state[p] for p in model.parameters() if p in optimizer.state]
    assert len(states) == sum(1 for _ in model.parameters())  # every parameter stepped
    assert {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}


def test_deepspeed_zero0_keeps_bf16_autocast_where_it_can_see_an_outer_one(
        gloo_world_of_one, stsb_batch, monkeypatch):
    """DeepSpeed's forward switches an outer autocast off (its `torch_autocast` config is off)
    when torch.is_autocast_enabled() -- no device: the CUDA state -- reports one. On CPU that
    question misses the CPU autocast, on a GPU it sees CUDA's: no GPU here, so the question is
    made to see the CPU autocast, as it does on a GPU. The engine's autocast must survive it."""
    real = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled",
                        lambda *device: real(*device) if device else real("cpu"))
    _, _, _, matmul = _train_steps("deepspeed", "bf16", stsb_batch, steps=1)
    assert matmul == torch.bfloat16


@pytest.mark.slow  # DeepSpeed ZeRO-3 on CPU
def test_zero3_offload_trains_with_the_torch_adamw_client_optimiser(gloo_world_of_one, stsb_batch):
    """ZeRO-Offload refuses a client optimiser unless told otherwise (ZeRORuntimeException)."""
    model = build_model(ModelConfig(max_length=48)).eval()
    cfg = TrainConfig(strategy="deepspeed", zero_stage=3, offload=True, lr=5e-5, warmup_steps=0,
                      batch_size=PAIRS)
    engine = make_engine(model, cfg, 3, CPU)
    loss_fn = build_loss(LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02))
    losses = [train_step(engine, loss_fn, stsb_batch, CPU).loss for _ in range(3)]
    assert losses[-1] < losses[0], losses  # the offloaded optimiser really steps


@pytest.mark.slow  # DeepSpeed ZeRO-2/3 on CPU
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_bf16_mode_saves_its_fp32_master_weights(gloo_world_of_one, stsb_batch, tmp_path,
                                                           stage):
    """DeepSpeed's own bf16 mode (GPU, ZeRO-1..3) runs a bf16 copy of the module and keeps the
    fp32 masters in its optimiser: the model folder must hold the masters. The precision plan
    gives that mode to GPUs only; DeepSpeed runs it on CPU too, so it is handed over here."""
    from safetensors.torch import load_file

    from angle_ray.train.checkpoint import write_model_folder
    from angle_ray.train.engine import DeepSpeedEngine

    model = build_model(ModelConfig(max_length=48))
    cfg = TrainConfig(strategy="deepspeed", zero_stage=stage, lr=1e-3, warmup_steps=0,
                      batch_size=PAIRS)
    precision = Precision("bf16", deepspeed_native=True)
    fp32_master_weights(model, precision)
    engine = DeepSpeedEngine(model, cfg, 2, CPU, precision)
    loss_fn = build_loss(LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02))
    for _ in range(2):
        train_step(engine, loss_fn, stsb_batch, CPU)
    name = "encoder.layer.0.attention.self.query.weight"
    live = dict(model.backbone.named_parameters())[name]
    assert live.dtype == torch.bfloat16  # what DeepSpeed runs
    masters = engine.fp32_weights()
    assert set(masters) == {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    write_model_folder(engine, str(tmp_path / "model"), rank=0)
    saved = load_file(tmp_path / "model" / "model.safetensors")[name]
    assert saved.dtype == torch.float32 and torch.equal(saved, masters[name])
    # fp32 values, not bf16 ones widened: most of them have bits below bf16's 8-bit mantissa
    assert (saved != saved.bfloat16().float()).float().mean() > 0.9
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["dtype"] == "float32"  # as written: a plain HF load ("auto") gets fp32 too


def test_deepspeed_on_cpu_starts_without_compiling_its_shared_memory_all_reduce(
        gloo_world_of_one, tmp_path, monkeypatch):
    import deepspeed.comm.comm as ds_comm

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # where a compile would write
    model = build_model(ModelConfig(max_length=16))
    engine = make_engine(model, TrainConfig(strategy="deepspeed", zero_stage=0), 2, CPU)
    assert engine.engine is not None
    assert ds_comm.cdb is not None and ds_comm.cdb.shm_comm_op is None
    assert list(tmp_path.iterdir()) == []
