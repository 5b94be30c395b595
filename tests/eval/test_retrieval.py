import math

import numpy as np
import pytest

from angle_ray.eval.retrieval import (
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    retrieval_metrics,
    search_flat,
    top_k_accuracy,
)


def test_ndcg_matches_hand_computation_with_graded_gains():
    ranked = ["d3", "d1", "d9", "d2"]
    rel = {"d1": 2, "d2": 1}
    dcg = (2**2 - 1) / math.log2(3) + (2**1 - 1) / math.log2(5)
    idcg = (2**2 - 1) / math.log2(2) + (2**1 - 1) / math.log2(3)
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / idcg)


def test_ndcg_cuts_at_k():
    assert ndcg_at_k(["x", "y", "d1"], {"d1": 1}, k=2) == 0.0


def test_mrr_is_reciprocal_rank_of_first_relevant():
    assert mrr_at_k(["a", "b", "c"], {"c": 1, "b": 1}, 10) == pytest.approx(1 / 2)
    assert mrr_at_k(["a", "b", "c"], {"z": 1}, 10) == 0.0


def test_recall_and_top_k_accuracy():
    ranked = ["a", "b", "c", "d"]
    rel = {"b": 1, "d": 1, "q": 1}
    assert recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rel, 4) == pytest.approx(2 / 3)
    assert top_k_accuracy(ranked, rel, 1) == 0.0
    assert top_k_accuracy(ranked, rel, 2) == 1.0


def test_retrieval_metrics_average_over_judged_queries_times_100():
    rankings = {"q1": ["d1", "d2"], "q2": ["d2", "d1"]}
    qrels = {"q1": {"d1": 1}, "q2": {"d1": 1}}
    m = retrieval_metrics(rankings, qrels, recall_ks=(1,), top_ks=(1,))
    assert m["mrr@10"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert m["recall@1"] == pytest.approx(50.0)
    assert m["top1_acc"] == pytest.approx(50.0)


def test_retrieval_metrics_reject_unranked_judged_query():
    with pytest.raises(ValueError, match="no ranking"):
        retrieval_metrics({"q1": ["d1"]}, {"q1": {"d1": 1}, "q2": {"d1": 1}})


def test_faiss_flat_search_is_exact_cosine_ranking():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    _, idx = search_flat(docs, queries, k=50)
    dn = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.argsort(-(qn @ dn.T), axis=1)
    np.testing.assert_array_equal(idx, expected)
