"""BM25 candidates on real SciFact with the real bm25s library."""

from __future__ import annotations

import bm25s
import numpy as np

from angle_ray.mining.bm25 import _top_sorted, bm25_candidates
from angle_ray.mining.task import MiningTask


def test_shapes_and_order(scifact_task, scifact_bm25):
    c = scifact_bm25
    assert c.scores.shape == c.idx.shape == (len(scifact_task.query_ids), 100)
    assert c.scores.dtype == np.float32 and c.idx.dtype == np.int64
    assert (c.idx >= 0).all() and (c.idx < len(scifact_task.doc_ids)).all()
    assert np.all(np.diff(c.scores, axis=1) <= 0)
    assert all(len(set(row)) == 100 for row in c.idx.tolist())
    assert set(c.seconds) == {"index_s", "search_s"}


def test_candidates_match_bm25s_retrieve(scifact_task, scifact_bm25):
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(scifact_task.doc_texts, stopwords="en", show_progress=False),
                    show_progress=False)
    docs, scores = retriever.retrieve(bm25s.tokenize(scifact_task.query_texts, stopwords="en",
                                                     show_progress=False), k=10, show_progress=False)
    np.testing.assert_allclose(scifact_bm25.scores[:, :10], scores, rtol=1e-6)
    assert (scifact_bm25.idx[:, :10] == docs).mean() > 0.99  # equal scores may swap order


def test_positive_scores_are_exact_bm25_scores(scifact_task, scifact_bm25):
    c = scifact_bm25
    found = 0
    for qi, pos in enumerate(scifact_task.positives):
        ranks = {int(d): r for r, d in enumerate(c.idx[qi])}
        if len(pos) == 1 and pos[0] in ranks:  # the positive was retrieved: same score both ways
            assert c.pos_scores[qi] == c.scores[qi, ranks[pos[0]]]
            found += 1
        elif all(p not in ranks for p in pos):  # ranked below the list: at most its last score
            assert c.pos_scores[qi] <= c.scores[qi, -1]
    assert found > 400  # BM25 retrieves most SciFact positives in its top 100
    assert np.isfinite(c.pos_scores).all() and (c.pos_scores >= 0).all()


def test_tiny_corpus_pads_and_empty_query_scores_zero():
    task = MiningTask(doc_ids=["a", "b", "c"],
                      doc_texts=["protein folding in cells", "stellar dynamics", "cells divide"],
                      query_ids=["q1", "q2"], query_texts=["how do cells fold protein", "the of and"],
                      positives=[[0], [1]])
    c = bm25_candidates(task, top=5)
    assert c.idx.shape == (2, 5) and (c.idx[:, 3:] == -1).all() and np.isneginf(c.scores[:, 3:]).all()
    assert c.idx[0, 0] == 0 and c.pos_scores[0] == c.scores[0, 0] > 0
    assert (c.scores[1, :3] == 0).all() and c.pos_scores[1] == 0  # only stopwords: no match


def test_top_lists_break_ties_by_the_lower_index_even_at_the_cut():
    scores = np.array([1.0, 3.0, 1.0, 3.0, 1.0, 2.0], dtype=np.float32)
    assert _top_sorted(scores, 4).tolist() == [1, 3, 5, 0]  # of the three 1.0s, index 0
    assert _top_sorted(scores, 10).tolist() == [1, 3, 5, 0, 2, 4]
    # many ties (BM25 gives 0 to every document without a query term): each list is a prefix
    rng = np.random.default_rng(0)
    many = rng.integers(0, 4, size=500).astype(np.float32)
    full = _top_sorted(many, 500)
    for top in (1, 7, 50, 123, 499):
        assert _top_sorted(many, top).tolist() == full[:top].tolist()

