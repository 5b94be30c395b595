"""Batch roles: the one place that names the texts of a training example and lays them out.

A role is one text of an example, named after its record field:

    Format A  text1, text2                      (+ a label)
    Format B  query, positive
    Format C  query, positive, negative_0 .. negative_<k-1>

The stream carries one token-id column and one hash column per role (`ids_column`,
`hash_column`); collation stacks the roles into one [R*B, ...] tensor, role after role, so
the model encodes every text of a batch in one forward pass. The loss takes the roles by its
own keys (`loss_keys`): Format C's negatives stacked into one [N, k, ...] tensor
(`to_loss_layout`, inverse `from_loss_layout`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

FORMATS = ("A", "B", "C")
TEXT1, TEXT2 = "text1", "text2"
QUERY, POSITIVE, NEGATIVE = "query", "positive", "negative"
LABEL = "label"  # Format A's score column / record field
NEGATIVE_PREFIX = f"{NEGATIVE}_"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected A, B or C")


def negative_role(j: int) -> str:
    return f"{NEGATIVE_PREFIX}{j}"


def roles(fmt: str, num_negatives: int = 1) -> list[str]:
    """The text roles of one training example, in the order the model encodes them."""
    _check_format(fmt)
    if fmt == "A":
        return [TEXT1, TEXT2]
    if fmt == "B":
        return [QUERY, POSITIVE]
    return [QUERY, POSITIVE, *(negative_role(j) for j in range(num_negatives))]


def loss_keys(fmt: str) -> tuple[str, ...]:
    """The embedding keys the loss takes for `fmt` (Format C: all negatives under one key)."""
    _check_format(fmt)
    return {"A": (TEXT1, TEXT2), "B": (QUERY, POSITIVE), "C": (QUERY, POSITIVE, NEGATIVE)}[fmt]


def ids_column(role: str) -> str:
    """The stream column with a role's token ids (one variable-length array per row)."""
    return f"{role}_ids"


def hash_column(role: str) -> str:
    """The stream column with a role's 64-bit content hashes."""
    return f"{role}_hash"


def ragged(seqs: Iterable) -> np.ndarray:
    """Variable-length int32 token-id arrays as one object array (a ragged column)."""
    seqs = list(seqs)
    arr = np.empty(len(seqs), dtype=object)
    for i, s in enumerate(seqs):
        arr[i] = np.asarray(s, dtype=np.int32)
    return arr


def record_texts(record: dict, fmt: str, num_negatives: int = 1) -> list[str]:
    """A normalised record's texts in `roles(fmt, num_negatives)` order.

    Format C with fewer negatives than `num_negatives` reuses them in turn.
    """
    _check_format(fmt)
    if fmt == "A":
        return [record[TEXT1], record[TEXT2]]
    texts = [record[QUERY], record[POSITIVE]]
    if fmt == "C":
        negs = record[NEGATIVE]
        texts += [negs[j % len(negs)] for j in range(num_negatives)]
    return texts


def to_loss_layout(rows: torch.Tensor, fmt: str, num_roles: int) -> dict[str, torch.Tensor]:
    """Stacked rows [R*N, ...] (role after role, N each) -> the loss's layout.

    A: {text1, text2} [N, ...]; B: {query, positive} [N, ...]; C: {query, positive} [N, ...]
    and negative [N, k, ...] with k = R - 2. The per-role tensors are views of `rows`; only
    Format C's negatives are stacked into a new tensor.
    """
    import torch  # here, not at the top: Ray Data tasks import this module for the role names

    if rows.shape[0] % num_roles:
        raise ValueError(f"{rows.shape[0]} rows do not split into {num_roles} roles")
    n = rows.shape[0] // num_roles
    per_role = [rows[r * n:(r + 1) * n] for r in range(num_roles)]
    keys = loss_keys(fmt)
    if fmt != "C":
        if num_roles != len(keys):
            raise ValueError(f"Format {fmt} has {len(keys)} roles, got {num_roles}")
        return dict(zip(keys, per_role))
    if num_roles < 3:
        raise ValueError(f"Format C needs query, positive and >= 1 negative; got {num_roles} roles")
    return {QUERY: per_role[0], POSITIVE: per_role[1], NEGATIVE: torch.stack(per_role[2:], dim=1)}


def from_loss_layout(per_key: dict[str, torch.Tensor], fmt: str) -> torch.Tensor:
    """The inverse of `to_loss_layout`: the loss's layout -> stacked rows [R*N, ...]."""
    import torch  # see to_loss_layout

    keys = loss_keys(fmt)
    if fmt != "C":
        return torch.cat([per_key[k] for k in keys])
    negatives = per_key[NEGATIVE]
    return torch.cat([per_key[QUERY], per_key[POSITIVE], *negatives.unbind(dim=1)])
