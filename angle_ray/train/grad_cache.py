"""GradCache (``train.grad_cache``): the gradient of a loss over a batch far larger than one forward
pass fits in memory, exactly (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"; sentence-transformers' Cached MNRL, Tevatron's ``--grad_cache``).

    1. embed the batch in mini-batches of ``mini_batch_size`` rows without a graph, saving each
       mini-batch's RNG state (CPU, and CUDA of the rows' device) before its forward;
    2. compute the loss on the detached embeddings (a leaf with requires_grad): ``loss_fn`` does
       the all-gather across workers, as the uncached step does, so negatives span the global
       batch; take d loss / d embeddings of THIS worker's rows (scaled by ``grad_scale``, the
       world size in data-parallel training: see ``angle_ray.train.gather``);
    3. re-run each mini-batch with its graph under its saved RNG state (the same dropout masks as
       in pass 1) and back-propagate ``sum(embedding * cached_gradient)``, whose gradient with
       respect to the parameters is the mini-batch's share of d loss / d parameters.

The parameter gradients equal those of one forward over the whole batch with the same dropout
masks; the memory is that of one mini-batch's graph plus the [rows, d] embeddings. The price is
a second forward pass.

    result = cached_step(engine.forward, batch.input_ids, batch.attention_mask, rows_loss,
                         mini_batch_size=32, grad_scale=world_size, backward=engine.backward)
    result.loss, result.extras, result.embeddings

``encode(input_ids, attention_mask) -> [b, d]`` embeds a mini-batch; ``loss_fn(rows [R, d]) ->
loss`` (or a tuple whose first element is the loss: ``extras`` holds the rest) sees this worker's
rows in batch order. ``backward(surrogate)`` defaults to ``surrogate.backward()``;
``replay_context(is_last)`` wraps each replayed mini-batch (forward and backward), e.g. DDP's
``no_sync()`` for all but the last one so gradients are all-reduced once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Encode = Callable[[Tensor, Tensor], Tensor]
RowsLoss = Callable[[Tensor], Any]


@dataclass
class RngState:
    """The CPU RNG state, and the CUDA one of ``device`` when it is a GPU, at one moment."""

    device: torch.device
    cpu: Tensor = field(init=False)
    cuda: Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.cpu = torch.get_rng_state()
        if self.device.type == "cuda":
            self.cuda = torch.cuda.get_rng_state(self.device)

    @contextlib.contextmanager
    def replay(self):
        """Run the block from this state; the RNG state outside continues as if it had not run."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class CachedStep:
    loss: Tensor  # detached, unscaled
    extras: tuple  # the rest of loss_fn's tuple (e.g. the loss parts), else ()
    embeddings: Tensor  # this worker's rows [R, d], detached


def _spans(rows: int, size: int) -> list[tuple[int, int]]:
    if size < 1:
        raise ValueError(f"grad_cache mini_batch_size must be >= 1, got {size}")
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def _loss_and_grad(loss_fn: RowsLoss, embeddings: Tensor, grad_scale: float):
    leaf = embeddings.detach().requires_grad_(True)
    result = loss_fn(leaf)
    loss, extras = (result[0], tuple(result[1:])) if isinstance(result, tuple) else (result, ())
    (grad,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    grad = torch.zeros_like(leaf) if grad is None else grad * grad_scale
    return loss.detach(), extras, grad


def cached_step(
    encode: Encode,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_fn: RowsLoss,
    mini_batch_size: int,
    grad_scale: float = 1.0,
    backward: Callable[[Tensor], None] | None = None,
    replay_context: Callable[[bool], contextlib.AbstractContextManager] | None = None,
) -> CachedStep:
    """Accumulate d loss_fn(encode(all rows)) / d parameters into ``.grad``; see the module doc."""
    spans = _spans(input_ids.shape[0], mini_batch_size)
    states, chunks = [], []
    with torch.no_grad():
        for start, end in spans:
            states.append(RngState(input_ids.device))
            chunks.append(encode(input_ids[start:end], attention_mask[start:end]).float())
    embeddings = torch.cat(chunks)
    loss, extras, grad = _loss_and_grad(loss_fn, embeddings, grad_scale)
    run_backward = backward or (lambda surrogate: surrogate.backward())
    for index, ((start, end), state) in enumerate(zip(spans, states)):
        is_last = index == len(spans) - 1
        context = replay_context(is_last) if replay_context else contextlib.nullcontext()
        with context:
            with state.replay():
                emb = encode(input_ids[start:end], attention_mask[start:end]).float()
            run_backward((emb * grad[start:end]).sum())
    return CachedStep(loss=loss, extras=extras, embeddings=embeddings)
