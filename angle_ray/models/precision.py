"""Mixed precision: which dtype a device can run, and the autocast context that runs it.

    dtype, notice = resolve_dtype(cfg.model.dtype, device)   # "bf16" -> "fp32" where unsupported
    notify_once(notice)                                       # one log line per process
    with autocast(device, dtype):
        emb = model(**batch)                                  # matmuls in bf16, weights fp32
    loss = loss_fn(emb.float(), ...)                          # losses stay in fp32

Autocast leaves the parameters (the fp32 master weights) and the optimiser state as they are:
only the ops autocast lists (matmuls, linear layers) run in the lower precision. bf16 has
fp32's exponent range, so it trains without a loss scaler; fp16 does not (see config.py).

bf16 support: on CUDA, ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and
newer). On CPU, native bf16 arithmetic: the x86 flags ``avx512_bf16`` or ``amx_bf16`` (or the
Arm ``bf16`` feature) in /proc/cpuinfo. torch also runs bf16 on plain AVX-512 or AVX2 CPUs, but
by emulation, slower than fp32, so those count as unsupported and fall back to fp32.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 (AVX-512 / AMX), Arm
CPUINFO = Path("/proc/cpuinfo")
_NOTICES_SHOWN: set[str] = set()  # fallback notices already shown by this process


def cpu_bf16_flags(cpuinfo_text: str) -> set[str]:
    """The native-bf16 flags in a /proc/cpuinfo text (x86 ``flags`` / Arm ``Features`` lines)."""
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found |= CPU_BF16_FLAGS.intersection(value.split())
    return found


def cpu_supports_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when this CPU does bf16 arithmetic natively (no /proc/cpuinfo, e.g. macOS: False)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return bool(cpu_bf16_flags(text))


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"mixed precision is set up for cpu and cuda devices, not {device.type!r}")
    return device


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 natively (CUDA: compute capability >= 8.0)."""
    device = _device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_supports_bf16()


def resolve_dtype(requested: str, device: torch.device | str,
                  bf16_ok: bool | None = None) -> tuple[str, str | None]:
    """The precision to run for a requested ``model.dtype`` on ``device``, and a one-line notice
    when it differs from the request (None when the request stands).

    ``bf16_ok`` overrides the detection (None: detect with ``bf16_supported``).
    fp16 runs on CUDA only: CPU fp16 matmuls are emulated, so it falls back to fp32 there.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"model.dtype={requested!r} is not one of {', '.join(PRECISIONS)}")
    device = _device(device)
    if requested == "bf16":
        ok = bf16_supported(device) if bf16_ok is None else bf16_ok
        if not ok:
            why = ("this GPU has no native bf16 (needs compute capability >= 8.0)"
                   if device.type == "cuda" else
                   "this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag)")
            return "fp32", f"model.dtype=bf16: {why}; running in fp32"
    if requested == "fp16" and device.type != "cuda":
        return "fp32", "model.dtype=fp16: fp16 runs on CUDA only; running in fp32 on cpu"
    return requested, None


def notify_once(notice: str | None) -> bool:
    """Log a ``resolve_dtype`` notice once per process (a training worker, an encoder actor),
    however often the precision is resolved; True when it was logged now."""
    if notice is None or notice in _NOTICES_SHOWN:
        return False
    _NOTICES_SHOWN.add(notice)
    logger.warning(notice)
    return True


def autocast(device: torch.device | str, dtype: str) -> AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device`` (cpu or cuda); a no-op context for fp32.

    Pass the dtype ``resolve_dtype`` returned: this does not check support again.
    """
    device = _device(device)
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(PRECISIONS)}")
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[dtype])
