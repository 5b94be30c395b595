"""In-batch negatives (Format A) against cross-entropies worked out by hand.

Texts are 2-d so every cosine is 0, +-1 or +-1/sqrt2. The zigzag order is [u0, v0, u1, v1].
"""

import math

import pytest
import torch

from angle_ray.losses.ibn import InBatchNegativesLoss

TAU = 2.0
T = TAU / math.sqrt(2.0)  # tau * cos(45 degrees)

# u0 = 0 deg, v0 = 90 deg, u1 = 45 deg, v1 = 180 deg
U = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
V = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])


def ce(target_logit: float, *other_logits: float) -> float:
    """-log softmax of the target among the unmasked logits of one row."""
    return math.log(sum(math.exp(x) for x in (target_logit, *other_logits))) - target_logit


# one row per text; arguments: target logit, then the other unmasked columns
ROW_U0 = ce(0.0, T, -TAU)  # target v0 (cos 0); u1 (45 deg), v1 (180 deg)
ROW_V0 = ce(0.0, T, 0.0)  # target u0; u1 (45 deg), v1 (90 deg)
ROW_U1 = ce(-T, T, T)  # target v1 (135 deg); u0, v0 (both 45 deg)
ROW_V1 = ce(-T, -TAU, 0.0)  # target u1 (135 deg); u0 (180 deg), v0 (90 deg)


def test_ibn_matches_hand_value_when_every_pair_is_positive():
    got = InBatchNegativesLoss(tau=TAU)(U, V, torch.tensor([1.0, 1.0]))
    assert got.item() == pytest.approx((ROW_U0 + ROW_V0 + ROW_U1 + ROW_V1) / 4, rel=1e-6)


def test_ibn_label_just_below_threshold_gives_no_target():
    got = InBatchNegativesLoss(tau=TAU, threshold=0.5)(U, V, torch.tensor([1.0, 0.49]))
    # pair 1 is a negative: u1 and v1 stay as columns but their rows leave the mean
    assert got.item() == pytest.approx((ROW_U0 + ROW_V0) / 2, rel=1e-6)


def test_ibn_label_at_threshold_is_positive():
    got = InBatchNegativesLoss(tau=TAU, threshold=0.5)(U, V, torch.tensor([0.5, 0.99]))
    # int() casting (angle_emb) would make both pairs negatives
    assert got.item() == pytest.approx((ROW_U0 + ROW_V0 + ROW_U1 + ROW_V1) / 4, rel=1e-6)


def test_ibn_threshold_is_configurable():
    got = InBatchNegativesLoss(tau=TAU, threshold=0.8)(U, V, torch.tensor([0.7, 0.9]))
    assert got.item() == pytest.approx((ROW_U1 + ROW_V1) / 2, rel=1e-6)


def test_ibn_without_positive_pairs_is_zero_and_stays_in_the_graph():
    u = U.clone().requires_grad_(True)
    loss = InBatchNegativesLoss(tau=TAU)(u, V, torch.tensor([0.0, 0.2]))
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert u.grad is not None and torch.equal(u.grad, torch.zeros_like(u))


def test_ibn_duplicate_of_a_text_is_never_its_negative():
    # the same text u gathered twice (e.g. from two workers): u1 == u0, same id
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([1.0, 1.0])
    loss_fn = InBatchNegativesLoss(tau=TAU)
    # cosines: u0.v0 = 0, u0.u1 = 1, u0.v1 = -1, v0.u1 = 0, v0.v1 = 0, u1.v1 = -1
    without_ids = (
        ce(0.0, TAU, -TAU)  # u0 -> v0; u1 is a copy of u0 pushed away at cos 1
        + ce(0.0, 0.0, 0.0)  # v0 -> u0; u1, v1
        + ce(-TAU, TAU, 0.0)  # u1 -> v1; u0 (copy), v0
        + ce(-TAU, -TAU, 0.0)  # v1 -> u1; u0 (copy of the target), v0
    ) / 4
    with_ids = (
        ce(0.0, -TAU)  # u0 -> v0; u1 masked
        + ce(0.0, 0.0)  # v0 -> u0; u1 masked (same id as the target)
        + ce(-TAU, 0.0)  # u1 -> v1; u0 masked
        + ce(-TAU, 0.0)  # v1 -> u1; u0 masked (same id as the target)
    ) / 4
    assert loss_fn(u, v, labels).item() == pytest.approx(without_ids, rel=1e-6)
    got = loss_fn(u, v, labels, u_ids=torch.tensor([7, 7]), v_ids=torch.tensor([8, 9]))
    assert got.item() == pytest.approx(with_ids, rel=1e-6)


def test_ibn_duplicate_of_the_target_text_is_masked():
    # two queries share the same partner text: v1 == v0, same id
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # cosines: u0.v0 = 0, u0.u1 = r, u0.v1 = 0, v0.u1 = r, v0.v1 = 1, u1.v1 = r
    expected = (
        ce(0.0, T)  # u0 -> v0; v1 masked (id of the target)
        + ce(0.0, T)  # v0 -> u0; v1 masked (id of the row's own text)
        + ce(T, T)  # u1 -> v1; v0 masked (id of the target)
        + ce(T, 0.0)  # v1 -> u1; v0 masked (id of the row's own text)
    ) / 4
    got = InBatchNegativesLoss(tau=TAU)(
        u, v, torch.tensor([1.0, 1.0]), u_ids=torch.tensor([1, 2]), v_ids=torch.tensor([5, 5])
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ibn_distinct_ids_leave_the_loss_unchanged():
    labels = torch.tensor([1.0, 1.0])
    loss_fn = InBatchNegativesLoss(tau=TAU)
    plain = loss_fn(U, V, labels)
    with_ids = loss_fn(U, V, labels, u_ids=torch.tensor([1, 2]), v_ids=torch.tensor([3, 4]))
    assert with_ids.item() == pytest.approx(plain.item(), rel=1e-6)


def test_ibn_needs_both_id_tensors_or_neither():
    with pytest.raises(ValueError, match="both u_ids and v_ids"):
        InBatchNegativesLoss()(U, V, torch.tensor([1.0, 1.0]), u_ids=torch.tensor([1, 2]))
