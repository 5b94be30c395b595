"""Training batches from a tokenised stream: length grouping and per-batch dynamic padding.

The worker reads "mega-batches" of `batch_size * group_size` examples from its Ray Data shard,
sorts them by length, cuts them into batches and shuffles the batch order with a seeded RNG
(the usual group-by-length trick: far less padding, batches still random across the run).
All roles of a batch are padded together so the model encodes them in one forward pass:

    input_ids [R*B, T] = [role_0 rows (B) ; role_1 rows (B) ; ...]
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch


def pad_roles(batch: dict, role_names: list[str], pad_id: int, left_pad: bool) -> dict:
    """Stack every role's token ids into one padded [R*B, T] tensor (+ mask, hashes, labels)."""
    seqs = [s for r in role_names for s in batch[f"{r}_ids"]]
    longest = max(len(s) for s in seqs)
    ids = np.full((len(seqs), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for i, s in enumerate(seqs):
        if left_pad:
            ids[i, longest - len(s):] = s
            mask[i, longest - len(s):] = 1
        else:
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
    out = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "hashes": torch.from_numpy(np.concatenate([np.asarray(batch[f"{r}_hash"], dtype=np.int64)
                                                   for r in role_names])),
    }
    if "label" in batch:
        out["labels"] = torch.as_tensor(np.asarray(batch["label"], dtype=np.float32))
    return out


def _take(batch: dict, idx: np.ndarray) -> dict:
    return {k: np.asarray(v)[idx] for k, v in batch.items()}


def length_grouped_batches(mega_batches: Iterable[dict], role_names: list[str], batch_size: int,
                           seed: int, group: bool = True) -> Iterator[dict]:
    """Cut each mega-batch into full batches of `batch_size` (short remainder dropped), sorted
    by length when `group`, in a seeded random order."""
    rng = random.Random(seed)
    for mega in mega_batches:
        n = len(mega[f"{role_names[0]}_hash"])
        if group:
            lengths = np.max([[len(s) for s in mega[f"{r}_ids"]] for r in role_names], axis=0)
            order = np.argsort(lengths, kind="stable")
        else:
            order = np.arange(n)
        chunks = [order[i: i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield _take(mega, chunk)
