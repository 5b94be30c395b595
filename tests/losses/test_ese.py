"""ESE: the loss against a direct transcription of the formula on fixed tensors, the shallow
weights by hand, the PCA target reproducible and side-effect free, gradients into every layer of
a real MiniLM."""

import math

import pytest
import torch

from angle_ray.config import ConfigError, config_from_dict
from angle_ray.losses.ese import (
    EseLoss,
    align_loss,
    pca_compress,
    shallow_layer_weights,
    stack_rows,
)
from angle_ray.models.truncate import pooled_layers

K, T = 3, 0.7


def rows_loss(rows):
    """A stand-in L_A on stacked rows: InfoNCE of rows[:n] against rows[n:] (tau 20)."""
    n = rows.shape[0] // 2
    u = rows[:n] / rows[:n].norm(dim=-1, keepdim=True)
    v = rows[n:] / rows[n:].norm(dim=-1, keepdim=True)
    return torch.nn.functional.cross_entropy(20 * u @ v.T, torch.arange(n))


def transcribed_loss(layers, k, temp, seed=0):
    """The issue's formula written out term by term, sharing no code with angle_ray.losses.ese."""

    def pca(h):
        with torch.no_grad():
            d = h.shape[1]
            m = (h.T @ h / d**0.5).exp()
            m = m / m.sum(dim=1, keepdim=True)  # softmax over each row
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                u, s, _ = torch.svd_lowrank(m, q=k)
            return h @ u @ torch.diag(s)

    def kl(t, x):  # KL(softmax(t / T) || softmax(x / T)), summed over dims, mean over rows
        log_pt = t / temp - (t / temp).exp().sum(1, keepdim=True).log()
        log_px = x / temp - (x / temp).exp().sum(1, keepdim=True).log()
        return (log_pt.exp() * (log_pt - log_px)).sum() / x.shape[0]

    def align(x, t):
        return ((x - t) ** 2).mean() + temp * kl(t, x)

    n = len(layers)
    h_n = layers[-1]
    total = rows_loss(h_n) + rows_loss(h_n[:, :k]) + align(h_n[:, :k], pca(h_n))
    for i in range(n - 1):
        h = layers[i]
        total = total + (rows_loss(h[:, :k]) + align(h[:, :k], pca(h))) / (1 + math.log(1 + i)) / (n - 1)
    return total


def fixed_layers(num_layers=3, rows=6, dim=8):
    gen = torch.Generator().manual_seed(1234)
    return [torch.randn(rows, dim, generator=gen).requires_grad_(True) for _ in range(num_layers)]


def test_shallow_weights_by_hand_for_three_layers():
    # N = 3: i = 0 -> 1/2 * 1/(1 + ln 1) = 0.5 ; i = 1 -> 1/2 * 1/(1 + ln 2) = 0.5 / 1.693147...
    assert shallow_layer_weights(3) == pytest.approx([0.5, 0.2953083], rel=1e-6)
    assert shallow_layer_weights(1) == []
    assert shallow_layer_weights(4)[2] == pytest.approx(1 / 3 / (1 + math.log(3)), rel=1e-12)


@pytest.mark.parametrize("num_layers", [1, 2, 3, 5])
def test_loss_and_gradients_equal_the_transcribed_formula(num_layers):
    ours_layers, ref_layers = fixed_layers(num_layers), fixed_layers(num_layers)
    total, parts = EseLoss(compression_size=K, kl_temperature=T)(ours_layers, rows_loss)
    want = transcribed_loss(ref_layers, K, T)
    torch.testing.assert_close(total, want, rtol=1e-5, atol=0)
    assert set(parts) == {"full", "prefix", "align", "shallow"}
    torch.testing.assert_close(sum(parts.values()), want.detach(), rtol=1e-5, atol=0)
    if num_layers == 1:
        assert parts["shallow"] == 0
    total.backward()
    want.backward()
    for ours, ref in zip(ours_layers, ref_layers):  # gradients flow into every layer, PCA target constant
        assert ours.grad.abs().sum() > 0
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_loss_fn_returning_a_tuple_uses_its_first_element():
    layers = fixed_layers(2)
    plain, _ = EseLoss(K, T)(layers, rows_loss)
    tupled, _ = EseLoss(K, T)(layers, lambda rows: (rows_loss(rows), {"ignored": 1}))
    assert tupled.item() == plain.item()


def test_pca_target_is_reproducible_and_leaves_the_global_rng_alone():
    h = fixed_layers(1, rows=10, dim=16)[0]
    state = torch.get_rng_state()
    first = pca_compress(h, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(pca_compress(h, 4), first)
    assert first.shape == (10, 4) and not first.requires_grad
    assert not torch.equal(pca_compress(h, 4, seed=1), first)  # the seed is what pins it


def test_align_is_zero_for_identical_inputs_and_mse_plus_kl_otherwise():
    x = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    assert align_loss(x, x.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, 1.0], [0.5, 2.0]])
    p, q = torch.softmax(t[0] / 2, 0), torch.softmax(x[0] / 2, 0)  # row 1 identical: KL 0
    kl = float((p * (p / q).log()).sum()) / 2
    assert align_loss(x, t, 2.0).item() == pytest.approx(2 / 4 + 2.0 * kl, rel=1e-6)


def test_compression_size_must_be_below_the_embedding_size():
    with pytest.raises(ValueError, match="compression_size=8 must be between 1 and the embedding size 8"):
        pca_compress(torch.randn(4, 8), 8)


def test_config_section_and_grad_cache_exclusion():
    cfg = config_from_dict({"loss": {"ese": {"enabled": True, "compression_size": 64}}})
    assert (cfg.loss.ese.compression_size, cfg.loss.ese.kl_temperature) == (64, 1.0)
    with pytest.raises(ConfigError, match="cannot be combined"):
        config_from_dict({"loss": {"ese": {"enabled": True}}, "train": {"grad_cache": {"enabled": True}}})


def test_real_minilm_every_layer_gets_gradient(minilm_small):
    model = minilm_small
    model.train()
    try:
        t1 = model.tokenize(["A plane is taking off.", "A man plays a flute.", "Two dogs run."])
        t2 = model.tokenize(["An airplane departs.", "Someone plays the flute.", "Dogs are running."])
        per_role = [pooled_layers(model, b["input_ids"], b["attention_mask"]) for b in (t1, t2)]
        layers = stack_rows(per_role)
        assert len(layers) == 6 and layers[0].shape == (6, 384)
        total, _ = EseLoss(compression_size=128)(layers, rows_loss)
        total.backward()
        encoder = model.backbone.encoder.layer
        for layer in (encoder[0], encoder[5]):  # the first layer also learns from its own terms
            grad = layer.attention.self.query.weight.grad
            assert grad is not None and grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
