"""Small, real training jobs for the distributed tests (tiny random-init LLM or MiniLM)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from angle_ray.config import ModelConfig, config_from_dict
from angle_ray.data.collate import TokenBatch, pad
from angle_ray.data.roles import ragged
from angle_ray.data.stream import text_hash
from angle_ray.models.backbone import build_model, load_embedding_model
from tests.ports import free_port


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def format_a_batch(rows: list[dict], max_length: int = 48):
    """Real STS-B rows (label 0-5) as one padded Format A batch, tokenised by MiniLM's tokenizer."""
    tok = build_model(ModelConfig(max_length=max_length)).tokenizer
    cols = {"label": np.array([r["label"] / 5 for r in rows], dtype=np.float32)}
    for role in ("text1", "text2"):
        texts = [r[role] for r in rows]
        cols[f"{role}_ids"] = ragged(tok(texts, truncation=True, max_length=max_length)["input_ids"])
        cols[f"{role}_hash"] = np.array([text_hash(t) for t in texts], dtype=np.int64)
    return pad(TokenBatch("A", 0, cols), pad_id=tok.pad_token_id, left_pad=False)


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


@pytest.fixture(scope="session")
def gloo_world_of_one():
    """A one-process gloo group with the variables Ray Train sets on a worker (DeepSpeed reads
    LOCAL_RANK); DeepSpeed on CPU (DS_ACCELERATOR is read when it first picks its accelerator).
    One group for the whole session: DeepSpeed caches its groups, so a second group made in
    the same process after the first was destroyed is unknown to it."""
    port = free_port()
    env = {"DS_ACCELERATOR": "cpu", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key)
        else:
            os.environ[key] = value


def assert_lora_trained(model_dir) -> None:
    """The exported model's LoRA B matrices moved off zero (PEFT starts them at zero)."""
    model = load_embedding_model(model_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
