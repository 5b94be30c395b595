import numpy as np
import torch

from angle_ray.data.collate import length_grouped_batches, pad_roles


def _batch(lengths_a, lengths_b):
    def ragged(lengths, base):
        arr = np.empty(len(lengths), dtype=object)
        for i, n in enumerate(lengths):
            arr[i] = np.arange(base + i * 10, base + i * 10 + n, dtype=np.int32)
        return arr

    return {"text1_ids": ragged(lengths_a, 100), "text2_ids": ragged(lengths_b, 500),
            "text1_hash": np.arange(len(lengths_a)), "text2_hash": np.arange(len(lengths_b)) + 50,
            "label": np.linspace(0, 1, len(lengths_a)).astype(np.float32)}


def test_pad_roles_stacks_roles_and_pads_to_the_longest_right():
    out = pad_roles(_batch([2, 3], [1, 4]), ["text1", "text2"], pad_id=0, left_pad=False)
    assert out["input_ids"].shape == (4, 4)
    assert out["input_ids"][0].tolist() == [100, 101, 0, 0]
    assert out["input_ids"][3].tolist() == [510, 511, 512, 513]
    assert out["attention_mask"].sum(1).tolist() == [2, 3, 1, 4]
    assert out["hashes"].tolist() == [0, 1, 50, 51]
    assert torch.equal(out["labels"], torch.tensor([0.0, 1.0]))


def test_pad_roles_left_pads_for_last_token_pooling():
    out = pad_roles(_batch([2, 3], [1, 4]), ["text1", "text2"], pad_id=7, left_pad=True)
    assert out["input_ids"][0].tolist() == [7, 7, 100, 101]
    assert out["attention_mask"][0].tolist() == [0, 0, 1, 1]


def test_length_grouping_keeps_every_example_once_and_cuts_full_batches():
    rng = np.random.default_rng(0)
    mega = _batch(list(rng.integers(1, 30, 40)), list(rng.integers(1, 30, 40)))
    batches = list(length_grouped_batches([mega], ["text1", "text2"], batch_size=8, seed=1))
    assert len(batches) == 5
    seen = sorted(int(h) for b in batches for h in b["text1_hash"])
    assert seen == list(range(40))
    # grouped: the spread of lengths inside a batch is far below the spread overall
    spreads = [np.ptp([max(len(a), len(b)) for a, b in zip(x["text1_ids"], x["text2_ids"])])
               for x in batches]
    assert max(spreads) < 15


def test_length_grouping_is_reproducible_from_the_seed():
    mega = _batch(list(range(1, 33)), list(range(32, 0, -1)))
    a = [b["text1_hash"].tolist() for b in length_grouped_batches([mega], ["text1", "text2"], 8, 3)]
    b = [b["text1_hash"].tolist() for b in length_grouped_batches([mega], ["text1", "text2"], 8, 3)]
    c = [b["text1_hash"].tolist() for b in length_grouped_batches([mega], ["text1", "text2"], 8, 4)]
    assert a == b
    assert a != c
