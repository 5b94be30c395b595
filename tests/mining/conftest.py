"""Mining fixtures: the SciFact task, its BM25 candidates and MiniLM embeddings of a slice.

BM25 runs on all of SciFact. MiniLM encodes a slice (the first 200 training queries, their
positive documents and 200 other documents, 32 tokens per text): the whole corpus takes minutes
on a 2-core machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from angle_ray.config import MiningConfig
from angle_ray.mining.task import MiningTask, load_mining_task


def slice_task(task: MiningTask, n_queries: int, extra_docs: int) -> MiningTask:
    """The first ``n_queries`` queries over their positive documents + ``extra_docs`` others."""
    task = MiningTask(doc_ids=task.doc_ids, doc_texts=task.doc_texts, query_ids=task.query_ids[:n_queries],
                      query_texts=task.query_texts[:n_queries], positives=task.positives[:n_queries])
    pos = sorted({d for p in task.positives for d in p})
    others = [d for d in range(len(task.doc_ids)) if d not in set(pos)][:extra_docs]
    keep = pos + others
    new_index = {old: new for new, old in enumerate(keep)}
    return MiningTask(doc_ids=[task.doc_ids[d] for d in keep], doc_texts=[task.doc_texts[d] for d in keep],
                      query_ids=list(task.query_ids), query_texts=list(task.query_texts),
                      positives=[[new_index[d] for d in p] for p in task.positives])


@pytest.fixture(scope="session")
def scifact_cfg(data_dir) -> MiningConfig:
    return MiningConfig(beir=str(data_dir / "scifact"), window=(3, 50), k=4)


@pytest.fixture(scope="session")
def scifact_task(scifact_cfg) -> MiningTask:
    return load_mining_task(scifact_cfg)


@pytest.fixture(scope="session")
def scifact_bm25(scifact_task):
    from angle_ray.mining.bm25 import bm25_candidates

    return bm25_candidates(scifact_task, top=100)


@pytest.fixture(scope="session")
def scifact_slice(scifact_task) -> MiningTask:
    return slice_task(scifact_task, n_queries=200, extra_docs=200)


@pytest.fixture(scope="session")
def slice_embeddings(scifact_slice, minilm_small) -> tuple[np.ndarray, np.ndarray]:
    """(query_emb, doc_emb) of the slice with real all-MiniLM-L6-v2, 32 tokens max."""
    from angle_ray.mining.static import capped_length
    from angle_ray.models.embedder import encode

    with capped_length(minilm_small, 32):
        docs = encode(minilm_small, scifact_slice.doc_texts, batch_size=64, show_progress=False)
        queries = encode(minilm_small, scifact_slice.query_texts, batch_size=64, show_progress=False)
    assert minilm_small.cfg.max_length == 128  # restored for other tests
    return queries, docs
