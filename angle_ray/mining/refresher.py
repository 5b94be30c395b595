"""The ANCE refresher: re-mines hard negatives from the newest checkpoint while training runs.

Training and mining meet in two places only (DESIGN.md): reported checkpoints and published
negatives. The refresher is one Ray actor beside the TorchTrainer in the same job:

    newest checkpoint (checkpoint_manager_snapshot.json, written by Ray Train after a
    checkpoint is fully persisted) -> copy its model/ aside (checkpoints may be pruned)
    -> encode corpus + training queries on the elastic encoder pool (encoder_pool.py)
    -> FAISS index, search, rank window, false-negative filter (index.py, select.py)
    -> publish negatives/v<step>/ atomically with a manifest (publish.py)

A refresh that fails (a bad checkpoint, the pool running out of retries, a full disk) is
logged and recorded; the previous version stays in place and nothing partial is published.
The actor restarts if its process dies and picks up from the versions on disk.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import ray
import ray.data

from angle_ray.config import JobConfig, MiningConfig
from angle_ray.mining.encoder_pool import encode_with_pool
from angle_ray.mining.index import dense_candidates
from angle_ray.mining.publish import clean_partial, latest_version, prune_versions, publish_version
from angle_ray.mining.static import mine_static
from angle_ray.mining.task import load_mining_task
from angle_ray.models.embedder import apply_prompt

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_MODEL_DIR = "model"  # the model folder inside a checkpoint (train/checkpoint.py)


def newest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest checkpoint Ray Train has registered for this run."""
    snap = run_dir / SNAPSHOT_FILE
    try:
        data = json.loads(snap.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-write
        return None
    latest = data.get("latest_checkpoint_result") or {}
    name, metrics = latest.get("checkpoint_dir_name"), latest.get("metrics") or {}
    if not name or "step" not in metrics:
        return None
    if metrics.get("total_steps") and metrics["step"] >= metrics["total_steps"]:
        return None  # the final checkpoint: training is over, negatives from it would go unused
    return int(metrics["step"]), run_dir / name


def due(step: int, last_step: int, mining: MiningConfig) -> bool:
    """Is a checkpoint at `step` worth a refresh, given the last published version's step?"""
    if step <= last_step:
        return False
    if mining.refresh_on_checkpoint:
        return True
    return step - max(last_step, 0) >= mining.refresh_every


def refresh_once(job: JobConfig, task, neg_dir: Path, model_ref: str, step: int,
                 source: str) -> Path:
    """Encode on the pool, index, search, select and publish one version; returns its folder."""
    m = job.mining
    started = time.perf_counter()
    texts = (apply_prompt(task.doc_texts, m.doc_prompt) + apply_prompt(task.query_texts, m.query_prompt))
    run = encode_with_pool(model_ref, texts, job.model, m.pool, max_length=m.max_length,
                           desc=f"refresh v{step}")
    n_docs = len(task.doc_texts)
    cands = dense_candidates(run.embeddings[n_docs:], run.embeddings[:n_docs], task.positives, m,
                             top=m.window[1])
    cands.seconds = {"encode_s": run.seconds, **cands.seconds}
    # a new random pick per version (ANCE samples afresh from each new ranking)
    rows, manifest = mine_static(m.model_copy(update={"seed": m.seed + step}), task=task,
                                 candidates=(cands, source))
    manifest["seconds"]["total_s"] = round(time.perf_counter() - started, 3)
    manifest.update(kind="refresh", step=step, encode_texts_per_s=run.texts_per_s,
                    pool={"min_actors": m.pool.min_actors, "max_actors": m.pool.max_actors})
    folder = publish_version(neg_dir, step, rows, manifest, fmt=m.output_format)
    prune_versions(neg_dir, m.keep_versions)
    return folder


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
        removed = clean_partial(self.neg_dir)  # a refresher that died mid-publish
        if removed:
            logger.warning("removed %d unfinished negatives folder(s) in %s", removed, self.neg_dir)
        latest = latest_version(self.neg_dir)
        # the warm start (v0) counts as "no refresh yet": the first checkpoint is due after N steps
        self.last_step = latest[0] if latest else -1
        self.task = load_mining_task(self.job.mining)

    def run(self) -> dict:
        while not self.stopping.is_set():
            found = newest_checkpoint(self.run_dir)
            if found and due(found[0], self.last_step, self.job.mining):
                self.refresh(*found)
            self.stopping.wait(self.poll_s)
        return self.status()

    def refresh(self, step: int, checkpoint: Path) -> None:
        work = self.neg_dir / ".work" / f"model-{step}"
        print(f"[angle-ray] refresh: mining negatives from the step-{step} checkpoint", flush=True)
        started = time.perf_counter()
        try:
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(checkpoint / CHECKPOINT_MODEL_DIR, work)  # the checkpoint may be pruned meanwhile
            folder = refresh_once(self.job, self.task, self.neg_dir, str(work), step,
                                  source=str(checkpoint))
            self.published.append(step)
            print(f"[angle-ray] refresh: published {folder.name} in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        except Exception as err:  # keep the previous version; try again on the next checkpoint
            logger.exception("refresh from step %d failed; the previous negatives stay", step)
            self.failures.append({"step": step, "error": f"{type(err).__name__}: {err}"})
        finally:
            self.last_step = max(self.last_step, step)
            shutil.rmtree(work, ignore_errors=True)

    def stop(self) -> None:
        self.stopping.set()

    def status(self) -> dict:
        return {"published": list(self.published), "failures": list(self.failures),
                "last_step": self.last_step}


def start_refresher(job: JobConfig, run_dir: Path, neg_dir: Path):
    """The refresher actor, restarted by Ray if its process dies (its state is on disk).

    It reserves no CPU: it mostly waits, and its encoders ask for their own resources.
    """
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1,
                           max_concurrency=4)(Refresher)
    handle = actor_cls.remote(job.model_dump_json(), str(run_dir), str(neg_dir))
    return handle, handle.run.remote()
