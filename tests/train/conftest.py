"""Small, real training jobs for the distributed tests (tiny random-init LLM or MiniLM)."""

import json
from pathlib import Path

import pytest

from angle_ray.config import config_from_dict


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def stsb_slice(data_dir, tmp_path_factory) -> str:
    """The first 512 real STS-B train pairs as a JSONL file."""
    rows = [json.loads(line) for line in (data_dir / "stsb" / "train.jsonl").open()][:512]
    return write_rows(tmp_path_factory.mktemp("stsb") / "train512.jsonl", rows)


@pytest.fixture(scope="session")
def nli_slice(data_dir, tmp_path_factory) -> str:
    rows = [json.loads(line) for line in (data_dir / "nli" / "snli_dev_triples.jsonl").open()][:512]
    return write_rows(tmp_path_factory.mktemp("nli") / "triples512.jsonl", rows)


@pytest.fixture
def tiny_job(tmp_path, tiny_llm_dir, stsb_slice):
    """A job dict for the tiny LLM + LoRA on real STS-B rows; tests override what they pin down."""

    def make(**sections):
        raw = {
            "model": {"name_or_path": tiny_llm_dir, "is_llm": True, "pooling": "last",
                      "max_length": 32, "lora": {"enabled": True, "r": 4, "alpha": 8}},
            "data": [{"path": stsb_slice, "format": "A", "label_range": [0, 5]}],
            "loss": {"cosine_w": 1.0, "ibn_w": 1.0, "angle_w": 0.02},
            "train": {"name": "t", "storage_path": str(tmp_path / "runs"), "batch_size": 8,
                      "max_steps": 6, "lr": 1e-3, "log_every": 2, "checkpoint_every": 3,
                      "num_workers": 1, "cpus_per_worker": 0.5, "strategy": "deepspeed",
                      "shuffle_buffer": 64},
            "export": {"sentence_transformers": False},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section] = {**raw[section], **values}
            else:
                raw[section] = values
        return config_from_dict(raw)

    return make
