"""Collation: length-grouped batches that carry their format, padded into one [R*B, T] tensor."""

import numpy as np
import pytest
import torch

from angle_ray.data.collate import TokenBatch, length_grouped_batches, pad
from angle_ray.data.roles import ragged


def _columns(lengths_a, lengths_b):
    def ids(lengths, base):
        return ragged(np.arange(base + i * 10, base + i * 10 + n) for i, n in enumerate(lengths))

    return {"text1_ids": ids(lengths_a, 100), "text2_ids": ids(lengths_b, 500),
            "text1_hash": np.arange(len(lengths_a)), "text2_hash": np.arange(len(lengths_b)) + 50,
            "label": np.linspace(0, 1, len(lengths_a)).astype(np.float32)}


def test_pad_stacks_roles_and_pads_to_the_longest_right():
    out = pad(TokenBatch("A", 1, _columns([2, 3], [1, 4])), pad_id=0, left_pad=False)
    assert (out.fmt, out.roles, out.size) == ("A", ["text1", "text2"], 2)
    assert out.input_ids.shape == (4, 4)
    assert out.input_ids[0].tolist() == [100, 101, 0, 0]
    assert out.input_ids[3].tolist() == [510, 511, 512, 513]
    assert out.attention_mask.sum(1).tolist() == [2, 3, 1, 4]
    assert out.hashes.tolist() == [0, 1, 50, 51]
    assert torch.equal(out.labels, torch.tensor([0.0, 1.0]))


def test_pad_left_pads_for_last_token_pooling():
    out = pad(TokenBatch("A", 1, _columns([2, 3], [1, 4])), pad_id=7, left_pad=True)
    assert out.input_ids[0].tolist() == [7, 7, 100, 101]
    assert out.attention_mask[0].tolist() == [0, 0, 1, 1]


def test_format_b_batch_with_negatives_is_format_c_with_the_negatives_as_last_roles():
    cols = {"query_ids": ragged([[1, 2], [3]]), "positive_ids": ragged([[4], [5, 6, 7]]),
            "query_hash": np.array([10, 11]), "positive_hash": np.array([20, 21])}
    b = TokenBatch("B", 0, cols)
    c = b.with_negatives([ragged([[8], [9, 9]]), ragged([[30, 31, 32, 33], [34]])],
                         [np.array([40, 41]), np.array([50, 51])])
    assert (c.fmt, c.roles, len(c)) == ("C", ["query", "positive", "negative_0", "negative_1"], 2)
    assert b.fmt == "B" and "negative_0_ids" not in b.columns  # the input batch is unchanged
    out = pad(c, pad_id=0, left_pad=False)
    assert out.input_ids.shape == (8, 4) and out.labels is None
    assert out.input_ids[4].tolist() == [8, 0, 0, 0]  # negative_0 of row 0 after the positives
    assert out.input_ids[6].tolist() == [30, 31, 32, 33]
    assert out.hashes.tolist() == [10, 11, 20, 21, 40, 41, 50, 51]
    with pytest.raises(ValueError, match="only a Format B batch"):
        c.with_negatives([], [])


def test_length_grouping_keeps_every_example_once_and_cuts_full_batches():
    rng = np.random.default_rng(0)
    mega = _columns(list(rng.integers(1, 30, 40)), list(rng.integers(1, 30, 40)))
    batches = list(length_grouped_batches([mega], "A", 1, batch_size=8, seed=1))
    assert len(batches) == 5 and all(b.fmt == "A" and len(b) == 8 for b in batches)
    seen = sorted(int(h) for b in batches for h in b.hashes("text1"))
    assert seen == list(range(40))
    # grouped: the spread of lengths inside a batch is far below the spread overall
    spreads = [np.ptp([max(len(a), len(b)) for a, b in zip(x.token_ids("text1"), x.token_ids("text2"))])
               for x in batches]
    assert max(spreads) < 15


def test_length_grouping_is_reproducible_from_the_seed():
    mega = _columns(list(range(1, 33)), list(range(32, 0, -1)))

    def order(seed):
        return [b.hashes("text1").tolist() for b in length_grouped_batches([mega], "A", 1, 8, seed)]

    assert order(3) == order(3)
    assert order(3) != order(4)
