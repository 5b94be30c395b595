"""Contrastive loss with (hard) negatives for query/positive[/negative] rows (Formats B and C).

Formula (the ``contrastive_with_negative_loss`` of AnglE, Li & Li 2023, arXiv:2309.12871;
InfoNCE / multiple-negatives ranking as in Henderson et al. 2017 and DPR, Karpukhin et al. 2020)::

    candidates = [p_0, ..., p_{N-1}, n_0, ..., n_{M-1}]          (M = N*k, or shared negatives)
    logits[i, j] = tau * cos(q_i, candidates_j)                   [N, N + M]
    L = mean_i  -log softmax(logits[i])[i]

The positives of the other queries and all negatives (of every query) are negatives for query i.

Duplicates. When ids (content hashes of the texts) are given, a candidate j != i whose id equals
``p_ids[i]`` or ``q_ids[i]`` is masked out of row i: a copy of the positive (e.g. the same row
gathered from two workers, or a mined "negative" that is the positive) is never a negative.

Batch layout: ``q``, ``p`` ``[N, d]``; ``n`` ``[N, k, d]`` (k negatives per query, flattened row
by row) or ``[M, d]`` (shared) or ``None``; ids ``[N]``, ``[N]``, ``[N, k]`` / ``[M]``.

Example::

    loss_fn = ContrastiveWithNegativesLoss(tau=20.0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 3, 8)
    loss = loss_fn(q, p, n)  # 0-dim tensor
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ContrastiveWithNegativesLoss(nn.Module):
    """Cross-entropy of each query against its positive, all other positives and all negatives."""

    def __init__(self, tau: float = 20.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(
        self,
        q: Tensor,
        p: Tensor,
        n: Tensor | None = None,
        q_ids: Tensor | None = None,
        p_ids: Tensor | None = None,
        n_ids: Tensor | None = None,
    ) -> Tensor:
        if q.shape != p.shape or q.dim() != 2:
            raise ValueError(
                f"ContrastiveWithNegativesLoss: q {tuple(q.shape)} and p {tuple(p.shape)} must "
                "both be [N, d]"
            )
        num, dim = q.shape
        candidates = p
        if n is not None:
            if n.shape[-1] != dim or n.dim() not in (2, 3) or (n.dim() == 3 and n.shape[0] != num):
                raise ValueError(
                    f"ContrastiveWithNegativesLoss: negatives {tuple(n.shape)} must be "
                    f"[{num}, k, {dim}] or [M, {dim}]"
                )
            candidates = torch.cat([p, n.reshape(-1, dim)], dim=0)

        q_n = F.normalize(q.float(), dim=-1)
        c_n = F.normalize(candidates.float(), dim=-1)
        logits = self.tau * (q_n @ c_n.T)  # [N, N + M]
        target = torch.arange(num, device=q.device)

        if q_ids is not None or p_ids is not None or n_ids is not None:
            logits = logits.masked_fill(self._duplicates(q_ids, p_ids, n_ids, n, target), -torch.inf)
        return F.cross_entropy(logits, target)

    @staticmethod
    def _duplicates(
        q_ids: Tensor | None, p_ids: Tensor | None, n_ids: Tensor | None, n: Tensor | None, target
    ) -> Tensor:
        """``[N, N + M]`` bool: candidate j != i carries the id of q_i or p_i."""
        num = target.numel()
        if q_ids is None or p_ids is None:
            raise ValueError("ContrastiveWithNegativesLoss: give both q_ids and p_ids, or no ids")
        if q_ids.numel() != num or p_ids.numel() != num:
            raise ValueError(
                f"ContrastiveWithNegativesLoss: q_ids {tuple(q_ids.shape)} and p_ids "
                f"{tuple(p_ids.shape)} must have {num} entries"
            )
        cand_ids = p_ids.reshape(-1)
        if n is not None:
            m = n.reshape(-1, n.shape[-1]).shape[0]
            if n_ids is None or n_ids.numel() != m:
                raise ValueError(
                    f"ContrastiveWithNegativesLoss: with ids, n_ids must give one id per negative "
                    f"({m}), got {None if n_ids is None else tuple(n_ids.shape)}"
                )
            cand_ids = torch.cat([cand_ids, n_ids.reshape(-1)])
        elif n_ids is not None:
            raise ValueError("ContrastiveWithNegativesLoss: n_ids given without negatives")
        cand_ids = cand_ids.to(target.device)
        q_ids = q_ids.reshape(-1).to(target.device)
        p_ids = p_ids.reshape(-1).to(target.device)
        dup = (cand_ids[None, :] == p_ids[:, None]) | (cand_ids[None, :] == q_ids[:, None])
        dup[target, target] = False  # the positive itself stays
        return dup
