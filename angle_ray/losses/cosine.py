"""CoSENT: rank the cosine similarities of labelled pairs in the order of their labels.

Formula (Su, 2022 "CoSENT"; the ``cosine`` objective of AnglE, Li & Li 2023, arXiv:2309.12871)::

    s_i = tau * cos(u_i, v_i)
    L   = log(1 + sum_{(i, j): y_i < y_j} exp(s_i - s_j))

Every ordered pair whose labels say "pair j is more similar than pair i" pushes s_j above s_i.
Pairs with equal labels contribute nothing, and only the order of the labels matters, so labels
may be on any scale (0/1, 0..5, scaled to [0, 1]).

Batch layout: ``u`` and ``v`` are ``[N, d]`` (row i of each is one pair, the two halves of the
zigzag ``[u_0, v_0, u_1, v_1, ...]`` that ``angle_emb`` uses), ``labels`` is ``[N]``.

Example::

    loss_fn = CosineLoss(tau=20.0)
    u, v, labels = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0.0, 0.2, 0.8, 1.0])
    loss = loss_fn(u, v, labels)  # 0-dim tensor
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosent_ranking_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """``log(1 + sum_{y_i < y_j} exp(s_i - s_j))`` over a ``[N]`` score vector.

    Computed as ``logsumexp([0, s_i - s_j for the ordered pairs])``: pairs that are not ordered
    are left out of the sum (no ``-1e12`` filler), so the result is exact and never overflows.
    With no ordered pair at all the result is ``log(1) = 0``, still attached to ``scores``' graph.
    """
    scores = scores.reshape(-1)
    labels = labels.reshape(-1).to(scores.device)
    if scores.shape != labels.shape:
        raise ValueError(
            f"cosent_ranking_loss: {scores.numel()} scores but {labels.numel()} labels"
        )
    ordered = labels[:, None] < labels[None, :]  # [i, j]: y_i < y_j
    diffs = (scores[:, None] - scores[None, :])[ordered]  # s_i - s_j for those pairs only
    return torch.logsumexp(torch.cat([scores.new_zeros(1), diffs]), dim=0)


class CosineLoss(nn.Module):
    """CoSENT on ``tau * cos(u_i, v_i)``; see the module docstring for formula and layout."""

    def __init__(self, tau: float = 20.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
        if u.shape != v.shape:
            raise ValueError(f"CosineLoss: u {tuple(u.shape)} and v {tuple(v.shape)} differ")
        # float32 whatever the training dtype: tau=20 logits lose too much in bf16
        cos = (F.normalize(u.float(), dim=-1) * F.normalize(v.float(), dim=-1)).sum(-1)
        return cosent_ranking_loss(self.tau * cos, labels)
