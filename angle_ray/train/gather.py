"""All-gather across training workers so in-batch negatives span the global batch.

Each worker contributes its own rows with their autograd graph and receives the others' rows
as constants. The gradient of the global loss then flows into each worker's own rows only; the
data-parallel all-reduce averages over workers, so the caller scales its loss by the world
size to get exactly the gradient of one worker holding the whole global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where a tensor must live for a collective: NCCL moves only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_cat(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate `x` from every rank along `dim` (rank order); own slice keeps its grad."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=dim)
