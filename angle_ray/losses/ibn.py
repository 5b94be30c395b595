"""In-batch negatives for labelled pairs (Format A): every other text in the batch is a negative.

Formula (the ``ibn`` objective of AnglE, Li & Li 2023, arXiv:2309.12871; InfoNCE over the batch).
All 2N texts are laid out zigzag, ``z = [u_0, v_0, u_1, v_1, ...]``, and compared with each other::

    logits[r, c] = tau * cos(z_r, z_c),   logits[r, r] = -inf
    target(u_i) = v_i, target(v_i) = u_i       only when pair i is positive: y_i >= threshold
    L = mean over rows r that have a target of  -log softmax(logits[r])[target(r)]

"Positive" is an explicit threshold on the label scaled to [0, 1] (``angle_emb`` casts labels to
int, which makes 0.99 a negative). Rows without a target are left out of the mean; ``angle_emb``
counts them in the denominator, which shrinks the loss when a batch has few positives.

Duplicates. The train loop all-gathers embeddings across workers, so one text can appear several
times in a global batch; a copy of a text (or of its target) must not be pushed away as a
negative. ``u_ids`` / ``v_ids`` are content hashes of the texts; when given, a column that is not
the row's target but has the id of the row's own text or of its target is masked out (-inf).

Batch layout: ``u``, ``v`` ``[N, d]``; ``labels`` ``[N]`` scaled to [0, 1]; ids ``[N]`` integers.

Example::

    loss_fn = InBatchNegativesLoss(tau=20.0, threshold=0.5)
    u, v, labels = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([1.0, 0.9, 0.2, 1.0])
    loss = loss_fn(u, v, labels, u_ids=torch.tensor([7, 8, 9, 7]), v_ids=torch.arange(4))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InBatchNegativesLoss(nn.Module):
    """Cross-entropy of each text of a positive pair against all other texts of the batch."""

    def __init__(self, tau: float = 20.0, threshold: float = 0.5) -> None:
        super().__init__()
        self.tau = tau
        self.threshold = threshold

    def forward(
        self,
        u: Tensor,
        v: Tensor,
        labels: Tensor,
        u_ids: Tensor | None = None,
        v_ids: Tensor | None = None,
    ) -> Tensor:
        if u.shape != v.shape or u.dim() != 2:
            raise ValueError(
                f"InBatchNegativesLoss: u {tuple(u.shape)} and v {tuple(v.shape)} must both "
                "be [N, d]"
            )
        n = u.shape[0]
        labels = labels.reshape(-1).to(u.device)
        if labels.numel() != n:
            raise ValueError(f"InBatchNegativesLoss: {n} pairs but {labels.numel()} labels")

        z = torch.stack([u, v], dim=1).reshape(2 * n, -1)  # zigzag u_0, v_0, u_1, v_1, ...
        z = F.normalize(z.float(), dim=-1)
        logits = self.tau * (z @ z.T)

        rows = torch.arange(2 * n, device=u.device)
        target = rows ^ 1  # partner: 0 <-> 1, 2 <-> 3, ...
        masked = torch.eye(2 * n, dtype=torch.bool, device=u.device)
        if (u_ids is None) != (v_ids is None):
            raise ValueError("InBatchNegativesLoss: give both u_ids and v_ids, or neither")
        if u_ids is not None:
            if u_ids.numel() != n or v_ids.numel() != n:
                raise ValueError(
                    f"InBatchNegativesLoss: ids must have {n} entries, got u_ids "
                    f"{tuple(u_ids.shape)} and v_ids {tuple(v_ids.shape)}"
                )
            z_ids = torch.stack([u_ids.reshape(-1), v_ids.reshape(-1)], dim=1).reshape(-1)
            z_ids = z_ids.to(u.device)
            duplicate = (z_ids[None, :] == z_ids[:, None]) | (
                z_ids[None, :] == z_ids[target][:, None]
            )
            duplicate[rows, target] = False  # the target itself stays
            masked |= duplicate
        logits = logits.masked_fill(masked, float("-inf"))

        has_target = (labels >= self.threshold).repeat_interleave(2)
        if not bool(has_target.any()):
            return z.sum() * 0.0  # no positive pair: zero, still in the graph
        # select first, then cross-entropy: a fully masked row never reaches log_softmax
        return F.cross_entropy(logits[has_target], target[has_target])
