"""The angle term (`AngleDifferenceLoss`): CoSENT ranking on the angle difference of two
embeddings read as complex vectors.

Formula (AnglE, Li & Li 2023, "AnglE-optimized Text Embeddings", arXiv:2309.12871). Split each
embedding into a real and an imaginary half, ``u = [a; b]`` and ``v = [c; d]``; the complex
quotient ``u / v``, normalised by ``|u| |v|``, is ``((a.c + b.d) + i (b.c - a.d)) / (|u| |v|)``
(element-wise). Its 'sum' pooling over all features, in absolute value, is the score::

    angle(u, v) = | sum(a*c + b*d) / (|u||v|) + sum(b*c - a*d) / (|u||v|) |
    s_i = tau * angle(u_i, v_i)
    L   = log(1 + sum_{(i, j): y_i < y_j} exp(s_i - s_j))     (cosent_ranking_loss)

The score is not symmetric in u and v: swapping them flips the sign of the imaginary term
``b*c - a*d``, so ``angle(u, v) = |R + I|`` while ``angle(v, u) = |R - I|``. As in ``angle_emb``,
the loss is applied to the pair in its given order (``text1 / text2``: v is the denominator).

Batch layout: ``u`` and ``v`` are ``[N, d]`` with d even, ``labels`` is ``[N]``.

Example::

    loss_fn = AngleDifferenceLoss(tau=20.0)
    u, v, labels = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0.0, 0.2, 0.8, 1.0])
    loss = loss_fn(u, v, labels)  # 0-dim tensor
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from angle_ray.losses.cosine import cosent_ranking_loss


def angle_scores(u: Tensor, v: Tensor) -> Tensor:
    """``|sum(a*c + b*d + b*c - a*d)| / (|u||v|)`` per row, for ``u = [a; b]``, ``v = [c; d]``.

    Returns ``[N]`` for ``[N, d]`` inputs. Raises ``ValueError`` if d is odd (no complex halves).
    """
    if u.shape != v.shape:
        raise ValueError(f"angle_scores: u {tuple(u.shape)} and v {tuple(v.shape)} differ")
    dim = u.shape[-1]
    if dim % 2:
        raise ValueError(
            f"angle_scores needs an even embedding size to split into real and imaginary "
            f"halves, got {dim}"
        )
    # dividing by |u||v| is the same as normalising u and v first (and avoids 0/0)
    a, b = F.normalize(u.float(), dim=-1).chunk(2, dim=-1)
    c, d = F.normalize(v.float(), dim=-1).chunk(2, dim=-1)
    re = (a * c + b * d).sum(-1)
    im = (b * c - a * d).sum(-1)
    return (re + im).abs()


class AngleDifferenceLoss(nn.Module):
    """CoSENT on ``tau * angle_scores(u, v)``; see the module docstring."""

    def __init__(self, tau: float = 20.0) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
        return cosent_ranking_loss(self.tau * angle_scores(u, v), labels)
