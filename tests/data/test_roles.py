"""Roles: the vocabulary per format and the stacked-rows <-> loss-layout conversion."""

import pytest
import torch

from angle_ray.data.roles import (
    from_loss_layout,
    hash_column,
    ids_column,
    loss_keys,
    record_texts,
    roles,
    to_loss_layout,
)


def test_roles_name_every_text_the_model_encodes():
    assert roles("A") == ["text1", "text2"]
    assert roles("B", 3) == ["query", "positive"]
    assert roles("C", 2) == ["query", "positive", "negative_0", "negative_1"]
    assert loss_keys("C") == ("query", "positive", "negative")
    assert (ids_column("negative_1"), hash_column("text1")) == ("negative_1_ids", "text1_hash")
    with pytest.raises(ValueError, match="unknown data format 'D'"):
        roles("D")


def test_record_texts_follow_the_role_order_and_reuse_negatives_in_turn():
    rec = {"query": "q", "positive": "p", "negative": ["n0", "n1"]}
    assert record_texts(rec, "C", 3) == ["q", "p", "n0", "n1", "n0"]
    assert record_texts(rec, "B") == ["q", "p"]
    assert record_texts({"text1": "a", "text2": "b", "label": 0.5}, "A") == ["a", "b"]


def test_format_c_rows_become_query_positive_and_negatives_stacked_n_by_k():
    # 3 examples, k = 2: rows are [q0 q1 q2 | p0 p1 p2 | n0_0 n1_0 n2_0 | n0_1 n1_1 n2_1]
    rows = torch.arange(12 * 2, dtype=torch.float32).reshape(12, 2)
    out = to_loss_layout(rows, "C", num_roles=4)
    assert torch.equal(out["query"], rows[0:3])
    assert torch.equal(out["positive"], rows[3:6])
    assert out["negative"].shape == (3, 2, 2)
    assert torch.equal(out["negative"][1, 0], rows[7])  # example 1, negative 0
    assert torch.equal(out["negative"][1, 1], rows[10])  # example 1, negative 1
    assert torch.equal(from_loss_layout(out, "C"), rows)


@pytest.mark.parametrize(("fmt", "keys"), [("A", ("text1", "text2")), ("B", ("query", "positive"))])
def test_two_role_formats_round_trip_for_embeddings_and_hashes(fmt, keys):
    emb = torch.randn(8, 5)
    out = to_loss_layout(emb, fmt, num_roles=2)
    assert tuple(out) == keys and torch.equal(out[keys[1]], emb[4:])
    assert torch.equal(from_loss_layout(out, fmt), emb)
    hashes = torch.tensor([11, 12, 13, 14, 21, 22, 23, 24])  # 1-d rows (content hashes) too
    assert to_loss_layout(hashes, fmt, 2)[keys[0]].tolist() == [11, 12, 13, 14]


def test_layout_rejects_rows_that_do_not_fit_the_roles():
    with pytest.raises(ValueError, match="do not split into 3 roles"):
        to_loss_layout(torch.zeros(7, 2), "C", 3)
    with pytest.raises(ValueError, match="Format A has 2 roles, got 3"):
        to_loss_layout(torch.zeros(6, 2), "A", 3)
    with pytest.raises(ValueError, match=">= 1 negative"):
        to_loss_layout(torch.zeros(6, 2), "C", 2)
