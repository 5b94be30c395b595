"""BM25 candidates (the `bm25s` library): the warm start before any checkpoint exists.

    cands = bm25_candidates(task, top=100)

Each query is scored against every document once (``BM25.get_scores_from_ids``); the same score
vector gives the top ``top`` documents and the exact BM25 score of every known positive, so
``pos_scores`` is on the same scale as the candidates even for positives ranked below ``top``.
That full pass is what ``bm25s.BM25.retrieve`` does internally as well. Tokenisation: bm25s'
default (lower-case, ``\\w\\w+`` tokens, English stopwords, no stemming).
"""

from __future__ import annotations

import time

import numpy as np

from angle_ray.mining.candidates import Candidates
from angle_ray.mining.task import MiningTask


def _top_sorted(scores: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` highest scores, best first; ties broken by the lower doc index,
    at the cut too (argpartition alone keeps an arbitrary few of the scores tied there), so a
    shorter list is always a prefix of a longer one."""
    if top >= len(scores):
        chosen = np.arange(len(scores))
    else:
        cut = np.partition(scores, len(scores) - top)[len(scores) - top]  # the top-th highest
        above = np.flatnonzero(scores > cut)
        chosen = np.concatenate([above, np.flatnonzero(scores == cut)[:top - len(above)]])
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def bm25_candidates(task: MiningTask, top: int, show_progress: bool = False) -> Candidates:
    """Top-``top`` BM25 documents per query and each query's lowest positive BM25 score."""
    import bm25s
    from tqdm.auto import tqdm

    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    t0 = time.perf_counter()
    corpus_tokens = bm25s.tokenize(task.doc_texts, stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    t1 = time.perf_counter()
    query_tokens = bm25s.tokenize(task.query_texts, stopwords="en", return_ids=False,
                                  show_progress=False)
    n_queries, n_docs = len(task.query_ids), len(task.doc_ids)
    depth = min(top, n_docs)
    scores = np.full((n_queries, top), -np.inf, dtype=np.float32)
    idx = np.full((n_queries, top), -1, dtype=np.int64)
    pos_scores = np.full(n_queries, np.nan, dtype=np.float32)
    for qi in tqdm(range(n_queries), desc="bm25 search", disable=not show_progress, unit="query"):
        ids = retriever.get_tokens_ids(query_tokens[qi])  # out-of-vocabulary tokens left out
        if ids:
            all_scores = np.asarray(retriever.get_scores_from_ids(ids), dtype=np.float32)
        else:  # nothing to match: every document scores 0
            all_scores = np.zeros(n_docs, dtype=np.float32)
        best = _top_sorted(all_scores, depth)
        idx[qi, :depth] = best
        scores[qi, :depth] = all_scores[best]
        if task.positives[qi]:
            pos_scores[qi] = all_scores[task.positives[qi]].min()
    t2 = time.perf_counter()
    return Candidates(scores=scores, idx=idx, pos_scores=pos_scores,
                      seconds={"index_s": t1 - t0, "search_s": t2 - t1})
