"""Contrastive loss with negatives against cross-entropies worked out by hand (2-d texts)."""

import math

import pytest
import torch

from angle_ray.losses.cln import ContrastiveWithNegativesLoss

TAU = 2.0
T = TAU / math.sqrt(2.0)  # tau * cos(45 degrees)

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 0 deg, 90 deg
P = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # 45 deg, 90 deg
# two negatives per query: n00 = 180, n01 = -45, n10 = 0, n11 = 135 deg
N = torch.tensor([[[-1.0, 0.0], [1.0, -1.0]], [[1.0, 0.0], [-1.0, 1.0]]])


def ce(target_logit: float, *other_logits: float) -> float:
    return math.log(sum(math.exp(x) for x in (target_logit, *other_logits))) - target_logit


def test_cln_without_negatives_matches_hand_value():
    # row 0: p0 (45 deg) target, p1 (90 deg); row 1: p1 (0 deg) target, p0 (45 deg)
    expected = (ce(T, 0.0) + ce(TAU, T)) / 2
    got = ContrastiveWithNegativesLoss(tau=TAU)(Q, P)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_cln_with_two_negatives_per_query_shares_all_candidates():
    # candidates [p0, p1, n00, n01, n10, n11]
    row0 = ce(T, 0.0, -TAU, T, TAU, -T)  # q0 at 0 deg
    row1 = ce(TAU, T, 0.0, -T, 0.0, T)  # q1 at 90 deg
    got = ContrastiveWithNegativesLoss(tau=TAU)(Q, P, N)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_cln_shared_negatives_equal_per_query_negatives_flattened_row_by_row():
    loss_fn = ContrastiveWithNegativesLoss(tau=TAU)
    assert loss_fn(Q, P, N.reshape(-1, 2)).item() == pytest.approx(
        loss_fn(Q, P, N).item(), rel=1e-6
    )


def test_cln_masks_a_negative_that_is_the_positive_or_the_query():
    # n01 carries p0's id (a mined false negative); n10 carries q0's id (the query itself)
    ids = {
        "q_ids": torch.tensor([10, 11]),
        "p_ids": torch.tensor([20, 21]),
        "n_ids": torch.tensor([[30, 20], [10, 32]]),
    }
    row0 = ce(T, 0.0, -TAU, -T)  # n01 and n10 masked out of row 0
    row1 = ce(TAU, T, 0.0, -T, 0.0, T)  # nothing of row 1's ids appears: unchanged
    got = ContrastiveWithNegativesLoss(tau=TAU)(Q, P, N, **ids)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_cln_masks_a_positive_duplicated_in_another_row():
    # the same (query, positive) row gathered twice: rows 0 and 2 are copies
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    ids = {"q_ids": torch.tensor([1, 2, 1]), "p_ids": torch.tensor([5, 6, 5])}
    without_ids = (ce(T, 0.0, T) + ce(TAU, T, T) + ce(T, T, 0.0)) / 3
    with_ids = (ce(T, 0.0) + ce(TAU, T, T) + ce(T, 0.0)) / 3
    loss_fn = ContrastiveWithNegativesLoss(tau=TAU)
    assert loss_fn(q, p).item() == pytest.approx(without_ids, rel=1e-6)
    assert loss_fn(q, p, **ids).item() == pytest.approx(with_ids, rel=1e-6)


def test_cln_with_ids_needs_one_id_per_negative():
    with pytest.raises(ValueError, match="one id per negative"):
        ContrastiveWithNegativesLoss()(
            Q, P, N, q_ids=torch.tensor([1, 2]), p_ids=torch.tensor([3, 4])
        )


def test_cln_rejects_negatives_of_the_wrong_shape():
    with pytest.raises(ValueError, match="negatives"):
        ContrastiveWithNegativesLoss()(Q, P, torch.randn(3, 2, 2))


def test_cln_is_invariant_to_embedding_scale():
    loss_fn = ContrastiveWithNegativesLoss()
    assert loss_fn(3 * Q, 3 * P, 3 * N).item() == pytest.approx(
        loss_fn(Q, P, N).item(), rel=1e-5
    )


def test_cln_gradient_reaches_queries_positives_and_negatives():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, generator=g, requires_grad=True)
    p = torch.randn(3, 4, generator=g, requires_grad=True)
    n = torch.randn(3, 2, 4, generator=g, requires_grad=True)
    ContrastiveWithNegativesLoss()(q, p, n).backward()
    for t in (q, p, n):
        assert t.grad is not None and t.grad.abs().sum() > 0
