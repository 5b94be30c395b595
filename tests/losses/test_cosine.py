"""CoSENT ranking loss and CosineLoss against values worked out by hand from the formula."""

import math

import pytest
import torch

from angle_ray.losses.cosine import CosineLoss, cosent_ranking_loss

R2 = math.sqrt(2.0)


def test_cosent_ranking_loss_sums_every_pair_with_a_lower_label_first():
    scores = torch.tensor([1.0, 2.0, 0.5])
    labels = torch.tensor([0.0, 1.0, 0.5])
    # ordered pairs (i, j) with y_i < y_j: (0, 1), (0, 2), (2, 1)
    expected = math.log(1 + math.exp(1.0 - 2.0) + math.exp(1.0 - 0.5) + math.exp(0.5 - 2.0))
    assert cosent_ranking_loss(scores, labels).item() == pytest.approx(expected, rel=1e-6)


def test_cosent_pairs_with_equal_labels_contribute_nothing():
    labels = torch.tensor([1.0, 1.0, 0.0])
    # only (2, 0) and (2, 1) are ordered; the two label-1 pairs are never compared
    expected = math.log(1 + math.exp(0.0 - 3.0) + math.exp(0.0 - (-2.0)))
    got = cosent_ranking_loss(torch.tensor([3.0, -2.0, 0.0]), labels)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # moving the scores of the tied pairs relative to each other leaves the loss alone
    swapped = cosent_ranking_loss(torch.tensor([-2.0, 3.0, 0.0]), labels)
    assert swapped.item() == pytest.approx(expected, rel=1e-6)


def test_cosent_pair_order_matters():
    scores = torch.tensor([1.0, 2.0])
    right_order = cosent_ranking_loss(scores, torch.tensor([0.0, 1.0]))
    wrong_order = cosent_ranking_loss(scores, torch.tensor([1.0, 0.0]))
    assert right_order.item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)
    assert wrong_order.item() == pytest.approx(math.log(1 + math.exp(1.0)), rel=1e-6)


def test_cosent_only_label_order_matters_not_label_scale():
    scores = torch.tensor([0.3, -1.0, 2.0])
    a = cosent_ranking_loss(scores, torch.tensor([0.0, 0.5, 1.0]))
    b = cosent_ranking_loss(scores, torch.tensor([0, 3, 5]))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_cosent_without_ordered_pairs_is_zero_and_stays_in_the_graph():
    scores = torch.tensor([0.4, -0.7], requires_grad=True)
    loss = cosent_ranking_loss(scores, torch.tensor([1.0, 1.0]))
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(2))


def test_cosent_is_finite_for_huge_score_gaps():
    scores = torch.tensor([1000.0, -1000.0])
    assert cosent_ranking_loss(scores, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)
    assert cosent_ranking_loss(scores, torch.tensor([0.0, 1.0])).item() == pytest.approx(2000.0)


def test_cosine_loss_matches_hand_value():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    v = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 4.0]])
    labels = torch.tensor([0.5, 0.0, 1.0])
    tau = 2.0
    s = [tau / R2, 0.0, tau * 1.0]  # cosines 1/sqrt2, 0, 1
    # ordered pairs: (1, 0), (1, 2), (0, 2)
    expected = math.log(1 + math.exp(s[1] - s[0]) + math.exp(s[1] - s[2]) + math.exp(s[0] - s[2]))
    got = CosineLoss(tau=tau)(u, v, labels)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_cosine_loss_is_invariant_to_batch_permutation():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7])
    perm = torch.tensor([3, 0, 4, 2, 1])
    loss_fn = CosineLoss()
    assert loss_fn(u[perm], v[perm], labels[perm]).item() == pytest.approx(
        loss_fn(u, v, labels).item(), rel=1e-5
    )


def test_cosine_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        CosineLoss()(torch.randn(2, 4), torch.randn(2, 6), torch.tensor([0.0, 1.0]))
