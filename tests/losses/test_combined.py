"""AnglELoss: the weighted combination per data format, and a cross-check with angle_emb's formulas."""

import math

import numpy as np
import pytest
import torch

from angle_ray.config import LossConfig
from angle_ray.losses.angle import AngleDifferenceLoss
from angle_ray.losses.cln import ContrastiveWithNegativesLoss
from angle_ray.losses.combined import AnglELoss
from angle_ray.losses.cosine import CosineLoss
from angle_ray.losses.ibn import InBatchNegativesLoss


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- angle_emb's Format A losses, re-derived in numpy on its zigzag layout -------------------
# y_true is [2N, 1] (each pair's label repeated for both texts), y_pred is [2N, d] zigzag.


def _np_logsumexp(x: np.ndarray, axis=None) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out.squeeze() if axis is None else out.squeeze(axis)


def _np_ranking(y_true: np.ndarray, s: np.ndarray) -> float:
    y = y_true[::2, 0]
    ordered = (y[:, None] < y[None, :]).astype(np.float64)
    diff = s[:, None] - s[None, :] - (1.0 - ordered) * 1e12
    return float(_np_logsumexp(np.concatenate([[0.0], diff.reshape(-1)])))


def ref_cosine_loss(y_true: np.ndarray, y_pred: np.ndarray, tau: float) -> float:
    yp = y_pred / np.linalg.norm(y_pred, axis=1, keepdims=True)
    return _np_ranking(y_true, np.sum(yp[::2] * yp[1::2], axis=1) * tau)


def ref_angle_loss(y_true: np.ndarray, y_pred: np.ndarray, tau: float) -> float:
    re, im = np.split(y_pred, 2, axis=1)
    a, b, c, d = re[::2], im[::2], re[1::2], im[1::2]
    z = np.sum(c**2 + d**2, axis=1, keepdims=True)
    q_re = (a * c + b * d) / z
    q_im = (b * c - a * d) / z
    dz = np.sqrt(np.sum(a**2 + b**2, axis=1, keepdims=True))
    dw = np.sqrt(np.sum(c**2 + d**2, axis=1, keepdims=True))
    q_re, q_im = q_re / (dz / dw), q_im / (dz / dw)
    s = np.abs(np.sum(np.concatenate([q_re, q_im], axis=1), axis=1)) * tau
    return _np_ranking(y_true, s)


def ref_in_batch_negative_loss(y_true: np.ndarray, y_pred: np.ndarray, tau: float) -> float:
    n2 = y_pred.shape[0]
    y = y_true[:, 0].astype(int)  # angle_emb casts the labels to int
    idx = np.arange(n2)
    partner = idx + 1 - idx % 2 * 2
    target = (idx[None, :] == partner[:, None]) & (y[:, None] == 1) & (y[None, :] == 1)
    yp = y_pred / np.linalg.norm(y_pred, axis=1, keepdims=True)
    sim = (yp @ yp.T - np.eye(n2) * 1e12) * tau
    log_p = sim - _np_logsumexp(sim, axis=1)[:, None]
    return float(np.mean(-np.sum(target * log_p, axis=1)))  # mean over all 2N rows


def test_format_a_agrees_with_angle_emb_reference_on_binary_labels():
    t1, t2 = randn(4, 6, seed=0), randn(4, 6, seed=1)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0])
    y_pred = torch.stack([t1, t2], dim=1).reshape(8, 6).double().numpy()
    y_true = labels.repeat_interleave(2)[:, None].double().numpy()
    loss_fn = AnglELoss(cosine_w=0.5, ibn_w=1.0, angle_w=0.02)
    total, parts = loss_fn({"text1": t1, "text2": t2}, "A", labels)

    cos_ref = ref_cosine_loss(y_true, y_pred, 20.0)
    angle_ref = ref_angle_loss(y_true, y_pred, 20.0)
    ibn_ref = ref_in_batch_negative_loss(y_true, y_pred, 20.0)
    assert parts["cosine"].item() == pytest.approx(cos_ref, rel=1e-4)
    assert parts["angle"].item() == pytest.approx(angle_ref, rel=1e-4)
    # deliberate difference: our IBN averages over the 6 rows that have a target,
    # angle_emb over all 8 rows (the 2 rows of the negative pair add 0 to its sum)
    ibn_ours = ibn_ref * 8 / 6
    assert parts["ibn"].item() == pytest.approx(ibn_ours, rel=1e-4)
    expected = 0.5 * cos_ref + 1.0 * ibn_ours + 0.02 * angle_ref
    assert total.item() == pytest.approx(expected, rel=1e-4)


def test_format_a_ibn_equals_angle_emb_reference_when_every_pair_is_positive():
    t1, t2 = randn(3, 4, seed=2), randn(3, 4, seed=3)
    labels = torch.ones(3)
    y_pred = torch.stack([t1, t2], dim=1).reshape(6, 4).double().numpy()
    y_true = np.ones((6, 1))
    _, parts = AnglELoss()({"text1": t1, "text2": t2}, "A", labels)
    assert parts["ibn"].item() == pytest.approx(
        ref_in_batch_negative_loss(y_true, y_pred, 20.0), rel=1e-4
    )


# --- Format A -------------------------------------------------------------------------------


def test_format_a_is_the_weighted_sum_of_cosine_ibn_and_angle():
    t1, t2 = randn(4, 6, seed=4), randn(4, 6, seed=5)
    labels = torch.tensor([0.9, 0.1, 0.6, 0.3])
    loss_fn = AnglELoss(cosine_w=0.3, ibn_w=2.0, angle_w=0.5, cosine_tau=10.0, ibn_tau=5.0,
                        angle_tau=15.0, ibn_threshold=0.55)  # fmt: skip
    total, parts = loss_fn({"text1": t1, "text2": t2}, "A", labels)
    cos = CosineLoss(tau=10.0)(t1, t2, labels)
    ibn = InBatchNegativesLoss(tau=5.0, threshold=0.55)(t1, t2, labels)
    ang = AngleDifferenceLoss(tau=15.0)(t1, t2, labels)
    assert total.item() == pytest.approx((0.3 * cos + 2.0 * ibn + 0.5 * ang).item(), rel=1e-6)
    assert set(parts) == {"cosine", "ibn", "angle"}
    assert parts["ibn"].item() == pytest.approx(ibn.item(), rel=1e-6)


def test_format_a_skips_terms_whose_weight_is_zero():
    t1, t2 = randn(3, 4, seed=6), randn(3, 4, seed=7)
    _, parts = AnglELoss(cosine_w=0.0, ibn_w=1.0, angle_w=0.0)(
        {"text1": t1, "text2": t2}, "A", torch.tensor([1.0, 0.0, 1.0])
    )
    assert set(parts) == {"ibn"}


def test_format_a_passes_ids_to_in_batch_negatives():
    t1, t2 = randn(3, 4, seed=8), randn(3, 4, seed=9)
    labels = torch.tensor([1.0, 1.0, 0.7])
    ids = {"text1": torch.tensor([1, 1, 2]), "text2": torch.tensor([3, 4, 5])}
    _, parts = AnglELoss(angle_w=0.0)({"text1": t1, "text2": t2}, "A", labels, ids)
    expected = InBatchNegativesLoss()(t1, t2, labels, u_ids=ids["text1"], v_ids=ids["text2"])
    assert parts["ibn"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(InBatchNegativesLoss()(t1, t2, labels).item())


def test_format_a_needs_labels():
    with pytest.raises(ValueError, match="Format A needs labels"):
        AnglELoss()({"text1": randn(2, 4, seed=0), "text2": randn(2, 4, seed=1)}, "A")


# --- Format B -------------------------------------------------------------------------------


def test_format_b_is_ibn_w_times_cln_without_negatives():
    q, p = randn(4, 6, seed=10), randn(4, 6, seed=11)
    total, parts = AnglELoss(ibn_w=0.7, ibn_tau=8.0)({"query": q, "positive": p}, "B")
    expected = 0.7 * ContrastiveWithNegativesLoss(tau=8.0)(q, p)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"ibn"}


def test_format_b_doubling_ibn_w_doubles_the_loss():
    emb = {"query": randn(4, 6, seed=12), "positive": randn(4, 6, seed=13)}
    one, _ = AnglELoss(ibn_w=1.0)(emb, "B")
    two, _ = AnglELoss(ibn_w=2.0)(emb, "B")
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)


def test_format_b_ignores_cosine_angle_and_cln_weights():
    emb = {"query": randn(4, 6, seed=14), "positive": randn(4, 6, seed=15)}
    base, _ = AnglELoss(cosine_w=0.0, cln_w=0.0, angle_w=0.0)(emb, "B")
    other, _ = AnglELoss(cosine_w=3.0, cln_w=5.0, angle_w=1.0)(emb, "B")
    assert other.item() == pytest.approx(base.item(), rel=1e-6)


def test_format_b_with_zero_ibn_w_is_zero_and_stays_in_the_graph():
    q = randn(3, 4, seed=16).requires_grad_(True)
    total, parts = AnglELoss(ibn_w=0.0)({"query": q, "positive": randn(3, 4, seed=17)}, "B")
    assert total.item() == 0.0 and parts == {}
    total.backward()
    assert q.grad is not None


# --- Format C -------------------------------------------------------------------------------


def test_format_c_is_the_weighted_sum_of_its_parts():
    q, p, n = randn(3, 6, seed=18), randn(3, 6, seed=19), randn(3, 2, 6, seed=20)
    loss_fn = AnglELoss(cosine_w=0.4, ibn_w=1.5, cln_w=0.5, angle_w=0.2, ibn_tau=10.0)
    total, parts = loss_fn({"query": q, "positive": p, "negative": n}, "C")

    cln = ContrastiveWithNegativesLoss(tau=10.0)
    # pairs: (q_i, p_i) labelled 1, then (q_i, n_i0), (q_i, n_i1) labelled 0
    u = torch.cat([q, q[:, None].expand(3, 2, 6).reshape(6, 6)])
    v = torch.cat([p, n.reshape(6, 6)])
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    expected = (
        (1.5 * cln(q, p) + 0.5 * cln(q, p, n)) / 2
        + 0.2 * AngleDifferenceLoss()(u, v, labels)
        + 0.4 * CosineLoss()(u, v, labels)
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"ibn", "cln", "angle", "cosine"}
    from_parts = (1.5 * parts["ibn"] + 0.5 * parts["cln"]) / 2 + 0.2 * parts["angle"] + (
        0.4 * parts["cosine"]
    )
    assert total.item() == pytest.approx(from_parts.item(), rel=1e-6)


def test_format_c_angle_term_ranks_every_negative_below_the_positive():
    # one query, two negatives, 2-d: angle(q, p) = 1, angle(q, n0) = 0, angle(q, n1) = 1
    emb = {
        "query": torch.tensor([[1.0, 0.0]]),
        "positive": torch.tensor([[1.0, 0.0]]),
        "negative": torch.tensor([[[1.0, 1.0], [0.0, 1.0]]]),
    }
    tau = 2.0
    total, _ = AnglELoss(ibn_w=0.0, cln_w=0.0, angle_w=1.0, angle_tau=tau)(emb, "C")
    # pairs (n0, p) and (n1, p) with label 0 < 1: exp(0 - tau) + exp(tau - tau)
    assert total.item() == pytest.approx(math.log(1 + math.exp(-tau) + 1.0), rel=1e-6)


def test_format_c_accepts_one_negative_per_query_as_a_matrix():
    q, p, n = randn(3, 4, seed=21), randn(3, 4, seed=22), randn(3, 4, seed=23)
    loss_fn = AnglELoss(cosine_w=0.1)
    flat, _ = loss_fn({"query": q, "positive": p, "negative": n}, "C")
    stacked, _ = loss_fn({"query": q, "positive": p, "negative": n[:, None]}, "C")
    assert flat.item() == pytest.approx(stacked.item(), rel=1e-6)


def test_format_c_passes_ids_to_both_contrastive_terms():
    q, n = randn(2, 4, seed=24), randn(2, 2, 4, seed=26)
    p = q + 0.3 * randn(2, 4, seed=25)  # positives close to their queries
    n[0, 0] = p[0]  # a mined negative that is really the positive
    ids = {
        "query": torch.tensor([1, 2]),
        "positive": torch.tensor([3, 4]),
        "negative": torch.tensor([[3, 5], [6, 7]]),  # n00 is a copy of p0
    }
    _, parts = AnglELoss(angle_w=0.0)({"query": q, "positive": p, "negative": n}, "C", ids=ids)
    cln = ContrastiveWithNegativesLoss()
    assert parts["cln"].item() == pytest.approx(
        cln(q, p, n, ids["query"], ids["positive"], ids["negative"]).item(), rel=1e-6
    )
    assert parts["cln"].item() != pytest.approx(cln(q, p, n).item())


# --- all formats ----------------------------------------------------------------------------


def test_unknown_format_is_rejected_by_name():
    with pytest.raises(ValueError, match="'D'"):
        AnglELoss()({"query": randn(2, 4, seed=0)}, "D")


def test_missing_embedding_key_is_rejected_by_name():
    with pytest.raises(ValueError, match="negative"):
        AnglELoss()({"query": randn(2, 4, seed=0), "positive": randn(2, 4, seed=1)}, "C")


def test_from_config_reads_the_loss_section_of_a_job_config():
    cfg = LossConfig(cosine_w=0.1, ibn_w=0.2, cln_w=0.3, angle_w=0.4, cosine_tau=5.0,
                     ibn_tau=6.0, angle_tau=7.0, ibn_threshold=0.8)  # fmt: skip
    loss_fn = AnglELoss.from_config(cfg)
    assert (loss_fn.cosine_w, loss_fn.ibn_w, loss_fn.cln_w, loss_fn.angle_w) == (0.1, 0.2, 0.3, 0.4)
    assert (loss_fn.cosine.tau, loss_fn.ibn.tau, loss_fn.cln.tau, loss_fn.angle.tau) == (
        5.0, 6.0, 6.0, 7.0,
    )  # fmt: skip
    assert loss_fn.ibn.threshold == 0.8


def test_components_are_detached_and_total_carries_the_gradient():
    t1 = randn(3, 4, seed=27).requires_grad_(True)
    total, parts = AnglELoss(cosine_w=1.0)(
        {"text1": t1, "text2": randn(3, 4, seed=28)}, "A", torch.tensor([1.0, 0.0, 0.5])
    )
    assert all(not v.requires_grad for v in parts.values())
    total.backward()
    assert t1.grad is not None and t1.grad.abs().sum() > 0


def test_combined_loss_is_invariant_to_embedding_scale():
    q, p, n = randn(3, 4, seed=29), randn(3, 4, seed=30), randn(3, 2, 4, seed=31)
    loss_fn = AnglELoss(cosine_w=0.5)
    a, _ = loss_fn({"query": q, "positive": p, "negative": n}, "C")
    b, _ = loss_fn({"query": 3 * q, "positive": 3 * p, "negative": 3 * n}, "C")
    assert b.item() == pytest.approx(a.item(), rel=1e-5)


def test_bf16_embeddings_get_a_float32_loss_and_bf16_gradients():
    t1 = randn(3, 8, seed=32).bfloat16().requires_grad_(True)
    t2 = randn(3, 8, seed=33).bfloat16()
    labels = torch.tensor([1.0, 0.0, 0.6])
    total, _ = AnglELoss(cosine_w=1.0)({"text1": t1, "text2": t2}, "A", labels)
    reference, _ = AnglELoss(cosine_w=1.0)({"text1": t1.float(), "text2": t2.float()}, "A", labels)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(reference.item(), rel=1e-5)
    total.backward()
    assert t1.grad.dtype == torch.bfloat16 and t1.grad.abs().sum() > 0


# --- Format C margin ranking (QA hard examples) ---------------------------------------------


def test_format_c_margin_term_is_the_hinge_of_the_positive_over_each_negative():
    # cos(q, p) = 1, cos(q, n0) = 0.96 (hinge 0.1 - 0.04 = 0.06), cos(q, n1) = 0 (hinge 0)
    emb = {
        "query": torch.tensor([[1.0, 0.0]]),
        "positive": torch.tensor([[1.0, 0.0]]),
        "negative": torch.tensor([[[0.96, 0.28], [0.0, 1.0]]]),
    }
    total, parts = AnglELoss(ibn_w=0.0, cln_w=0.0, angle_w=0.0, margin_w=2.0, margin=0.1)(emb, "C")
    assert set(parts) == {"margin"}
    assert parts["margin"].item() == pytest.approx((0.06 + 0.0) / 2, abs=1e-6)
    assert total.item() == pytest.approx(2.0 * 0.03, abs=1e-6)


def test_format_c_margin_term_skips_a_negative_that_is_a_copy_of_the_positive():
    q, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    n = torch.stack([p, torch.tensor([[0.0, 1.0]])], dim=1)  # n0 is p itself
    ids = {"query": torch.tensor([1]), "positive": torch.tensor([2]), "negative": torch.tensor([[2, 3]])}
    loss_fn = AnglELoss(ibn_w=0.0, cln_w=0.0, angle_w=0.0, margin_w=1.0, margin=0.8)
    _, parts = loss_fn({"query": q, "positive": p, "negative": n}, "C", ids=ids)
    assert parts["margin"].item() == pytest.approx(0.8 - (0.6 - 0.0), abs=1e-6)  # (p, n1) only
    _, unmasked = loss_fn({"query": q, "positive": p, "negative": n}, "C")
    assert unmasked["margin"].item() == pytest.approx((0.8 + 0.2) / 2, abs=1e-6)  # + p vs its copy


def test_from_config_reads_the_margin_weight_and_margin():
    loss_fn = AnglELoss.from_config(LossConfig(margin_w=0.7, margin=0.3))
    assert (loss_fn.margin_w, loss_fn.margin_rank.margin) == (0.7, 0.3)
