"""Training batches from a tokenised stream: length grouping and per-batch dynamic padding.

The worker reads "mega-batches" of `batch_size * group_size` examples from its Ray Data shard,
sorts them by length, cuts them into batches and shuffles the batch order with a seeded RNG
(the usual group-by-length trick: far less padding, batches still random across the run).

    tokens = next(length_grouped_batches(mega_batches, "A", 1, batch_size=32, seed=42))
    batch = pad(tokens, pad_id=0, left_pad=False)      # RoleBatch, all roles in one tensor

A batch says its own format and roles at both stages: `TokenBatch` (ragged token ids per role,
as the stream delivers them; the negatives feed turns a Format B one into Format C) and
`RoleBatch` (padded, what a train step consumes). All roles are padded together so the model
encodes them in one forward pass:

    input_ids [R*B, T] = [role_0 rows (B) ; role_1 rows (B) ; ...]
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from angle_ray.data.roles import LABEL, hash_column, ids_column, negative_role, roles


@dataclass
class TokenBatch:
    """B examples of one format before padding: per-role token ids (ragged) and hashes."""

    fmt: str
    num_negatives: int  # Format C's k; unused by A and B
    columns: dict[str, np.ndarray]  # <role>_ids (object arrays), <role>_hash, label (Format A)

    @property
    def roles(self) -> list[str]:
        return roles(self.fmt, self.num_negatives)

    def __len__(self) -> int:
        return len(self.columns[hash_column(self.roles[0])])

    def token_ids(self, role: str) -> np.ndarray:
        return self.columns[ids_column(role)]

    def hashes(self, role: str) -> np.ndarray:
        return self.columns[hash_column(role)]

    def with_negatives(self, token_ids: list[np.ndarray], hashes: list[np.ndarray]) -> TokenBatch:
        """This Format B batch as Format C: negative j of row i is `token_ids[j][i]`."""
        if self.fmt != "B":
            raise ValueError(f"only a Format B batch takes negatives; this one is Format {self.fmt}")
        columns = dict(self.columns)
        for j, (ids, hs) in enumerate(zip(token_ids, hashes)):
            columns[ids_column(negative_role(j))] = ids
            columns[hash_column(negative_role(j))] = np.asarray(hs, dtype=np.int64)
        return TokenBatch("C", len(token_ids), columns)


@dataclass
class RoleBatch:
    """One padded training batch: every role's rows stacked, role after role."""

    fmt: str
    roles: list[str]
    input_ids: torch.Tensor  # [R*B, T]
    attention_mask: torch.Tensor  # [R*B, T]
    hashes: torch.Tensor  # [R*B] content hashes (duplicates are never negatives)
    labels: torch.Tensor | None = field(default=None)  # [B], Format A

    @property
    def size(self) -> int:
        """Examples in the batch (B)."""
        return self.input_ids.shape[0] // len(self.roles)


def pad(batch: TokenBatch, pad_id: int, left_pad: bool) -> RoleBatch:
    """Stack every role's token ids into one padded [R*B, T] tensor (+ mask, hashes, labels)."""
    role_names = batch.roles
    seqs = [s for r in role_names for s in batch.token_ids(r)]
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
    hashes = np.concatenate([np.asarray(batch.hashes(r), dtype=np.int64) for r in role_names])
    labels = None
    if LABEL in batch.columns:
        labels = torch.as_tensor(np.asarray(batch.columns[LABEL], dtype=np.float32))
    return RoleBatch(batch.fmt, role_names, torch.from_numpy(ids), torch.from_numpy(mask),
                     torch.from_numpy(hashes), labels)


def _take(columns: dict, idx: np.ndarray) -> dict:
    return {k: np.asarray(v)[idx] for k, v in columns.items()}


def length_grouped_batches(mega_batches: Iterable[dict], fmt: str, num_negatives: int,
                           batch_size: int, seed: int, group: bool = True) -> Iterator[TokenBatch]:
    """Cut each mega-batch (stream columns) into full batches of `batch_size` (short remainder
    dropped), sorted by length when `group`, in a seeded random order."""
    rng = random.Random(seed)
    role_names = roles(fmt, num_negatives)
    for mega in mega_batches:
        n = len(mega[hash_column(role_names[0])])
        if group:
            lengths = np.max([[len(s) for s in mega[ids_column(r)]] for r in role_names], axis=0)
            order = np.argsort(lengths, kind="stable")
        else:
            order = np.arange(n)
        chunks = [order[i: i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield TokenBatch(fmt, num_negatives, _take(mega, chunk))
