"""FAISS index over document embeddings, and dense candidate search for mining.

    cands = dense_candidates(query_emb, doc_emb, task.positives, cfg, top=100)

Scores are inner products of L2-normalised float32 vectors (cosine). Index kinds:
  * flat  - ``IndexFlatIP``: exact; the default below 200k documents.
  * ivf   - ``IndexIVFFlat``: ``nlist = cfg.ivf_nlist or 4*sqrt(n)`` lists trained on the
            documents, ``nprobe = cfg.ivf_nprobe`` lists searched; approximate, for big corpora.
  * hnsw  - ``IndexHNSWFlat(d, cfg.hnsw_m, METRIC_INNER_PRODUCT)``; approximate, CPU only.
``cfg.shards > 1`` splits the documents into contiguous ranges, one sub-index each, in a
``faiss.IndexShards(successive_ids=True)``: ids come back global and results are merged by score,
so a sharded flat index ranks exactly like one flat index.

GPU (``cfg.faiss_gpu`` and ``gpus_held() > 0``; needs the ``gpu`` extra, faiss-gpu): only GPUs
this process holds. In a Ray actor or task that is the GPUs Ray assigned it (the refresher
reserves ``cfg.refresher_gpus``, default 0: a CPU index), never the node's others, which Ray
2.60 leaves visible to a worker that reserved none; a driver or plain process uses every GPU
FAISS sees. The flat / ivf index is built on CPU, unsharded, and moved with
``faiss.index_cpu_to_all_gpus`` (in a GPU actor "all" is its own: Ray sets its
CUDA_VISIBLE_DEVICES); with ``cfg.shards > 1`` FAISS itself shards it over the GPUs
(``GpuMultipleClonerOptions.shard``), otherwise it is replicated. HNSW has no GPU version and
stays on CPU. GPU indexes cannot be pickled: build the index in the process (Ray actor) that
searches it. GPU search caps ``top`` (2048 in classic FAISS GPU builds), far above a mining
window. The tests check which GPUs count (a declared GPU, no real one), not a GPU index.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from angle_ray.config import MiningConfig
from angle_ray.eval.faiss_import import import_faiss
from angle_ray.mining.candidates import Candidates

AUTO_IVF_FROM = 200_000  # documents; below this an exact flat index is fast enough


def resolve_index_kind(kind: str, n_docs: int) -> str:
    """``"auto"`` -> ``"flat"`` below 200k documents, else ``"ivf"``; other kinds unchanged."""
    if kind == "auto":
        return "flat" if n_docs < AUTO_IVF_FROM else "ivf"
    if kind not in ("flat", "ivf", "hnsw"):
        raise ValueError(f"mining.index={kind!r} is not one of auto, flat, ivf, hnsw")
    return kind


def _normalised(x: np.ndarray) -> np.ndarray:
    faiss = import_faiss()

    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [n, dim], got shape {out.shape}")
    faiss.normalize_L2(out)
    return out


def _single_index(docs: np.ndarray, kind: str, cfg: MiningConfig):
    """One CPU index over ``docs`` (already normalised), documents added."""
    faiss = import_faiss()

    n, d = docs.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        nlist = max(1, min(n, cfg.ivf_nlist or round(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(docs)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    index.add(docs)
    return index


def gpus_held() -> int:
    """The GPUs this process may put an index on: inside a Ray worker (actor or task) the GPUs
    Ray assigned it (Ray 2.60 shows a worker that reserved none every GPU of the node, those
    training holds included); in a driver or a plain process every GPU FAISS sees. Never more
    than FAISS can use: none with the CPU build (faiss-cpu has no GPU classes)."""
    faiss = import_faiss()
    usable = faiss.get_num_gpus() if hasattr(faiss, "GpuMultipleClonerOptions") else 0
    ray = sys.modules.get("ray")  # a Ray worker has imported ray; without it, no import here
    # get_runtime_context() and WORKER_MODE are public, `.worker.mode` is not documented: Ray
    # has no public "am I a worker" call, and Ray Serve itself tells workers apart this way
    if (ray is not None and ray.is_initialized()
            and ray.get_runtime_context().worker.mode == ray.WORKER_MODE):
        return min(len(ray.get_gpu_ids()), usable)
    return usable


def _use_gpu(cfg: MiningConfig, kind: str) -> bool:
    return bool(cfg.faiss_gpu and kind != "hnsw" and gpus_held() > 0)


def build_index(doc_emb: np.ndarray, cfg: MiningConfig):
    """A searchable FAISS index over ``doc_emb`` (normalised here; the input is not modified)."""
    faiss = import_faiss()

    docs = _normalised(doc_emb)
    n = docs.shape[0]
    if n == 0:
        raise ValueError("build_index: no documents")
    kind = resolve_index_kind(cfg.index, n)
    if _use_gpu(cfg, kind):
        co = faiss.GpuMultipleClonerOptions()
        co.shard = cfg.shards > 1
        return faiss.index_cpu_to_all_gpus(_single_index(docs, kind, cfg), co)
    shards = min(cfg.shards, n)
    if shards == 1:
        return _single_index(docs, kind, cfg)
    index = faiss.IndexShards(docs.shape[1], False, True)  # threaded=False, successive_ids=True
    for part in np.array_split(np.arange(n), shards):  # contiguous ranges, in id order
        index.add_shard(_single_index(docs[part[0] : part[-1] + 1], kind, cfg))
    return index


def positive_scores(query_emb: np.ndarray, doc_emb: np.ndarray, positives: list[list[int]]) -> np.ndarray:
    """Per query, the lowest cosine with its known positives (NaN for a query with none)."""
    q = _normalised(query_emb)
    d = _normalised(doc_emb)
    qi = np.repeat(np.arange(len(positives)), [len(p) for p in positives])
    di = np.fromiter((doc for p in positives for doc in p), dtype=np.int64, count=len(qi))
    out = np.full(len(positives), np.inf, dtype=np.float32)
    np.minimum.at(out, qi, np.einsum("ij,ij->i", q[qi], d[di]))
    out[np.isinf(out)] = np.nan
    return out


def dense_candidates(query_emb: np.ndarray, doc_emb: np.ndarray, positives: list[list[int]],
                     cfg: MiningConfig, top: int) -> Candidates:
    """Top-``top`` documents per query by cosine, plus each query's weakest positive score."""
    if len(positives) != len(query_emb):
        raise ValueError(f"dense_candidates: {len(positives)} positive lists for {len(query_emb)} queries")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    t0 = time.perf_counter()
    index = build_index(doc_emb, cfg)
    t1 = time.perf_counter()
    depth = min(top, index.ntotal)
    scores, idx = index.search(_normalised(query_emb), depth)
    t2 = time.perf_counter()
    pos = positive_scores(query_emb, doc_emb, positives)
    t3 = time.perf_counter()
    full_scores = np.full((len(query_emb), top), -np.inf, dtype=np.float32)
    full_idx = np.full((len(query_emb), top), -1, dtype=np.int64)
    full_scores[:, :depth] = scores
    full_idx[:, :depth] = idx
    full_scores[full_idx < 0] = -np.inf  # FAISS marks missing results with id -1
    return Candidates(scores=full_scores, idx=full_idx, pos_scores=pos,
                      seconds={"index_s": t1 - t0, "search_s": t2 - t1, "pos_s": t3 - t2})
