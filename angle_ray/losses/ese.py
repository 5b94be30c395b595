"""Espresso sentence embeddings (ESE, Li et al. 2024, arXiv:2402.14776; ``loss.ese``): shallow
layers and a k-dimensional prefix of the embedding are trained to work on their own.

With N layers, ``h_l`` the pooled embedding of layer l (``[R, D]``, one row per text of the batch,
all roles stacked), k the compression size and T the KL temperature::

    PCA_k(h)    = h @ (U diag(S)),  U, S from svd_lowrank(softmax(h^T h / sqrt(D)), q=k)   (no grad)
    Align(x, t) = MSE(x, t) + T * KL(softmax(t / T) || softmax(x / T))
    L = L_A(h_N) + L_A(h_N[:, :k]) + Align(h_N[:, :k], PCA_k(h_N))
        + 1/(N-1) * sum_{i=0}^{N-2} [L_A(h_i[:, :k]) + Align(h_i[:, :k], PCA_k(h_i))] / (1 + ln(1 + i))

Conventions:
  * softmax(h^T h / sqrt(D)) is taken over the last dimension (each row of the D x D matrix).
  * MSE is the mean over all R * k entries; KL is ``batchmean`` (summed over the k dimensions,
    averaged over the R rows), as ``losses.distill.kl_rows``. ``PCA_k`` is a constant target.
  * Layer indices: ``layers`` is ``[h_1, ..., h_N]`` from ``models.truncate.pooled_layers``
    (transformer layers only, the embedding layer not counted; each layer's hidden states pooled
    with the model's pooling and attention mask, through the final norm where the model has one,
    so that ``h_l`` is exactly what the model cut to l layers embeds). In the formula's 0-based
    sum, ``h_i`` is ``layers[i]`` (layer i + 1) and ``h_N`` is ``layers[-1]`` (the ordinary
    embedding). N = 1 has no shallow term.
  * ``svd_lowrank`` is randomized: it runs on a generator seeded with ``seed`` (default 0) inside
    ``fork_rng``, so a step's result is reproducible and the global RNG (dropout) is untouched.
  * ``L_A`` is a callable on the stacked rows ``[R, d]`` (the job's AnglE loss after splitting
    the rows back into roles); if it returns a tuple, its first element is the loss.

    ese = EseLoss(compression_size=128, kl_temperature=1.0)
    per_role = [pooled_layers(model, ids, mask) for ids, mask in role_batches]
    total, parts = ese(stack_rows(per_role), rows_loss)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from angle_ray.losses.distill import kl_rows

RowsLoss = Callable[[Tensor], "Tensor | tuple"]


def shallow_layer_weights(num_layers: int) -> list[float]:
    """The weight of shallow layer i = 0..N-2: ``1/(N-1) * 1/(1 + ln(1 + i))``."""
    if num_layers < 2:
        return []
    return [1.0 / (num_layers - 1) / (1.0 + math.log(1.0 + i)) for i in range(num_layers - 1)]


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int):
    """Seed only ``device``'s default generator, restoring the global RNG state afterwards."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        yield


def pca_compress(h: Tensor, k: int, seed: int = 0) -> Tensor:
    """``PCA_k(h) = h @ (U diag(S))`` (see the module docstring); ``[R, k]``, no graph."""
    dim = h.shape[-1]
    if not 0 < k < dim:
        raise ValueError(f"ESE compression_size={k} must be between 1 and the embedding size {dim} - 1")
    with torch.no_grad(), _seeded(h.device, seed):
        h = h.detach().float()
        attn = torch.softmax(h.T @ h / math.sqrt(dim), dim=-1)
        u, s, _ = torch.svd_lowrank(attn, q=k)
        return h @ (u * s)


def align_loss(x: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    """``MSE(x, t) + T * KL(softmax(t / T) || softmax(x / T))``; ``target`` is a constant."""
    target = target.detach().float()
    return F.mse_loss(x.float(), target) + temperature * kl_rows(target, x, temperature)


def stack_rows(per_role: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Per role ``[h_1..h_N]`` -> per layer the roles' rows stacked (role order kept)."""
    return [torch.cat(list(layer), dim=0) for layer in zip(*per_role)]


def _value(result) -> Tensor:
    return result[0] if isinstance(result, tuple) else result


class EseLoss:
    """The ESE objective over ``[h_1, ..., h_N]``; returns ``(total, parts)``.

    ``parts`` (detached): ``full`` L_A(h_N), ``prefix`` L_A(h_N[:, :k]), ``align``
    Align(h_N[:, :k], PCA_k(h_N)), ``shallow`` the weighted sum over the shallow layers.
    """

    def __init__(self, compression_size: int = 128, kl_temperature: float = 1.0, seed: int = 0) -> None:
        self.k = compression_size
        self.temperature = kl_temperature
        self.seed = seed

    def _compressed_terms(self, h: Tensor, loss_fn: RowsLoss) -> tuple[Tensor, Tensor]:
        prefix = h[:, : self.k]
        return _value(loss_fn(prefix)), align_loss(prefix, pca_compress(h, self.k, self.seed),
                                                   self.temperature)

    def __call__(self, layers: Sequence[Tensor], loss_fn: RowsLoss) -> tuple[Tensor, dict[str, Tensor]]:
        if not layers:
            raise ValueError("EseLoss: no layers given")
        last = layers[-1]
        full = _value(loss_fn(last))
        prefix, align = self._compressed_terms(last, loss_fn)
        shallow = last.new_zeros(())
        for h, weight in zip(layers[:-1], shallow_layer_weights(len(layers))):
            lf, al = self._compressed_terms(h, loss_fn)
            shallow = shallow + weight * (lf + al)
        total = full + prefix + align + shallow
        parts = {"full": full, "prefix": prefix, "align": align, "shallow": shallow}
        return total, {name: value.detach() for name, value in parts.items()}
