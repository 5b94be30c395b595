"""Angle scores and AngleDifferenceLoss against values worked out by hand."""

import math

import pytest
import torch

from angle_ray.losses.angle import AngleDifferenceLoss, angle_scores

R2 = math.sqrt(2.0)

# u = [a; b] = [1, 2 | 0, 1], v = [c; d] = [2, 0 | 1, 1]; |u| = |v| = sqrt(6), |u||v| = 6
U4 = torch.tensor([[1.0, 2.0, 0.0, 1.0]])
V4 = torch.tensor([[2.0, 0.0, 1.0, 1.0]])


def test_angle_scores_match_hand_value():
    # a.c + b.d = 2 + 1 = 3, b.c - a.d = 0 - 3 = -3  ->  |3/6 - 3/6| = 0
    assert angle_scores(U4, V4).item() == pytest.approx(0.0, abs=1e-7)


def test_angle_scores_are_not_symmetric_in_u_and_v():
    # swapped: a=[2,0], b=[1,1], c=[1,2], d=[0,1]: a.c + b.d = 3, b.c - a.d = 3  ->  6/6 = 1
    assert angle_scores(V4, U4).item() == pytest.approx(1.0, rel=1e-6)
    assert angle_scores(U4, V4).item() != pytest.approx(angle_scores(V4, U4).item())


def test_angle_scores_are_the_sum_pooled_normalised_complex_quotient():
    # per complex component k: u_k * conj(v_k) / (|u||v|) is (u/v)_k * |v|^2 / (|u||v|)
    u = [complex(1.0, 2.0), complex(3.0, -1.0)]
    v = [complex(2.0, 0.5), complex(-1.0, 1.0)]
    norm = math.sqrt(sum(abs(x) ** 2 for x in u)) * math.sqrt(sum(abs(x) ** 2 for x in v))
    w = [x * y.conjugate() / norm for x, y in zip(u, v)]
    expected = abs(sum(z.real + z.imag for z in w))
    u_t = torch.tensor([[x.real for x in u] + [x.imag for x in u]])
    v_t = torch.tensor([[x.real for x in v] + [x.imag for x in v]])
    assert angle_scores(u_t, v_t).item() == pytest.approx(expected, rel=1e-6)


def test_angle_scores_ignore_vector_norms():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert torch.allclose(angle_scores(3 * u, 0.5 * v), angle_scores(u, v), atol=1e-6)


def test_angle_loss_matches_hand_value():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([1.0, 0.0, 0.5])
    # pair 0: a=1,b=0,c=1,d=1: |1/sqrt2 - 1/sqrt2| = 0
    # pair 1: a=1,b=0,c=1,d=0: |1 + 0| = 1
    # pair 2: a=0,b=1,c=1,d=1: |1/sqrt2 + 1/sqrt2| = sqrt2
    tau = 2.0
    s = [0.0, tau * 1.0, tau * R2]
    # ordered pairs (i, j) with y_i < y_j: (1, 0), (1, 2), (2, 0)
    expected = math.log(1 + math.exp(s[1] - s[0]) + math.exp(s[1] - s[2]) + math.exp(s[2] - s[0]))
    assert AngleDifferenceLoss(tau=tau)(u, v, labels).item() == pytest.approx(expected, rel=1e-6)


def test_angle_loss_rejects_odd_dimension():
    with pytest.raises(ValueError, match="even embedding size.*got 3"):
        AngleDifferenceLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.0, 1.0]))
