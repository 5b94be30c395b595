"""What the three pair terms of Format A (CoSENT, angle, in-batch negatives) share: they read
only the directions of the embeddings, and their gradient reaches both sides of every pair."""

import pytest
import torch

from angle_ray.losses.angle import AngleDifferenceLoss
from angle_ray.losses.cosine import CosineLoss
from angle_ray.losses.ibn import InBatchNegativesLoss

PAIR_TERMS = [
    pytest.param(CosineLoss(), torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7]), id="cosine"),
    pytest.param(AngleDifferenceLoss(), torch.tensor([0.0, 0.3, 0.6, 1.0, 0.5]), id="angle"),
    pytest.param(InBatchNegativesLoss(), torch.tensor([1.0, 0.0, 0.8, 0.6, 1.0]), id="ibn"),
]


def _pairs(seed: int, rows: int, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 6, generator=g, requires_grad=requires_grad),
            torch.randn(rows, 6, generator=g, requires_grad=requires_grad))


@pytest.mark.parametrize("loss_fn, labels", PAIR_TERMS)
def test_pair_term_is_invariant_to_embedding_scale(loss_fn, labels):
    u, v = _pairs(0, len(labels))
    loss = loss_fn(u, v, labels)
    assert loss.item() > 0
    assert loss_fn(3 * u, 0.5 * v, labels).item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("loss_fn, labels", PAIR_TERMS)
def test_pair_term_gradient_reaches_both_inputs(loss_fn, labels):
    u, v = _pairs(1, len(labels), requires_grad=True)
    loss_fn(u, v, labels).backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert v.grad is not None and v.grad.abs().sum() > 0
