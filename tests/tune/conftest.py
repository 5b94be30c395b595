"""Tiny real sweeps: all-MiniLM-L6-v2 on a slice of STS-B train, a small STS-B dev slice."""

import json
from pathlib import Path

import pytest
import yaml


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def tiny_job_file(data_dir, tmp_path_factory) -> Path:
    """A job of 8 steps of batch 16 with a dev evaluation every 2 steps (ASHA rungs 2, 4, 8)."""
    folder = tmp_path_factory.mktemp("tiny-job")
    train = [json.loads(x) for x in (data_dir / "stsb" / "train.jsonl").open()][:256]
    dev = [json.loads(x) for x in (data_dir / "stsb" / "validation.jsonl").open()][::25]  # 60 pairs
    job = {
        "model": {"name_or_path": "all-MiniLM-L6-v2", "pooling": "mean", "max_length": 32},
        "data": [{"path": write_rows(folder / "train256.jsonl", train), "format": "A",
                  "label_range": [0, 5]}],
        "loss": {"cosine_w": 1.0, "ibn_w": 0.0, "angle_w": 0.02},
        "train": {"name": "tiny", "storage_path": str(folder / "runs"), "batch_size": 16,
                  "max_steps": 8, "eval_every": 2, "checkpoint_every": 8, "log_every": 2,
                  "lr": 5.0e-5, "num_workers": 1, "cpus_per_worker": 0.5, "shuffle_buffer": 64,
                  "keep_checkpoints": 1},
        "eval": {"dev": {"path": write_rows(folder / "dev60.jsonl", dev), "format": "A",
                         "label_range": [0, 5]}},
        "export": {"sentence_transformers": False},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path
