"""Margin ranking over ranked context lists against hinge values worked out by hand."""

import math

import pytest
import torch

from angle_ray.losses.margin_ranking import MarginRankingLoss

R = 1 / math.sqrt(2.0)

# query 0 at 0 deg: contexts at 0, 45, 90 deg -> cosines 1, r, 0
# query 1 at 90 deg: contexts at 0, 90, 45 deg -> cosines 0, 1, r
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
C = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])


def hinge(margin: float, s_better: float, s_worse: float) -> float:
    return max(0.0, margin - (s_better - s_worse))


def test_margin_ranking_matches_hand_value():
    ranks = torch.tensor([[0, 1, 2], [2, 0, 1]])
    m = 1.2
    pairs = [
        hinge(m, 1.0, R), hinge(m, 1.0, 0.0), hinge(m, R, 0.0),  # query 0
        hinge(m, 1.0, 0.0), hinge(m, 1.0, R), hinge(m, R, 0.0),  # query 1: c1 > c2 > c0
    ]  # fmt: skip
    got = MarginRankingLoss(margin=m)(Q, C, ranks)
    assert got.item() == pytest.approx(sum(pairs) / 6, rel=1e-6)


def test_margin_ranking_pairs_already_apart_by_the_margin_cost_nothing():
    ranks = torch.tensor([[0, 1, 2], [2, 0, 1]])
    # margin 0.8: only (c0, c1) and (c1, c2) of query 0 and (c2, c0), (c1, c2) of query 1 bite
    m = 0.8
    pairs = [
        hinge(m, 1.0, R), 0.0, hinge(m, R, 0.0),
        0.0, hinge(m, 1.0, R), hinge(m, R, 0.0),
    ]  # fmt: skip
    assert pairs[1] == 0.0 and hinge(m, 1.0, 0.0) == 0.0
    got = MarginRankingLoss(margin=m)(Q, C, ranks)
    assert got.item() == pytest.approx(sum(pairs) / 6, rel=1e-6)


def test_margin_ranking_mask_drops_padding_contexts_from_every_pair():
    ranks = torch.tensor([[0, 1, 2], [2, 0, 1]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    m = 1.2
    pairs = [hinge(m, 1.0, R), hinge(m, 1.0, 0.0), hinge(m, R, 0.0), hinge(m, 1.0, 0.0)]
    got = MarginRankingLoss(margin=m)(Q, C, ranks, mask)
    assert got.item() == pytest.approx(sum(pairs) / 4, rel=1e-6)


def test_margin_ranking_equal_ranks_make_no_pair():
    ranks = torch.tensor([[0, 0, 1]])
    m = 1.2
    expected = (hinge(m, 1.0, 0.0) + hinge(m, R, 0.0)) / 2
    got = MarginRankingLoss(margin=m)(Q[:1], C[:1], ranks)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_margin_ranking_without_pairs_is_zero_and_stays_in_the_graph():
    q = Q.clone().requires_grad_(True)
    loss = MarginRankingLoss()(q, C, torch.zeros(2, 3, dtype=torch.long))
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert q.grad is not None


def test_margin_ranking_is_invariant_to_embedding_scale():
    ranks = torch.tensor([[0, 1, 2], [2, 0, 1]])
    loss_fn = MarginRankingLoss(margin=1.2)
    assert loss_fn(3 * Q, 3 * C, ranks).item() == pytest.approx(
        loss_fn(Q, C, ranks).item(), rel=1e-6
    )


def test_margin_ranking_gradient_reaches_query_and_contexts():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, generator=g, requires_grad=True)
    c = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    MarginRankingLoss(margin=2.0)(q, c, torch.tensor([[0, 1, 2], [1, 2, 0]])).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert c.grad is not None and c.grad.abs().sum() > 0


def test_margin_ranking_rejects_ranks_of_the_wrong_shape():
    with pytest.raises(ValueError, match="ranks"):
        MarginRankingLoss()(Q, C, torch.tensor([[0, 1], [1, 0]]))
