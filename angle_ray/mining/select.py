"""Turn retrieved candidates into exactly k hard negatives per query.

    negatives, stats = select_negatives(cands, task.positives, cfg, n_docs=len(task.doc_ids), seed=0)

Why each step:
  * window [lo, hi] (1-based ranks over the retrieved list, positives included): the very top
    ranks hold most unjudged positives, so ANCE-style mining skips them and samples deeper.
  * known positives are never negatives (``dropped_positive``).
  * false-negative filter (``dropped_fn``): a candidate scoring about as high as the query's
    weakest known positive is likely an unjudged positive. With ``fn_rel_margin = m`` it is
    dropped when ``score > p - (1 - m) * |p|`` (p = ``pos_scores``); for p >= 0 that is the usual
    ``score > m * p``, and for a negative p (cosine can be < 0) the bound still sits below p when
    m < 1 (above it when m > 1) instead of flipping sides as ``m * p`` would. A NaN p (no
    positive scored) disables the relative filter for that query. ``fn_abs`` drops
    ``score > fn_abs``.
  * pick: "top" = the first k survivors in rank order; "random" = k survivors sampled without
    replacement with ``numpy.random.default_rng([seed, query index])`` (reproducible, and
    independent of how many queries are mined together).
  * fill (``filled_random``): when fewer than k survive, uniformly random documents that are
    neither positives, already chosen, nor dropped by the filter (the filter-dropped are allowed
    only when nothing else is left) so that every query gets exactly k negatives.

How hard the chosen negatives are (``SelectStats.as_dict``, recorded in every manifest):
``mean_rank`` = mean 1-based rank of the negatives taken from the candidates (random fills have
no rank and are left out), ``mean_margin`` = mean of (the query's weakest positive's score
``pos_scores`` - the negative's score) over those negatives of queries whose positive was scored
(in the retriever's units: BM25 scores or cosine), ``random_fill_fraction`` = filled_random /
negatives. ``None`` when nothing was taken from the candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from angle_ray.config import MiningConfig
from angle_ray.mining.candidates import Candidates


@dataclass
class SelectStats:
    queries: int = 0
    negatives: int = 0
    dropped_positive: int = 0
    dropped_fn: int = 0
    filled_random: int = 0
    # sums behind the difficulty means (as_dict reports the means, not these)
    _rank_sum: int = 0
    _ranked: int = 0
    _margin_sum: float = 0.0
    _margined: int = 0

    def add_chosen(self, ranks: list[int], scores: list[float], pos_score: float) -> None:
        """Count negatives taken from the candidates: their 1-based ranks and scores."""
        self._rank_sum += sum(ranks)
        self._ranked += len(ranks)
        if not math.isnan(pos_score):
            self._margin_sum += sum(pos_score - s for s in scores)
            self._margined += len(scores)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["mean_rank"] = self._rank_sum / self._ranked if self._ranked else None
        out["mean_margin"] = self._margin_sum / self._margined if self._margined else None
        out["random_fill_fraction"] = self.filled_random / self.negatives if self.negatives else None
        return out


def fn_threshold(pos_scores: np.ndarray, margin: float) -> np.ndarray:
    """Score above which a candidate counts as a likely false negative: ``p - (1 - m)|p|``."""
    p = np.asarray(pos_scores, dtype=np.float64)
    thr = p - (1.0 - margin) * np.abs(p)
    return np.where(np.isnan(p), np.inf, thr)


def select_negatives(cands: Candidates, positives: list[list[int]], cfg: MiningConfig, n_docs: int,
                     seed: int) -> tuple[list[list[int]], SelectStats]:
    """Per query, ``cfg.k`` negative doc indices from the ranks ``cfg.window``; see the module doc."""
    n_queries = cands.idx.shape[0]
    if len(positives) != n_queries:
        raise ValueError(f"select_negatives: {len(positives)} positive lists for {n_queries} queries")
    k = cfg.k
    lo, hi = cfg.window
    idx = cands.idx[:, lo - 1 : hi]  # empty when the window starts past the retrieved depth
    scores = cands.scores[:, lo - 1 : hi].astype(np.float64)

    # likely false negatives, as one [Q, window] mask
    suspect = np.zeros(idx.shape, dtype=bool)
    if cfg.fn_rel_margin is not None:
        suspect |= scores > fn_threshold(cands.pos_scores, cfg.fn_rel_margin)[:, None]
    if cfg.fn_abs is not None:
        suspect |= scores > cfg.fn_abs

    stats = SelectStats(queries=n_queries)
    out: list[list[int]] = []
    for qi in range(n_queries):
        pos = set(positives[qi])
        if n_docs - len(pos) < k:
            raise ValueError(f"query {qi}: only {n_docs - len(pos)} non-positive documents for k={k}")
        row, row_suspect = idx[qi], suspect[qi]
        survivors: list[int] = []
        window_pos: dict[int, int] = {}  # survivor -> its index in the window row
        dropped: set[int] = set()
        for j, doc in enumerate(row.tolist()):
            if doc < 0:
                continue
            if doc in pos:
                stats.dropped_positive += 1
            elif row_suspect[j]:
                stats.dropped_fn += 1
                dropped.add(doc)
            else:
                survivors.append(doc)
                window_pos[doc] = j
        rng = np.random.default_rng([seed, qi])
        if len(survivors) <= k:
            chosen = survivors
        elif cfg.pick == "top":
            chosen = survivors[:k]
        else:
            chosen = [survivors[i] for i in rng.choice(len(survivors), size=k, replace=False)]
        at = [window_pos[doc] for doc in chosen]
        stats.add_chosen([lo + j for j in at], [float(scores[qi, j]) for j in at],
                         float(cands.pos_scores[qi]))
        if len(chosen) < k:
            extra = _random_fill(rng, n_docs, k - len(chosen), pos | set(chosen), dropped)
            stats.filled_random += len(extra)
            chosen = chosen + extra
        out.append(chosen)
    stats.negatives = sum(len(c) for c in out)
    return out, stats


def _random_fill(rng: np.random.Generator, n_docs: int, need: int, exclude: set[int],
                 avoid: set[int]) -> list[int]:
    """``need`` distinct uniform docs outside ``exclude``; outside ``avoid`` too unless too few."""
    banned = exclude | avoid if n_docs - len(exclude | avoid) >= need else exclude
    picked: list[int] = []
    taken = set(banned)
    for _ in range(8):  # rejection sampling: cheap when the corpus dwarfs the banned set
        for doc in rng.integers(0, n_docs, size=2 * need + 8).tolist():
            if doc not in taken:
                picked.append(doc)
                taken.add(doc)
                if len(picked) == need:
                    return picked
    pool = np.setdiff1d(np.arange(n_docs), np.fromiter(taken, dtype=np.int64, count=len(taken)))
    return picked + rng.choice(pool, size=need - len(picked), replace=False).tolist()
