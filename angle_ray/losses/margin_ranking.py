"""Margin ranking over ranked context lists (QA / reranking data): better contexts score higher.

Formula (pairwise hinge ranking, RankNet-style pairs as in Burges et al. 2005; the margin
ranking term of the AnglE design, arXiv:2309.12871)::

    s_i = cos(q, c_i)
    L   = mean over (n, i, j), both valid, with rank_i < rank_j  of  max(0, margin - (s_i - s_j))

Rank 0 is the best context; equal ranks make no pair. Scores are plain cosines, so the margin is
in cosine units (0.1 by default).

Batch layout: ``q`` ``[N, d]``; ``contexts`` ``[N, m, d]`` (m candidates per query, padded);
``ranks`` ``[N, m]`` integers; ``mask`` ``[N, m]`` bool, True for real (non-padding) contexts.

Example::

    loss_fn = MarginRankingLoss(margin=0.1)
    q, ctx, ranks = torch.randn(2, 8), torch.randn(2, 3, 8), torch.tensor([[0, 1, 2], [2, 0, 1]])
    loss = loss_fn(q, ctx, ranks)  # 0-dim tensor
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MarginRankingLoss(nn.Module):
    """Hinge on every correctly ordered pair of contexts of a query; see the module docstring."""

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, q: Tensor, contexts: Tensor, ranks: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        if contexts.dim() != 3 or q.dim() != 2 or contexts.shape[0] != q.shape[0]:
            raise ValueError(
                f"MarginRankingLoss: q {tuple(q.shape)} must be [N, d] and contexts "
                f"{tuple(contexts.shape)} [N, m, d]"
            )
        if ranks.shape != contexts.shape[:2]:
            raise ValueError(
                f"MarginRankingLoss: ranks {tuple(ranks.shape)} must be {tuple(contexts.shape[:2])}"
            )
        ranks = ranks.to(q.device)
        scores = (
            F.normalize(q.float(), dim=-1)[:, None, :] * F.normalize(contexts.float(), dim=-1)
        ).sum(-1)  # [N, m]
        pairs = ranks[:, :, None] < ranks[:, None, :]  # [N, i, j]: i ranked above j
        if mask is not None:
            mask = mask.to(device=q.device, dtype=bool)
            pairs &= mask[:, :, None] & mask[:, None, :]
        if not bool(pairs.any()):
            return scores.sum() * 0.0  # nothing to rank: zero, still in the graph
        diffs = scores[:, :, None] - scores[:, None, :]  # s_i - s_j
        return (self.margin - diffs[pairs]).clamp(min=0).mean()
