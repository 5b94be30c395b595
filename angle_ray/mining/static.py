"""Static hard-negative mining: one pass with BM25 or a fixed model, written to one file.

    angle-ray mine --config jobs/configs/scifact_ance.yaml --output negatives.jsonl
    angle-ray mine --config JOB.yaml mining.k=8 --model runs/x/model --output negatives.parquet

    rows, manifest = mine_static(cfg.mining)                      # BM25 (mining.warm_start: bm25)
    rows, manifest = mine_static(cfg.mining, model=minilm)        # any EmbeddingModel or path

The flow: task (train queries minus holdout) -> candidates (BM25, or encode + FAISS) ->
select_negatives -> negative_rows. The rows are Format C with lists of negatives; train on them with
``{path: negatives.jsonl, format: C, num_negatives: 4,
column_rename_mapping: {query_id: "", positive_id: "", negative_ids: ""}}``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from angle_ray.config import ConfigError, MiningConfig
from angle_ray.mining.bm25 import bm25_candidates
from angle_ray.mining.candidates import Candidates
from angle_ray.mining.index import dense_candidates
from angle_ray.mining.publish import DATA_FILES, write_rows
from angle_ray.mining.rows import negative_rows
from angle_ray.mining.select import select_negatives
from angle_ray.mining.task import MiningTask, load_mining_task
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model


@contextlib.contextmanager
def capped_length(model, tokens: int | None):
    """Temporarily cap the model's tokenizer length (``mining.max_length``), then restore it."""
    if tokens is None:
        yield model
        return
    saved = model.cfg
    model.cfg = saved.model_copy(update={"max_length": tokens})
    try:
        yield model
    finally:
        model.cfg = saved


def dense_task_candidates(task: MiningTask, model, cfg: MiningConfig, batch_size: int = 64,
                          dtype: str = "fp32", show_progress: bool = True) -> Candidates:
    """Encode corpus and queries (with the mining prompts) and search them with FAISS."""
    t0 = time.perf_counter()
    with capped_length(model, cfg.max_length):
        doc_emb = encode(model, task.doc_texts, batch_size=batch_size, prompt=cfg.doc_prompt,
                         dtype=dtype, show_progress=show_progress, desc="encode corpus")
        query_emb = encode(model, task.query_texts, batch_size=batch_size, prompt=cfg.query_prompt,
                           dtype=dtype, show_progress=show_progress, desc="encode queries")
    encode_s = time.perf_counter() - t0
    cands = dense_candidates(query_emb, doc_emb, task.positives, cfg, top=cfg.window[1])
    cands.seconds = {"encode_s": encode_s, **cands.seconds}
    return cands


def _resolve_model(model, cfg: MiningConfig):
    """(model or None for BM25, its name for the manifest)."""
    if model is None:
        if cfg.warm_start == "bm25":
            return None, "bm25"
        if cfg.warm_start == "none":
            raise ConfigError("mining.warm_start is 'none' and no model was given: nothing to mine "
                             "with; set mining.warm_start to bm25 or a model, or pass --model")
        model = cfg.warm_start
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, max_length=cfg.max_length), str(model)
    return model, getattr(getattr(model, "cfg", None), "name_or_path", type(model).__name__)


def mine_static(cfg: MiningConfig, model=None, batch_size: int = 64, show_progress: bool = True,
                dtype: str = "fp32", task: MiningTask | None = None,
                candidates: tuple[Candidates, str] | None = None) -> tuple[list[dict], dict]:
    """Mine ``cfg.k`` negatives per training query; returns (rows, manifest).

    ``model``: None = ``cfg.warm_start`` (bm25 or a model path), an ``EmbeddingModel``, or a path
    (angle-ray / HF folder, hub id, ``all-MiniLM-L6-v2``). ``task`` skips reading the BEIR folder.
    ``candidates``: (already retrieved candidates, their source), e.g. from the refresher's
    encoder pool; then only selection happens here."""
    t0 = time.perf_counter()
    if task is None:
        task = load_mining_task(cfg)
    task_s = time.perf_counter() - t0
    if candidates is not None:
        cands, source = candidates
    else:
        model, source = _resolve_model(model, cfg)
        if model is None:
            cands = bm25_candidates(task, top=cfg.window[1], show_progress=show_progress)
        else:
            cands = dense_task_candidates(task, model, cfg, batch_size, dtype, show_progress)
    t1 = time.perf_counter()
    negatives, stats = select_negatives(cands, task.positives, cfg, n_docs=len(task.doc_ids), seed=cfg.seed)
    rows = negative_rows(task, negatives)
    select_s = time.perf_counter() - t1
    seconds = {"task_s": task_s, **cands.seconds, "select_s": select_s,
               "total_s": time.perf_counter() - t0}
    manifest = {
        "kind": "static",
        "source": source,
        "docs": len(task.doc_ids),
        "queries": len(task.query_ids),
        "stats": stats.as_dict(),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "mining": cfg.model_dump(mode="json"),
    }
    return rows, manifest


def output_format(path: str | os.PathLike, default: str) -> str:
    """``.jsonl`` / ``.parquet`` from the file name, else ``default`` (mining.output_format)."""
    suffix = Path(path).suffix.lower()
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(suffix, default)


def write_negatives(rows: list[dict], path: str | os.PathLike, fmt: str) -> Path:
    """Write the rows to ``path`` via a temporary file + rename: a reader never sees half a file."""
    if fmt not in DATA_FILES:
        raise ValueError(f"negatives format {fmt!r} is not one of {sorted(DATA_FILES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write_rows(tmp, rows, fmt)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def summary(manifest: dict, rows: int, path: str | os.PathLike) -> str:
    """Human-readable lines for the end of `angle-ray mine`."""
    s = manifest["stats"]
    secs = ", ".join(f"{name} {value:.2f}" for name, value in manifest["seconds"].items())
    head = (f"[angle-ray mine] {manifest['source']}: {manifest['queries']} queries x k="
            f"{manifest['mining']['k']} over {manifest['docs']} docs -> {rows} rows in {path}")
    dropped = (f"  dropped positives {s['dropped_positive']}, dropped false negatives "
               f"{s['dropped_fn']}, filled at random {s['filled_random']}")
    return "\n".join([head, dropped, f"  seconds: {secs}"])
