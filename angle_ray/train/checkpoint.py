"""A worker's checkpoints: resume from Ray Train's latest one, save and report a new one.

A checkpoint folder holds every rank's engine state (DeepSpeed shards or the DDP files), and
from rank 0 `trainer_state.json` (step, final flag, metrics, job config, world size) and `model/`, a
complete model folder (what the refresher mines with and the driver exports).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import ray.train
from ray.train import Checkpoint

from angle_ray.config import JobConfig
from angle_ray.errors import UserError
from angle_ray.train.gather import world

STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"


class CheckpointError(UserError):
    """A checkpoint this run cannot resume from."""


def check_world_size(state: dict, world_size: int, any_size: bool, where: str) -> None:
    """Refuse to resume engine state written by another number of workers where the engine
    partitions its state by worker count (`any_size` False: DeepSpeed ZeRO-1..3)."""
    saved = state.get("world_size")  # absent in checkpoints written before it was recorded
    if any_size or saved is None or saved == world_size:
        return
    raise CheckpointError(
        f"{where}: written by {saved} workers, and this run has {world_size}; DeepSpeed resumes "
        f"ZeRO-1..3 state only on as many workers as wrote it: set train.num_workers={saved}, "
        "or start a new run (another train.name)")


def resume(engine, rank: int, total_steps: int) -> int:
    """Load the latest reported checkpoint into `engine`; returns its step (0 without one)."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as folder:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
        check_world_size(state, world()[1], engine.resumes_on_any_world_size, ckpt.path)
        engine.load(folder)
        step = state["step"]
    if rank == 0:
        print(f"[angle-ray] resumed from checkpoint at step {step}/{total_steps}", flush=True)
    return step


def write_model_folder(engine, folder: str, rank: int) -> None:
    """Rank 0 writes the complete model (gathered under ZeRO-3) with the fp32 weights that
    trained, not the bf16 copy DeepSpeed's bf16 mode runs; every rank must call it."""
    masters = engine.fp32_weights(keep=rank == 0)  # a collective under ZeRO
    with engine.full_weights():
        if rank == 0:
            state = {**engine.model.backbone.state_dict(), **masters} if masters else None
            engine.model.save(folder, state_dict=state)


def save_and_report(engine, job: JobConfig, step: int, metrics: dict, rank: int,
                    last: bool) -> None:
    """Every rank writes its engine shard; rank 0 adds the step, config and an HF model folder."""
    with tempfile.TemporaryDirectory(prefix="angle-ckpt-") as folder:
        engine.save(folder)
        write_model_folder(engine, os.path.join(folder, MODEL_DIR), rank)
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps(
                {"step": step, "final": last, "metrics": metrics, "world_size": world()[1],
                 "config": job.model_dump(mode="json")}, indent=1))
        wrote = any(Path(folder).iterdir())
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if wrote else None)
