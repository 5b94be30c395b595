"""The optimisation engine of a worker: DeepSpeed (ZeRO 0-3) or plain DDP, one small interface.

    engine = make_engine(model, train_cfg, total_steps, device)
    emb = engine.forward(input_ids, attention_mask)      # all_layers=True: [N, B, H] (ESE)
    engine.backward(loss); engine.step()
    with engine.replay_context(is_last): ...              # GradCache's replayed backward passes
    engine.save(folder); engine.load(folder)

DeepSpeed is called directly (`deepspeed.initialize`), never together with Ray's
`prepare_model`. The optimiser is torch's AdamW (its fused kernel) handed to DeepSpeed as a client
optimiser, so no DeepSpeed CUDA / CPU-Adam kernel has to be compiled on CPU machines.

Precision (`model.dtype`, see `precision_plan`): the parameters that train and the optimiser
state stay fp32 (the master weights); the loss is computed on fp32 embeddings (train_step).
  * torch autocast inside the model's forward, fp32 weights: on CPU, under DDP, and at ZeRO-0.
    (DeepSpeed 0.19's bf16 config casts the whole model to bf16 and at ZeRO-0 updates it with
    bf16 gradients; measured on CPU, its loss drifted from fp32 by 5% in two steps.)
  * DeepSpeed's own bf16 / fp16 config (it casts the model, keeps fp32 master weights in the
    ZeRO optimiser; fp16 with its dynamic loss scaler): on GPU at ZeRO-1..3, and fp16 at any stage.
A bf16 request on a device without native bf16 runs in fp32, with a one-line notice per worker.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from angle_ray.config import TrainConfig
from angle_ray.models.precision import notify_once, resolve_dtype

DS_TAG = "state"


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    w = cfg.warmup_steps
    return round(w * total_steps) if isinstance(w, float) and w < 1 else int(w)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Linear warmup, then linear or cosine decay to 0 (or constant)."""
    warm = warmup_steps(cfg, total_steps)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # torch's fused AdamW kernel (CPU and CUDA) does the update in one pass over each tensor:
    # on MiniLM on two cores the optimiser step falls from ~130 ms (foreach) to ~25 ms.
    # Elsewhere None, not False: False would also turn off torch's foreach default.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=fused or None)


@dataclass(frozen=True)
class Precision:
    """How a worker runs ``model.dtype``: ``dtype`` is what runs (after the device check);
    ``deepspeed_native``: DeepSpeed's bf16/fp16 config does it, else ``autocast_dtype`` does."""

    dtype: str
    deepspeed_native: bool
    notice: str | None = None

    @property
    def autocast_dtype(self) -> str:
        return "fp32" if self.deepspeed_native else self.dtype


def precision_plan(requested: str, cfg: TrainConfig, device: torch.device | str,
                   bf16_ok: bool | None = None) -> Precision:
    """The precision a worker on ``device`` trains in (see the module doc); ``bf16_ok`` overrides
    the device's bf16 detection (None: detect)."""
    device = torch.device(device)
    dtype, notice = resolve_dtype(requested, device, bf16_ok)
    on_gpu_deepspeed = device.type == "cuda" and cfg.strategy == "deepspeed"
    if dtype == "fp16" and not on_gpu_deepspeed:
        # the config refuses this; a TrainConfig built in code gets the same answer here
        raise ValueError("model.dtype=fp16 trains only with train.strategy=deepspeed on a GPU "
                         "(its loss scaler); use model.dtype=bf16")
    native = on_gpu_deepspeed and (dtype == "fp16" or (dtype == "bf16" and cfg.zero_stage >= 1))
    return Precision(dtype=dtype, deepspeed_native=native, notice=notice)


def fp32_master_weights(model: torch.nn.Module, precision: Precision) -> None:
    """Make every parameter that trains fp32 (the master weights); in an fp32 run, every
    parameter (a LoRA base loaded in bf16 would otherwise run emulated bf16 matmuls). A frozen
    LoRA base stays in its load dtype under autocast or DeepSpeed's bf16."""
    for param in model.parameters():
        if param.dtype != torch.float32 and (param.requires_grad or precision.dtype == "fp32"):
            param.data = param.data.float()


def deepspeed_config(cfg: TrainConfig, precision: Precision, on_gpu: bool) -> dict:
    """The DeepSpeed JSON config for a TrainConfig; DeepSpeed's bf16 / fp16 where ``precision``
    (``precision_plan``: on GPU, bf16 at ZeRO-1..3, fp16 at any stage) gives it to DeepSpeed."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 2:
        zero.update({"overlap_comm": on_gpu, "contiguous_gradients": True})
    if cfg.offload and cfg.zero_stage >= 2:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if cfg.offload and cfg.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if cfg.zero_stage == 3:
        # gather the full weights when saving so the exported model is complete
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch AdamW as a client optimiser
        # ZeRO-Offload steps that client AdamW (fused, on the CPU copies) instead of refusing it
        # for DeepSpeedCPUAdam, whose kernel would have to be compiled on every node
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": precision.deepspeed_native and precision.dtype == "bf16"},
        "fp16": {"enabled": precision.deepspeed_native and precision.dtype == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _skip_shm_comm_op() -> None:
    """Keeps DeepSpeed from compiling its shared-memory all-reduce (g++ and ninja, 30-60 s of
    both cores per fresh environment or node; measured 50 s here) when it sets up communication
    on CPU. Only DeepSpeed's inference all-reduce uses that op; training reduces through
    torch.distributed either way. Marking it incompatible is DeepSpeed's own fallback path (the
    one it takes where the op cannot build), not a patch of its code."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine:
    def __init__(self, model, cfg: TrainConfig, total_steps: int, device: torch.device,
                 precision: Precision):
        import deepspeed

        if device.type == "cpu":  # CUDA has no such op; probing for it there costs nvcc calls
            _skip_shm_comm_op()
        self.cfg = cfg
        self.model = model
        self.device = device
        self.precision = precision
        on_gpu = device.type == "cuda"
        schedule = lr_lambda(cfg, total_steps)
        # the scheduler is built on the optimizer DeepSpeed returns (ZeRO wraps the client one)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=_optimizer(model, cfg),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=deepspeed_config(cfg, precision, on_gpu),
            dist_init_required=not dist.is_initialized())

    def forward(self, input_ids, attention_mask, **options):
        # autocast inside the model's forward, not around DeepSpeed's: DeepSpeed 0.19 turns an
        # outer autocast off when its own `torch_autocast` config is off, which it detects with
        # torch.is_autocast_enabled() (the CUDA state: on GPU, bf16 at ZeRO-0 ran fp32)
        return self.engine(input_ids=input_ids, attention_mask=attention_mask,
                           autocast_dtype=self.precision.autocast_dtype, **options)

    def backward(self, loss):
        self.engine.backward(loss)

    def replay_context(self, is_last: bool):
        """GradCache replays several backward passes per micro-batch: only the last may be the
        accumulation boundary (ZeRO-1/2 partition and reduce at the boundary; ZeRO-0 all-reduces
        there), and only if this micro-batch ends an accumulation cycle."""
        ends_cycle = (self.engine.micro_steps + 1) % self.engine.gradient_accumulation_steps() == 0
        self.engine.set_gradient_accumulation_boundary(is_last and ends_cycle)
        return nullcontext()

    def step(self) -> bool:
        """Returns True when this call applied an optimiser update (end of accumulation)."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, folder: str) -> None:
        self.engine.save_checkpoint(folder, tag=DS_TAG)

    def load(self, folder: str) -> None:
        self.engine.load_checkpoint(folder, tag=DS_TAG, load_module_strict=False)

    def fp32_weights(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The trained backbone weights as DeepSpeed's fp32 master copies (on CPU), keyed as in
        ``model.backbone.state_dict()``, where its bf16 / fp16 mode holds the module itself in
        low precision; {} where the module is what trains (fp32). Every rank must call it: under
        ZeRO the masters are partitioned and assembling them is a collective; ``keep=False``
        joins it without holding a full copy (the ranks that do not write the model)."""
        if not self.precision.deepspeed_native:
            return {}
        from deepspeed.utils import safe_get_full_fp32_param

        masters = {}
        for name, param in self.model.backbone.named_parameters():
            if param.requires_grad:
                full = safe_get_full_fp32_param(param)  # None where DeepSpeed keeps no master
                if full is not None and keep:
                    masters[name] = full.detach().cpu()
        return masters

    def full_weights(self):
        """A context in which `self.model`'s parameters are complete (ZeRO-3 gathers them)."""
        if self.cfg.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()),
                                                     modifier_rank=None)
        return nullcontext()

    @property
    def all_ranks_forward_for_eval(self) -> bool:
        return self.cfg.zero_stage == 3  # sharded weights: every rank joins each forward

    @property
    def resumes_on_any_world_size(self) -> bool:
        return self.cfg.zero_stage == 0  # ZeRO-1..3 partition their state by worker count


class DDPEngine:
    """torch DistributedDataParallel with AdamW, warmup schedule, accumulation and clipping."""

    def __init__(self, model, cfg: TrainConfig, total_steps: int, device: torch.device,
                 precision: Precision):
        self.cfg = cfg
        self.model = model
        self.device = device
        self.precision = precision
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
            if dist.is_initialized() and dist.get_world_size() > 1 else model)
        self.optimizer = _optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))
        self.micro = 0

    def forward(self, input_ids, attention_mask, **options):
        return self.ddp(input_ids=input_ids, attention_mask=attention_mask,
                        autocast_dtype=self.precision.autocast_dtype, **options)

    def replay_context(self, is_last: bool):
        """GradCache: all-reduce the gradients once, in the last replayed backward."""
        if is_last or self.ddp is self.model:
            return nullcontext()
        return self.ddp.no_sync()

    def backward(self, loss):
        (loss / self.cfg.grad_accum).backward()

    def step(self) -> bool:
        self.micro += 1
        if self.micro % self.cfg.grad_accum:
            return False
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        if dist.is_initialized() and dist.get_rank() != 0:
            return
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, os.path.join(folder, "ddp_model.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "micro": self.micro},
                   os.path.join(folder, "ddp_optimizer.pt"))

    def load(self, folder: str) -> None:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(os.path.join(folder, "ddp_model.safetensors")))
        # to CPU first: saved from rank 0's GPU, it would otherwise land on GPU 0 in every process
        state = torch.load(os.path.join(folder, "ddp_optimizer.pt"), map_location="cpu",
                           weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro = state["micro"]

    def fp32_weights(self, keep: bool = True) -> dict[str, torch.Tensor]:
        return {}  # the module's own parameters are the fp32 master weights

    def full_weights(self):
        return nullcontext()

    all_ranks_forward_for_eval = False
    resumes_on_any_world_size = True  # rank 0's whole model and optimiser state


def make_engine(model, cfg: TrainConfig, total_steps: int, device: torch.device,
                bf16_ok: bool | None = None):
    """`total_steps` counts micro-batches; the schedule counts optimiser updates. The precision
    is `model.cfg.dtype` as `precision_plan` resolves it for `device` (`bf16_ok`: see there)."""
    total_steps = max(1, -(-total_steps // cfg.grad_accum))
    precision = precision_plan(model.cfg.dtype, cfg, device, bf16_ok)
    notify_once(precision.notice)  # the engine is built once per worker
    fp32_master_weights(model, precision)  # before the optimiser takes the parameters
    if cfg.strategy == "deepspeed":
        return DeepSpeedEngine(model, cfg, total_steps, device, precision)
    return DDPEngine(model, cfg, total_steps, device, precision)


def checkpoint_has_engine_state(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / DS_TAG).is_dir() or (folder / "ddp_model.safetensors").is_file()
