"""The ANCE refresher: re-mines hard negatives from the newest checkpoint while training runs.

Training and mining meet in two places only (DESIGN.md): reported checkpoints and published
negatives. The refresher is one Ray actor beside the TorchTrainer in the same job:

    newest checkpoint (checkpoint_manager_snapshot.json, written by Ray Train after a
    checkpoint is fully persisted; none past `mining.refresh_until` of the run's steps)
    -> copy its model/ aside (checkpoints may be pruned)
    -> weights byte-identical to the latest version's (manifest `model_sha256`)? skip it
    -> encode corpus + training queries on the elastic encoder pool (encoder_pool.py), from
       token ids tokenised once per job (token_cache.py, `mining.token_cache`), longest rows
       first (`pool.sort_by_length`), in `pool.precision`
    -> FAISS index, search, rank window, false-negative filter (index.py, select.py)
    -> publish negatives/v<step>/ atomically with a manifest (publish.py)

Partial refresh (`mining.refresh_sample: f`, ANCE-style): each refresh re-encodes a seeded
random fraction f of the corpus plus every document that matters now (the training queries'
positives and the previous refresh's candidates; after a restart, the latest version's
negatives) and searches among those documents only. The rest of the corpus is not searched
that time (no stale embeddings are mixed with fresh ones): the encode costs about f of a full
one, and the negatives come from a smaller pool, so a hard document outside the sample and
outside the current candidates waits for a later sample to be found.

A refresh that fails (a bad checkpoint, the pool running out of retries, a full disk) is
logged and recorded; the previous version stays in place and nothing partial is published.
The actor restarts if its process dies and picks up from the versions on disk.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import ray
import ray.data

from angle_ray.config import JobConfig, MiningConfig
from angle_ray.mining.candidates import Candidates
from angle_ray.mining.encoder_pool import (
    PoolRun,
    encode_tokens_with_pool,
    encode_with_pool,
    requested_precision,
)
from angle_ray.mining.index import dense_candidates
from angle_ray.mining.publish import (
    MANIFEST,
    clean_partial,
    latest_version,
    prune_versions,
    publish_version,
    read_version,
)
from angle_ray.mining.static import mine_static
from angle_ray.mining.task import MiningTask, load_mining_task
from angle_ray.mining.token_cache import TokenCache, files_sha256, mining_tokens
from angle_ray.models.embedder import apply_prompt

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_MODEL_DIR = "model"  # the model folder inside a checkpoint (train/checkpoint.py)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # full weights or a LoRA adapter


def weights_hash(model_dir: Path) -> str | None:
    """sha256 over a model folder's weight files (names + bytes, sorted); None when it has none."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return files_sha256(Path(model_dir), files) if files else None


class FoundCheckpoint(NamedTuple):
    step: int
    folder: Path
    total_steps: int | None  # the run's steps, as the checkpoint's report gave them


def newest_checkpoint(run_dir: Path) -> FoundCheckpoint | None:
    """The newest checkpoint Ray Train has registered for this run (not the final one)."""
    snap = run_dir / SNAPSHOT_FILE
    try:
        data = json.loads(snap.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-write
        return None
    latest = data.get("latest_checkpoint_result") or {}
    name, metrics = latest.get("checkpoint_dir_name"), latest.get("metrics") or {}
    if not name or "step" not in metrics:
        return None
    total = int(metrics["total_steps"]) if metrics.get("total_steps") else None
    if total and metrics["step"] >= total:
        return None  # the final checkpoint: training is over, negatives from it would go unused
    return FoundCheckpoint(int(metrics["step"]), run_dir / name, total)


def past_refresh_until(step: int, total_steps: int | None, mining: MiningConfig) -> bool:
    """Is `step` past the last fraction of the run that still refreshes (`mining.refresh_until`)?"""
    return bool(total_steps) and step > mining.refresh_until * total_steps


def due(step: int, last_step: int, mining: MiningConfig, total_steps: int | None = None) -> bool:
    """Is a checkpoint at `step` worth a refresh, given the last published version's step (and
    the run's steps, for `mining.refresh_until`)?"""
    if step <= last_step or past_refresh_until(step, total_steps, mining):
        return False
    if mining.refresh_on_checkpoint:
        return True
    return step - max(last_step, 0) >= mining.refresh_every


def refresh_doc_subset(n_docs: int, fraction: float, seed: int, keep: Iterable[int]) -> np.ndarray:
    """Sorted document indices a partial refresh re-encodes: ceil(fraction * n_docs) drawn
    with ``seed``, plus every index in ``keep``."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(n_docs, size=min(n_docs, math.ceil(fraction * n_docs)), replace=False)
    return np.union1d(sample, np.fromiter(keep, dtype=np.int64)).astype(np.int64)


def encode_refresh_rows(job: JobConfig, task: MiningTask, model_ref: str, tokens: TokenCache | None,
                        docs: np.ndarray | None, desc: str) -> tuple[np.ndarray, np.ndarray, PoolRun]:
    """(doc embeddings, query embeddings, the pool run) for the documents ``docs`` (None: all)
    and every training query: from cached token ids when given, else from the texts."""
    m, n_docs = job.mining, len(task.doc_texts)
    doc_rows = np.arange(n_docs) if docs is None else docs
    if tokens is not None:
        rows = np.concatenate([doc_rows, n_docs + np.arange(len(task.query_texts))])
        ids = tokens.input_ids if docs is None else tokens.input_ids.take(rows)
        run = encode_tokens_with_pool(model_ref, ids, job.model, m.pool, max_length=m.max_length, desc=desc)
    else:
        doc_texts = [task.doc_texts[d] for d in doc_rows]
        texts = apply_prompt(doc_texts, m.doc_prompt) + apply_prompt(task.query_texts, m.query_prompt)
        run = encode_with_pool(model_ref, texts, job.model, m.pool, max_length=m.max_length, desc=desc)
    return run.embeddings[: len(doc_rows)], run.embeddings[len(doc_rows) :], run


def mine_candidates(job: JobConfig, task: MiningTask, model_ref: str, step: int,
                    tokens: TokenCache | None = None, keep_docs: Iterable[int] = (),
                    top: int | None = None) -> tuple[Candidates, PoolRun, int]:
    """Encode (all documents, or a `mining.refresh_sample` subset plus the positives and
    ``keep_docs``), index and search: (candidates over the whole corpus's indices, the pool
    run, documents encoded). ``top`` defaults to the window's upper rank."""
    m = job.mining
    docs = None
    if m.refresh_sample is not None:
        keep = {d for p in task.positives for d in p} | set(keep_docs)
        docs = refresh_doc_subset(len(task.doc_texts), m.refresh_sample, m.seed + step, keep)
    doc_emb, query_emb, run = encode_refresh_rows(job, task, model_ref, tokens, docs,
                                                  desc=f"refresh v{step}")
    positives = task.positives
    if docs is not None:  # the search runs over the subset: positives in its numbering
        local = {d: k for k, d in enumerate(docs.tolist())}
        positives = [[local[d] for d in p] for p in task.positives]
    cands = dense_candidates(query_emb, doc_emb, positives, m, top=top or m.window[1])
    if docs is not None:
        cands.idx = np.where(cands.idx >= 0, docs[np.maximum(cands.idx, 0)], -1)
    cands.seconds = {"encode_s": run.seconds, **cands.seconds}
    return cands, run, len(doc_emb)


def refresh_once(job: JobConfig, task: MiningTask, neg_dir: Path, model_ref: str, step: int,
                 source: str, tokens: TokenCache | None = None, keep_docs: Iterable[int] = (),
                 model_sha256: str | None = None) -> tuple[Path, Candidates]:
    """Encode on the pool, index, search, select and publish one version; returns its folder
    and the candidates it was selected from."""
    m = job.mining
    started = time.perf_counter()
    cands, run, encoded = mine_candidates(job, task, model_ref, step, tokens, keep_docs)
    # a new random pick per version (ANCE samples afresh from each new ranking)
    rows, manifest = mine_static(m.model_copy(update={"seed": m.seed + step}), task=task,
                                 candidates=(cands, source))
    manifest["seconds"]["total_s"] = round(time.perf_counter() - started, 3)
    manifest.update(kind="refresh", step=step, encode_texts_per_s=run.texts_per_s,
                    encoded_docs=encoded, model_sha256=model_sha256,
                    token_cache=tokens.path.name if tokens is not None else None,
                    pool={"min_actors": m.pool.min_actors, "max_actors": m.pool.max_actors,
                          "precision": requested_precision(m.pool.precision, job.model.dtype),
                          "sort_by_length": m.pool.sort_by_length})
    folder = publish_version(neg_dir, step, rows, manifest, fmt=m.output_format)
    prune_versions(neg_dir, m.keep_versions)
    return folder, cands


class Refresher:
    """Watches the run's checkpoints and publishes a new negatives version when one is due.

    Run as a threaded Ray actor (`start_refresher`): `run()` loops in one thread, `stop()` and
    `status()` answer from another.
    """

    def __init__(self, job_json: str, run_dir: str, neg_dir: str, poll_s: float = 2.0):
        ray.data.DataContext.get_current().enable_progress_bars = False  # one line per refresh
        self.job = JobConfig.model_validate_json(job_json)
        self.run_dir, self.neg_dir = Path(run_dir), Path(neg_dir)
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.failures: list[dict] = []
        self.published: list[int] = []
        self.skipped: list[int] = []  # checkpoints whose weights equal the latest version's
        self.past_until: list[int] = []  # checkpoints past `mining.refresh_until`: not refreshed
        removed = clean_partial(self.neg_dir)  # a refresher that died mid-publish
        if removed:
            logger.warning("removed %d unfinished negatives folder(s) in %s", removed, self.neg_dir)
        latest = latest_version(self.neg_dir)
        # the warm start (v0) counts as "no refresh yet": the first checkpoint is due after N steps
        self.last_step = latest[0] if latest else -1
        self.task = load_mining_task(self.job.mining)
        self.tokens: TokenCache | None = None  # built (or read back) on the first refresh
        self.candidate_docs: set[int] | None = None  # the last refresh's candidates (partial refresh)

    def run(self) -> dict:
        while not self.stopping.is_set():
            found = newest_checkpoint(self.run_dir)
            if found and due(found.step, self.last_step, self.job.mining, found.total_steps):
                self.refresh(found.step, found.folder)
            elif found and past_refresh_until(found.step, found.total_steps, self.job.mining):
                self.note_past_until(found.step, found.total_steps)
            self.stopping.wait(self.poll_s)
        return self.status()

    def token_cache(self) -> TokenCache | None:
        """The job's token ids, tokenised once (None with `mining.token_cache: false`)."""
        if self.tokens is None and self.job.mining.token_cache:
            self.tokens = mining_tokens(self.job, self.task, self.neg_dir)
        return self.tokens

    def current_candidates(self) -> set[int]:
        """Documents in the queries' current candidate lists: the last refresh's, or after a
        (re)start the latest published version's negatives."""
        if self.candidate_docs is None:
            latest = latest_version(self.neg_dir)
            rows = read_version(latest[1])[0] if latest else []
            index = {doc_id: i for i, doc_id in enumerate(self.task.doc_ids)}
            self.candidate_docs = {index[d] for row in rows for d in row.get("negative_ids", [])
                                   if d in index}
        return self.candidate_docs

    def latest_model_sha256(self) -> str | None:
        """The weights hash the latest published version was mined from (None: BM25, or none)."""
        latest = latest_version(self.neg_dir)
        if latest is None:
            return None
        return json.loads((latest[1] / MANIFEST).read_text()).get("model_sha256")

    def refresh(self, step: int, checkpoint: Path) -> None:
        work = self.neg_dir / ".work" / f"model-{step}"
        print(f"[angle-ray] refresh: mining negatives from the step-{step} checkpoint", flush=True)
        started = time.perf_counter()
        try:
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(checkpoint / CHECKPOINT_MODEL_DIR, work)  # the checkpoint may be pruned meanwhile
            model_sha256 = weights_hash(work)
            if model_sha256 is not None and model_sha256 == self.latest_model_sha256():
                self.skipped.append(step)
                print(f"[angle-ray] refresh: step-{step} weights are byte-identical to the latest "
                      "version's; nothing published", flush=True)
                return
            keep = self.current_candidates() if self.job.mining.refresh_sample is not None else ()
            folder, cands = refresh_once(self.job, self.task, self.neg_dir, str(work), step,
                                         source=str(checkpoint), tokens=self.token_cache(),
                                         keep_docs=keep, model_sha256=model_sha256)
            self.candidate_docs = set(np.unique(cands.idx[cands.idx >= 0]).tolist())
            self.published.append(step)
            print(f"[angle-ray] refresh: published {folder.name} in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        except Exception as err:  # keep the previous version; try again on the next checkpoint
            logger.exception("refresh from step %d failed; the previous negatives stay", step)
            self.failures.append({"step": step, "error": f"{type(err).__name__}: {err}"})
        finally:
            self.last_step = max(self.last_step, step)
            shutil.rmtree(work, ignore_errors=True)

    def note_past_until(self, step: int, total_steps: int) -> None:
        if step in self.past_until:
            return
        if not self.past_until:
            print(f"[angle-ray] refresh: none from step {step} on (past mining.refresh_until="
                  f"{self.job.mining.refresh_until:g} of {total_steps} steps); training ends on "
                  "the latest version", flush=True)
        self.past_until.append(step)

    def stop(self) -> None:
        self.stopping.set()

    def status(self) -> dict:
        return {"published": list(self.published), "skipped": list(self.skipped),
                "past_refresh_until": list(self.past_until), "failures": list(self.failures),
                "last_step": self.last_step}


def refresher_options(mining: MiningConfig) -> dict:
    """The refresher actor's Ray options. No CPU: it mostly waits, and its encoders ask for
    their own resources. GPUs: `mining.refresher_gpus`, for its FAISS index (index.py uses
    only GPUs the actor holds)."""
    return {"num_cpus": 0, "num_gpus": mining.refresher_gpus, "max_restarts": -1,
            "max_task_retries": -1, "max_concurrency": 4}


def start_refresher(job: JobConfig, run_dir: Path, neg_dir: Path):
    """The refresher actor, restarted by Ray if its process dies (its state is on disk)."""
    actor_cls = ray.remote(**refresher_options(job.mining))(Refresher)
    handle = actor_cls.remote(job.model_dump_json(), str(run_dir), str(neg_dir))
    return handle, handle.run.remote()
