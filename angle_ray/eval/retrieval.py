"""Retrieval metrics over BEIR-layout data: nDCG@10, MRR@10, Recall@k and top-k accuracy.

Ranking is exact inner product on L2-normalised embeddings (cosine) with a FAISS flat index;
the metric functions take plain rankings so they can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from angle_ray.eval.faiss_import import import_faiss


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with graded gains (2^rel - 1) / log2(rank + 1), as in BEIR / trec_eval."""
    dcg = sum((2 ** relevant.get(d, 0) - 1) / math.log2(r + 2) for r, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    for r, d in enumerate(ranked[:k]):
        if relevant.get(d, 0) > 0:
            return 1.0 / (r + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    positives = {d for d, g in relevant.items() if g > 0}
    if not positives:
        return 0.0
    return len(positives.intersection(ranked[:k])) / len(positives)


def top_k_accuracy(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    return float(any(relevant.get(d, 0) > 0 for d in ranked[:k]))


def retrieval_metrics(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                      recall_ks: Sequence[int] = (10, 100), top_ks: Sequence[int] = (1, 3, 5)) -> dict:
    """Average the metrics over the queries that have judgements (x100, like BEIR tables)."""
    queries = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    if not queries:
        raise ValueError("no query has a positive judgement")
    missing = [q for q in queries if q not in rankings]
    if missing:
        raise ValueError(f"{len(missing)} judged queries have no ranking, e.g. {missing[:3]}")
    out = {
        "ndcg@10": np.mean([ndcg_at_k(rankings[q], qrels[q], 10) for q in queries]),
        "mrr@10": np.mean([mrr_at_k(rankings[q], qrels[q], 10) for q in queries]),
    }
    for k in recall_ks:
        out[f"recall@{k}"] = np.mean([recall_at_k(rankings[q], qrels[q], k) for q in queries])
    for k in top_ks:
        out[f"top{k}_acc"] = np.mean([top_k_accuracy(rankings[q], qrels[q], k) for q in queries])
    return {name: float(v * 100.0) for name, v in out.items()}


def search_flat(doc_emb: np.ndarray, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k with FAISS (inner product on normalised copies)."""
    faiss = import_faiss()

    docs = np.ascontiguousarray(doc_emb, dtype=np.float32).copy()
    queries = np.ascontiguousarray(query_emb, dtype=np.float32).copy()
    faiss.normalize_L2(docs)
    faiss.normalize_L2(queries)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    scores, idx = index.search(queries, min(k, docs.shape[0]))
    return scores, idx


def evaluate_retrieval(model, corpus: Mapping[str, str], queries: Mapping[str, str],
                       qrels: Mapping[str, Mapping[str, int]], batch_size: int = 64,
                       dtype: str = "fp32", query_prompt: str | None = None,
                       doc_prompt: str | None = None, depth: int = 100,
                       show_progress: bool = True) -> dict:
    """Encode the corpus and the judged queries, rank with FAISS, return metrics x100."""
    from angle_ray.models.embedder import encode

    doc_ids = list(corpus)
    query_ids = [q for q in qrels if q in queries]
    doc_emb = encode(model, [corpus[d] for d in doc_ids], batch_size=batch_size,
                     prompt=doc_prompt, dtype=dtype, desc="encode corpus",
                     show_progress=show_progress)
    query_emb = encode(model, [queries[q] for q in query_ids], batch_size=batch_size,
                       prompt=query_prompt, dtype=dtype, desc="encode queries",
                       show_progress=show_progress)
    _, idx = search_flat(doc_emb, query_emb, depth)
    rankings = {q: [doc_ids[j] for j in row if j >= 0] for q, row in zip(query_ids, idx)}
    return retrieval_metrics(rankings, {q: qrels[q] for q in query_ids})
