"""Which device a model in a Ray actor runs on."""

from __future__ import annotations

import torch


def actor_device(gpus: float) -> torch.device:
    """CUDA only when the actor reserved GPUs (``gpus > 0``) and CUDA is there, else CPU.

    ``torch.cuda.is_available()`` alone is not enough: Ray 2.60 no longer hides the GPUs from an
    actor or task that reserved none (no ``CUDA_VISIBLE_DEVICES=""``), so it sees every GPU of
    the node, including those training workers hold."""
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")
