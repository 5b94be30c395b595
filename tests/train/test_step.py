"""train_step on real MiniLM with the DDP engine in one process (no process group, world 1)."""

import numpy as np
import pytest
import torch

from angle_ray.config import LossConfig, ModelConfig, TrainConfig
from angle_ray.data.collate import TokenBatch, pad
from angle_ray.data.roles import ragged
from angle_ray.data.stream import text_hash
from angle_ray.losses import build_loss
from angle_ray.models.backbone import build_model
from angle_ray.train.engine import make_engine
from angle_ray.train.step import train_step

PAIRS = [("A man is playing a guitar.", "A person plays an instrument.", 0.9),
         ("A dog runs in the park.", "The stock market fell today.", 0.0),
         ("Two kids are cooking.", "Children prepare food.", 0.8),
         ("It is raining in Paris.", "Paris has rain today.", 0.7)]
PROBE = "backbone.encoder.layer.0.attention.self.query.weight"


def token_batch(tok, fmt: str, columns: dict[str, list[str]], k: int = 0, **extra) -> TokenBatch:
    cols = dict(extra)
    for role, texts in columns.items():
        cols[f"{role}_ids"] = ragged(tok(texts, truncation=True, max_length=32)["input_ids"])
        cols[f"{role}_hash"] = np.array([text_hash(t) for t in texts], dtype=np.int64)
    return TokenBatch(fmt, k, cols)


@pytest.fixture
def model():
    m = build_model(ModelConfig(max_length=32))
    m.eval()  # dropout off: the loss the test computes and the step's loss see one function
    return m


def _direct_embeddings(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).float()


def _run(model, loss_cfg, batch):
    engine = make_engine(model, TrainConfig(strategy="ddp", lr=1e-3, warmup_steps=0), 10,
                         torch.device("cpu"))
    before = model.state_dict()[PROBE].clone()
    result = train_step(engine, build_loss(loss_cfg), batch, torch.device("cpu"))
    assert not torch.equal(model.state_dict()[PROBE], before)  # the optimiser stepped
    return result


def test_format_a_step_returns_the_loss_of_its_embeddings_and_updates_the_model(model):
    batch = pad(token_batch(model.tokenizer, "A", {"text1": [p[0] for p in PAIRS],
                                                   "text2": [p[1] for p in PAIRS]},
                            label=np.array([p[2] for p in PAIRS], dtype=np.float32)),
                pad_id=model.tokenizer.pad_token_id, left_pad=False)
    loss_cfg = LossConfig(cosine_w=1.0, ibn_w=0.5, angle_w=0.02, ibn_threshold=0.6)
    emb = _direct_embeddings(model, batch)
    h = batch.hashes
    expected, parts = build_loss(loss_cfg)({"text1": emb[:4], "text2": emb[4:]}, "A",
                                           labels=batch.labels, ids={"text1": h[:4], "text2": h[4:]})
    result = _run(model, loss_cfg, batch)
    assert result.loss == pytest.approx(expected.item(), rel=1e-5)
    assert set(result.parts) == {"cosine", "ibn", "angle"}
    assert result.parts["ibn"] == pytest.approx(parts["ibn"].item(), rel=1e-5)
    p = result.parts
    assert result.loss == pytest.approx(1.0 * p["cosine"] + 0.5 * p["ibn"] + 0.02 * p["angle"],
                                        rel=1e-6)
    assert result.examples == 4
    assert result.tokens == int(batch.attention_mask.sum())


def test_format_c_step_stacks_the_negatives_per_query(model):
    queries = [p[0] for p in PAIRS]
    positives = [p[1] for p in PAIRS]
    negs = [["The cat sleeps.", "Stocks rose."], ["A bird sings.", "Paris is in France."],
            ["Rain all day.", "A guitar solo."], ["Kids at school.", "The dog barks."]]
    tokens = token_batch(model.tokenizer, "B", {"query": queries, "positive": positives})
    neg = token_batch(model.tokenizer, "B", {"query": [n[0] for n in negs],
                                             "positive": [n[1] for n in negs]})
    tokens = tokens.with_negatives([neg.token_ids("query"), neg.token_ids("positive")],
                                   [neg.hashes("query"), neg.hashes("positive")])
    batch = pad(tokens, pad_id=model.tokenizer.pad_token_id, left_pad=False)
    assert (batch.fmt, len(batch.roles), batch.size) == ("C", 4, 4)
    loss_cfg = LossConfig(cosine_w=0.3, ibn_w=1.0, cln_w=0.5, angle_w=0.02, margin_w=0.1)
    emb = _direct_embeddings(model, batch)
    h = batch.hashes
    expected, _ = build_loss(loss_cfg)(
        {"query": emb[:4], "positive": emb[4:8], "negative": torch.stack([emb[8:12], emb[12:]], 1)},
        "C", ids={"query": h[:4], "positive": h[4:8], "negative": torch.stack([h[8:12], h[12:]], 1)})
    result = _run(model, loss_cfg, batch)
    assert result.loss == pytest.approx(expected.item(), rel=1e-5)
    p = result.parts
    assert set(p) == {"ibn", "cln", "angle", "cosine", "margin"}
    assert result.loss == pytest.approx((1.0 * p["ibn"] + 0.5 * p["cln"]) / 2 + 0.02 * p["angle"]
                                        + 0.3 * p["cosine"] + 0.1 * p["margin"], rel=1e-6)
