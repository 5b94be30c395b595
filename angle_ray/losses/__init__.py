"""AnglE losses, one per file, and ``build_loss`` that assembles them from a ``LossConfig``.

    loss_fn = build_loss(cfg.loss)            # AnglELoss, or MatryoshkaLoss(AnglELoss) with dims
    total, parts = loss_fn(emb, "A", labels)  # parts: detached value per term, for logging
"""

from __future__ import annotations

from typing import Any

from torch import nn

from angle_ray.losses.angle import AngleDifferenceLoss, angle_scores
from angle_ray.losses.cln import ContrastiveWithNegativesLoss
from angle_ray.losses.combined import AnglELoss
from angle_ray.losses.cosine import CosineLoss, cosent_ranking_loss
from angle_ray.losses.ibn import InBatchNegativesLoss
from angle_ray.losses.margin_ranking import MarginRankingLoss
from angle_ray.losses.matryoshka import MatryoshkaLoss

__all__ = [
    "AnglELoss",
    "AngleDifferenceLoss",
    "ContrastiveWithNegativesLoss",
    "CosineLoss",
    "InBatchNegativesLoss",
    "MarginRankingLoss",
    "MatryoshkaLoss",
    "angle_scores",
    "build_loss",
    "cosent_ranking_loss",
]


def build_loss(loss_cfg: Any) -> nn.Module:
    """``AnglELoss.from_config(loss_cfg)``, wrapped in ``MatryoshkaLoss`` when
    ``loss_cfg.matryoshka_dims`` is non-empty (weights from ``loss_cfg.matryoshka_weights``).

    The margin ranking term (``margin_w``, ``margin``) is part of Format C (the positive ranked
    above each negative); for longer ranked context lists build ``MarginRankingLoss`` directly.
    """
    loss: nn.Module = AnglELoss.from_config(loss_cfg)
    dims = list(getattr(loss_cfg, "matryoshka_dims", None) or [])
    if dims:
        loss = MatryoshkaLoss(loss, dims, getattr(loss_cfg, "matryoshka_weights", None))
    return loss
