"""Retrieved candidates of every query, whatever retrieved them (BM25 or a dense index).

One shape for both retrievers, so negative selection does not know where scores come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Candidates:
    scores: np.ndarray  # [Q, top] float32, best first
    idx: np.ndarray  # [Q, top] int64 doc indices, -1 where fewer than top exist
    pos_scores: np.ndarray  # [Q] float32: the LOWEST score among the query's known positives
    seconds: dict[str, float] = field(default_factory=dict)  # timings, e.g. index_s, search_s

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.idx = np.asarray(self.idx, dtype=np.int64)
        self.pos_scores = np.asarray(self.pos_scores, dtype=np.float32)
        if self.scores.shape != self.idx.shape or self.scores.ndim != 2:
            raise ValueError(f"Candidates: scores {self.scores.shape} and idx {self.idx.shape} "
                             "must both be [queries, top]")
        if self.pos_scores.shape != (self.scores.shape[0],):
            raise ValueError(f"Candidates: pos_scores {self.pos_scores.shape} must be "
                             f"[{self.scores.shape[0]}] (one per query)")

    @property
    def top(self) -> int:
        return self.scores.shape[1]
