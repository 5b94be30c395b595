"""The AnglE objective: a weighted sum of CoSENT, angle, in-batch-negative and contrastive terms.

Formula per data format (AnglE, Li & Li 2023, arXiv:2309.12871; conventions of ``angle_emb``'s
``AngleLoss``, with the fixes listed below)::

    A  (text1, text2, label in [0, 1]):
        cosine_w * CoSENT(t1, t2, y) + ibn_w * IBN(t1, t2, y) + angle_w * Angle(t1, t2, y)
    B  (query, positive):
        ibn_w * CLN(q, p)
    C  (query, positive, k negatives):
        (ibn_w * CLN(q, p) + cln_w * CLN(q, p, n)) / 2
        + angle_w * Angle(pairs) + cosine_w * CoSENT(pairs)
        + margin_w * MarginRanking(q; p ranked above every n_k, by ``margin``)
        where pairs = (q_i, p_i) labelled 1 and (q_i, n_ik) labelled 0, for all k negatives.

Format B has no labelled negatives, so CoSENT and angle (which rank labelled pairs) have nothing
to rank, and ``cln_w`` (explicit negatives) has no negatives: only ``ibn_w`` applies. Unlike
``angle_emb``, B honours that weight. CLN uses ``ibn_tau`` (there is no separate cln scale, as
in ``angle_emb``). A term whose weight is 0 is not computed.

Batch layout (``angle_ray.data.roles.loss_keys``; ``roles.to_loss_layout`` builds it from a
batch's stacked rows): ``emb`` maps role names to embeddings: A ``{"text1", "text2"}`` ``[N, d]``;
B ``{"query", "positive"}`` ``[N, d]``; C adds ``"negative"`` ``[N, k, d]`` (or ``[N, d]`` for
k = 1). ``labels`` ``[N]`` (Format A only). ``ids`` uses the same keys (``[N]`` / ``[N, k]``
content hashes) and reaches the IBN / CLN terms for duplicate masking.

Returns ``(total, components)``; ``components`` holds the detached, unweighted value of each
term that was computed (keys ``cosine``, ``ibn``, ``cln``, ``angle``, ``margin``; in B and C ``ibn`` is
``CLN(q, p)`` without explicit negatives, the term weighted by ``ibn_w``).

Example::

    loss_fn = AnglELoss(cosine_w=0.0, ibn_w=1.0, cln_w=1.0, angle_w=0.02)
    emb = {"text1": torch.randn(4, 8), "text2": torch.randn(4, 8)}
    total, parts = loss_fn(emb, "A", labels=torch.tensor([1.0, 0.0, 0.6, 1.0]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from angle_ray.data.roles import FORMATS, NEGATIVE, POSITIVE, QUERY, TEXT1, TEXT2, loss_keys
from angle_ray.losses.angle import AngleDifferenceLoss
from angle_ray.losses.cln import ContrastiveWithNegativesLoss
from angle_ray.losses.cosine import CosineLoss
from angle_ray.losses.ibn import InBatchNegativesLoss
from angle_ray.losses.margin_ranking import MarginRankingLoss


class AnglELoss(nn.Module):
    """Weighted AnglE objective for Formats A, B and C; see the module docstring."""

    def __init__(
        self,
        cosine_w: float = 0.0,
        ibn_w: float = 1.0,
        cln_w: float = 1.0,
        angle_w: float = 0.02,
        cosine_tau: float = 20.0,
        ibn_tau: float = 20.0,
        angle_tau: float = 20.0,
        ibn_threshold: float = 0.5,
        margin_w: float = 0.0,
        margin: float = 0.1,
    ) -> None:
        super().__init__()
        self.cosine_w = cosine_w
        self.ibn_w = ibn_w
        self.cln_w = cln_w
        self.angle_w = angle_w
        self.cosine = CosineLoss(tau=cosine_tau)
        self.angle = AngleDifferenceLoss(tau=angle_tau)
        self.ibn = InBatchNegativesLoss(tau=ibn_tau, threshold=ibn_threshold)
        self.cln = ContrastiveWithNegativesLoss(tau=ibn_tau)
        self.margin_w = margin_w
        self.margin_rank = MarginRankingLoss(margin=margin)

    @classmethod
    def from_config(cls, loss_cfg: Any) -> AnglELoss:
        """Build from any object with the constructor's attribute names (e.g. ``LossConfig``)."""
        names = (
            "cosine_w", "ibn_w", "cln_w", "angle_w",
            "cosine_tau", "ibn_tau", "angle_tau", "ibn_threshold", "margin_w", "margin",
        )  # fmt: skip
        return cls(**{name: getattr(loss_cfg, name) for name in names})

    def forward(
        self,
        emb: dict[str, Tensor],
        fmt: str,
        labels: Tensor | None = None,
        ids: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if fmt not in FORMATS:
            raise ValueError(f"unknown data format {fmt!r}; expected one of A, B, C")
        missing = [key for key in loss_keys(fmt) if key not in emb]
        if missing:
            raise ValueError(f"Format {fmt} needs embeddings {list(loss_keys(fmt))}; missing {missing}")
        ids = ids or {}
        if fmt == "A":
            terms = self._format_a(emb, labels, ids)
        elif fmt == "B":
            terms = self._format_b(emb, ids)
        else:
            terms = self._format_c(emb, ids)

        total = None
        for weight, value in terms.values():
            total = weight * value if total is None else total + weight * value
        if total is None:  # every weight is 0: a zero that backward() still accepts
            total = sum(t.sum() for t in emb.values()) * 0.0
        return total, {name: value.detach() for name, (_, value) in terms.items()}

    def _format_a(
        self, emb: dict[str, Tensor], labels: Tensor | None, ids: dict[str, Tensor]
    ) -> dict[str, tuple[float, Tensor]]:
        if labels is None:
            raise ValueError("Format A needs labels (scaled to [0, 1])")
        t1, t2 = emb[TEXT1], emb[TEXT2]
        terms = {}
        if self.cosine_w:
            terms["cosine"] = (self.cosine_w, self.cosine(t1, t2, labels))
        if self.ibn_w:
            terms["ibn"] = (
                self.ibn_w,
                self.ibn(t1, t2, labels, u_ids=ids.get(TEXT1), v_ids=ids.get(TEXT2)),
            )
        if self.angle_w:
            terms["angle"] = (self.angle_w, self.angle(t1, t2, labels))
        return terms

    def _format_b(
        self, emb: dict[str, Tensor], ids: dict[str, Tensor]
    ) -> dict[str, tuple[float, Tensor]]:
        if not self.ibn_w:
            return {}
        q, p = emb[QUERY], emb[POSITIVE]
        return {"ibn": (self.ibn_w, self.cln(q, p, None, ids.get(QUERY), ids.get(POSITIVE)))}

    def _format_c(
        self, emb: dict[str, Tensor], ids: dict[str, Tensor]
    ) -> dict[str, tuple[float, Tensor]]:
        q, p, n = emb[QUERY], emb[POSITIVE], emb[NEGATIVE]
        if n.dim() == 2:
            n = n[:, None, :]  # one negative per query
        if n.dim() != 3 or n.shape[0] != q.shape[0]:
            raise ValueError(
                f"Format C negatives must be [N, k, d] with N={q.shape[0]}, got {tuple(n.shape)}"
            )
        q_ids, p_ids, n_ids = ids.get(QUERY), ids.get(POSITIVE), ids.get(NEGATIVE)
        terms = {}
        if self.ibn_w:
            terms["ibn"] = (self.ibn_w / 2, self.cln(q, p, None, q_ids, p_ids))
        if self.cln_w:
            terms["cln"] = (self.cln_w / 2, self.cln(q, p, n, q_ids, p_ids, n_ids))
        if self.angle_w or self.cosine_w:
            num, k, dim = n.shape
            # (q_i, p_i) labelled 1, then (q_i, n_ik) labelled 0 for every k
            u = torch.cat([q, q[:, None, :].expand(num, k, dim).reshape(-1, dim)])
            v = torch.cat([p, n.reshape(-1, dim)])
            pair_labels = torch.cat([q.new_ones(num), q.new_zeros(num * k)])
            if self.angle_w:
                terms["angle"] = (self.angle_w, self.angle(u, v, pair_labels))
            if self.cosine_w:
                terms["cosine"] = (self.cosine_w, self.cosine(u, v, pair_labels))
        if self.margin_w:
            terms["margin"] = (self.margin_w, self._margin_term(q, p, n, p_ids, n_ids))
        return terms

    def _margin_term(self, q: Tensor, p: Tensor, n: Tensor, p_ids: Tensor | None,
                     n_ids: Tensor | None) -> Tensor:
        """The positive (rank 0) above each negative (rank 1); a negative that is a copy of the
        positive (same id) makes no pair."""
        contexts = torch.cat([p[:, None, :], n], dim=1)  # [N, 1 + k, d]
        ranks = torch.ones(contexts.shape[:2], dtype=torch.long, device=q.device)
        ranks[:, 0] = 0
        mask = None
        if p_ids is not None and n_ids is not None:
            n_ids = n_ids.reshape(n.shape[0], -1).to(q.device)
            mask = torch.cat([torch.ones_like(n_ids[:, :1], dtype=torch.bool),
                              n_ids != p_ids.reshape(-1, 1).to(q.device)], dim=1)
        return self.margin_rank(q, contexts, ranks, mask)
