"""MatryoshkaLoss: weighted sum of the base loss on embedding prefixes."""

import pytest
import torch

from angle_ray.losses.combined import AnglELoss
from angle_ray.losses.matryoshka import MatryoshkaLoss


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_matryoshka_is_the_weighted_sum_of_the_base_on_prefixes():
    base = AnglELoss(cosine_w=0.3)
    emb = {"text1": randn(4, 8, seed=0), "text2": randn(4, 8, seed=1)}
    labels = torch.tensor([1.0, 0.0, 0.7, 0.2])
    total, _ = MatryoshkaLoss(base, dims=[8, 4, 2], weights=[1.0, 0.5, 0.25])(emb, "A", labels)
    expected = sum(
        w * base({k: t[:, :d] for k, t in emb.items()}, "A", labels)[0]
        for d, w in [(8, 1.0), (4, 0.5), (2, 0.25)]
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_matryoshka_truncates_negatives_along_their_last_dim():
    base = AnglELoss(cosine_w=0.1)
    emb = {"query": randn(3, 6, seed=2), "positive": randn(3, 6, seed=3),
           "negative": randn(3, 2, 6, seed=4)}  # fmt: skip
    total, _ = MatryoshkaLoss(base, dims=[4])(emb, "C")
    prefix = {"query": emb["query"][:, :4], "positive": emb["positive"][:, :4],
              "negative": emb["negative"][:, :, :4]}  # fmt: skip
    assert total.item() == pytest.approx(base(prefix, "C")[0].item(), rel=1e-6)


def test_matryoshka_components_are_keyed_by_term_and_dim():
    emb = {"query": randn(3, 6, seed=5), "positive": randn(3, 6, seed=6)}
    _, parts = MatryoshkaLoss(AnglELoss(), dims=[6, 2])(emb, "B")
    assert set(parts) == {"ibn@6", "ibn@2"}
    base_at_2 = AnglELoss()({k: t[:, :2] for k, t in emb.items()}, "B")[1]["ibn"]
    assert parts["ibn@2"].item() == pytest.approx(base_at_2.item(), rel=1e-6)


def test_matryoshka_weights_default_to_one():
    emb = {"query": randn(3, 6, seed=7), "positive": randn(3, 6, seed=8)}
    total, parts = MatryoshkaLoss(AnglELoss(), dims=[6, 4])(emb, "B")
    assert total.item() == pytest.approx((parts["ibn@6"] + parts["ibn@4"]).item(), rel=1e-6)


def test_matryoshka_dim_larger_than_the_embedding_names_both():
    emb = {"query": randn(2, 4, seed=9), "positive": randn(2, 4, seed=10)}
    with pytest.raises(ValueError, match="dim 8 .* embedding size 4"):
        MatryoshkaLoss(AnglELoss(), dims=[8, 4])(emb, "B")


def test_matryoshka_rejects_weights_that_do_not_match_the_dims():
    with pytest.raises(ValueError, match="2 weights for 3 dims"):
        MatryoshkaLoss(AnglELoss(), dims=[8, 4, 2], weights=[1.0, 0.5])


def test_matryoshka_rejects_odd_dims_when_the_angle_term_is_on():
    with pytest.raises(ValueError, match="even"):
        MatryoshkaLoss(AnglELoss(angle_w=0.02), dims=[8, 3])
    MatryoshkaLoss(AnglELoss(angle_w=0.0), dims=[8, 3])  # no angle term: odd dims are fine


def test_matryoshka_gradient_reaches_the_inputs():
    t1 = randn(3, 6, seed=11).requires_grad_(True)
    total, _ = MatryoshkaLoss(AnglELoss(), dims=[6, 2])(
        {"text1": t1, "text2": randn(3, 6, seed=12)}, "A", torch.tensor([1.0, 0.0, 1.0])
    )
    total.backward()
    assert t1.grad is not None and t1.grad.abs().sum() > 0
