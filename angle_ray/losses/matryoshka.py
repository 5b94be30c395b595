"""Matryoshka modifier: the same loss on several prefixes of the embedding, weighted and summed.

Formula (Matryoshka Representation Learning, Kusupati et al. 2022, arXiv:2205.13147; the
Espresso / 2DMSE line of the AnglE authors, arXiv:2402.14776)::

    L = sum_m  w_m * base(emb[..., :d_m])

Every embedding tensor (queries, positives, ``[N, k, d]`` negatives, ...) is cut to its first
``d_m`` features. The base terms compare cosines, so each prefix is re-normalised by the base
loss itself. The angle term splits the *prefix* into real and imaginary halves, so with
``angle_w > 0`` every dim must be even (checked here, before any compute).

Batch layout: exactly that of the wrapped loss (``AnglELoss.forward``: ``emb`` dict, format,
labels, ids). Components are the base's components keyed ``"<term>@<dim>"`` (e.g. ``ibn@64``).

Example::

    loss_fn = MatryoshkaLoss(AnglELoss(), dims=[384, 128, 64], weights=[1.0, 0.5, 0.25])
    emb = {"query": torch.randn(4, 384), "positive": torch.randn(4, 384)}
    total, parts = loss_fn(emb, "B")  # parts: {"ibn@384": ..., "ibn@128": ..., "ibn@64": ...}
"""

from __future__ import annotations

from torch import Tensor, nn


class MatryoshkaLoss(nn.Module):
    """Weighted sum of ``base`` over truncated embeddings; see the module docstring."""

    def __init__(
        self, base: nn.Module, dims: list[int], weights: list[float] | None = None
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or any(d <= 0 for d in dims):
            raise ValueError(f"MatryoshkaLoss needs a non-empty list of positive dims, got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims):
            raise ValueError(
                f"MatryoshkaLoss: {len(weights)} weights for {len(dims)} dims ({dims})"
            )
        if getattr(base, "angle_w", 0) and any(d % 2 for d in dims):
            raise ValueError(
                f"MatryoshkaLoss: with angle_w > 0 every dim must be even (real and imaginary "
                f"halves), got {dims}"
            )
        self.base = base
        self.dims = dims
        self.weights = weights

    def forward(
        self,
        emb: dict[str, Tensor],
        fmt: str,
        labels: Tensor | None = None,
        ids: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        for dim in self.dims:
            for key, tensor in emb.items():
                if dim > tensor.shape[-1]:
                    raise ValueError(
                        f"matryoshka dim {dim} is larger than the embedding size "
                        f"{tensor.shape[-1]} of {key!r}"
                    )
        total = None
        components: dict[str, Tensor] = {}
        for dim, weight in zip(self.dims, self.weights):
            prefix = {key: tensor[..., :dim] for key, tensor in emb.items()}
            loss, parts = self.base(prefix, fmt, labels, ids)
            total = weight * loss if total is None else total + weight * loss
            components.update({f"{name}@{dim}": value for name, value in parts.items()})
        return total, components
