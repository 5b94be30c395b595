"""What a training job with a `mining:` section adds to the plain driver.

    cfg, neg_dir = prepare_mining(cfg, run_dir)  # pairs stream + warm-start version v0
    handle, run = start_refresher(cfg, run_dir, neg_dir)   # mining/refresher.py; only with
    ...fit...                                               # mining.refresh_every / _on_checkpoint
    stop_refresher(handle, run, run_dir)

The mined queries and their positives become one more Format B training stream, the first in
`data` (`<run>/negatives/train_pairs.jsonl`); the training workers add each query's k negatives
from the newest published version (angle_ray/train/negatives_feed.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import ray

from angle_ray.config import DatasetConfig, JobConfig
from angle_ray.data.location import expand_path
from angle_ray.data.roles import POSITIVE, QUERY
from angle_ray.mining.publish import latest_version, publish_version
from angle_ray.mining.static import mine_static
from angle_ray.mining.task import load_mining_task

NEGATIVES_DIR = "negatives"
PAIRS_FILE = "train_pairs.jsonl"


def check_holdout(cfg: JobConfig) -> None:
    """Mined (trained) queries must never be the dev queries eval.retrieval_dev scores."""
    m, r = cfg.mining, cfg.eval.retrieval_dev
    if r is None or Path(expand_path(r.path)).resolve() != Path(expand_path(m.beir)).resolve():
        return
    if (r.split, r.dev_fraction, r.seed) != (m.split, m.holdout_fraction, m.holdout_seed):
        raise ValueError(
            "mining.beir and eval.retrieval_dev name the same folder but split it differently: "
            f"mining (split {m.split!r}, holdout_fraction {m.holdout_fraction}, holdout_seed "
            f"{m.holdout_seed}) vs eval.retrieval_dev (split {r.split!r}, dev_fraction "
            f"{r.dev_fraction}, seed {r.seed}); make them equal so no dev query is trained on")


def write_pairs(task, path: Path) -> int:
    """One Format B row per (training query, positive); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for qi, di in task.pairs():
            f.write(json.dumps({QUERY: task.query_texts[qi], POSITIVE: task.doc_texts[di]}) + "\n")
    tmp.replace(path)
    return len(task.pairs())


def warm_start(cfg: JobConfig, task, neg_dir: Path) -> None:
    """Publish v0 from BM25 or a model before step 1, unless a version exists (a resumed run)."""
    m = cfg.mining
    if m.warm_start == "none" or latest_version(neg_dir) is not None:
        return
    print(f"[angle-ray] mining: warm start from {m.warm_start} ({len(task.query_ids)} queries, "
          f"{len(task.doc_ids)} docs)", flush=True)
    model = None if m.warm_start == "bm25" else m.warm_start
    rows, manifest = mine_static(m, model=model, task=task, show_progress=False)
    folder = publish_version(neg_dir, 0, rows, {**manifest, "step": 0}, fmt=m.output_format)
    print(f"[angle-ray] mining: published {folder}", flush=True)


def prepare_mining(cfg: JobConfig, run_dir: Path) -> tuple[JobConfig, Path | None]:
    """The config with the mined pairs stream first in `data`, and where the negatives versions
    are published (None, and the config unchanged, without a `mining:` section).

    With a dynamic refresh, checkpoints come at least every `refresh_every` steps (the refresher
    mines from checkpoints).
    """
    if cfg.mining is None:
        return cfg, None
    m = cfg.mining
    check_holdout(cfg)
    neg_dir = run_dir / NEGATIVES_DIR
    task = load_mining_task(m)
    write_pairs(task, neg_dir / PAIRS_FILE)
    warm_start(cfg, task, neg_dir)
    pairs = DatasetConfig(path=str(neg_dir / PAIRS_FILE), format="B", query_prompt=m.query_prompt,
                          doc_prompt=m.doc_prompt)
    train = cfg.train
    if m.refresh_every is not None and train.checkpoint_every > m.refresh_every:
        train = train.model_copy(update={"checkpoint_every": m.refresh_every})
    cfg = cfg.model_copy(update={"data": [pairs, *cfg.data], "train": train})
    return cfg, neg_dir


def stop_refresher(handle, run_ref, run_dir: Path) -> dict:
    """Stop the refresher after training and write what it did to negatives/refresher.json."""
    handle.stop.remote()
    try:  # waits for a refresh under way to publish (or fail) first
        status = ray.get(run_ref)
    except ray.exceptions.RayError as err:  # never hide the training result behind it
        status = {"published": [], "failures": [{"error": f"{type(err).__name__}: {err}"}]}
    (run_dir / NEGATIVES_DIR / "refresher.json").write_text(json.dumps(status, indent=1))
    print(f"[angle-ray] refresher: published {len(status['published'])} version(s) "
          f"{status['published']}, {len(status['failures'])} failed", flush=True)
    return status
