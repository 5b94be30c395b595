"""The final export of a run: the kept checkpoint with the best dev metric (else the last), the
training prompts saved with the model, and model cards saying which checkpoint and why.

Fast tests build real Ray Train `Checkpoint`s by hand (folders laid out as a worker writes them,
around a tiny random-init Qwen2); the slow test runs a real Ray Train job whose dev metric falls
while training, so an earlier checkpoint, not the last, is the best one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint

from angle_ray.config import config_from_dict
from angle_ray.models.backbone import ANGLE_RAY_FILE, build_model, load_embedding_model
from angle_ray.models.card import CARD_FILE
from angle_ray.train.checkpoint import MODEL_DIR, STATE_FILE
from angle_ray.train.final_model import (
    CARD_RECORD,
    choose_checkpoint,
    export_cards,
    export_final,
    training_prompts,
)
from angle_ray.train.plan import StreamPlan
from angle_ray.train.progress import MetricsCsv

# --- which checkpoint ---------------------------------------------------------------------------


def test_the_best_dev_metric_wins_over_the_last_checkpoint():
    kept = [("ckpt-2", {"step": 2, "dev_metric": 70.0}), ("ckpt-4", {"step": 4, "dev_metric": 80.5}),
            ("ckpt-6", {"step": 6, "dev_metric": 75.0})]
    chosen = choose_checkpoint(kept, kept[-1])
    assert (chosen.checkpoint, chosen.metrics["step"], chosen.by_dev_metric) == ("ckpt-4", 4, True)


def test_a_tie_goes_to_the_later_step_and_unscored_checkpoints_are_ignored():
    kept = [("a", {"step": 2, "dev_metric": 80.0}), ("b", {"step": 4, "dev_metric": 80.0}),
            ("c", {"step": 6, "dev_metric": math.nan}), ("d", {"step": 8})]
    assert choose_checkpoint(kept, kept[-1]).checkpoint == "b"


def test_without_a_dev_metric_the_last_checkpoint_is_exported():
    kept = [("a", {"step": 2}), ("b", {"step": 4, "dev_metric": math.nan})]
    chosen = choose_checkpoint(kept, ("b", {"step": 4}))
    assert (chosen.checkpoint, chosen.by_dev_metric) == ("b", False)
    assert choose_checkpoint([], ("z", None)).metrics == {}
    assert choose_checkpoint([], (None, None)) is None
    assert choose_checkpoint([], None) is None


# --- which prompts ------------------------------------------------------------------------------


def _job(tmp_path: Path, tiny_llm_dir: str, data: list[dict], **sections):
    raw = {"model": {"name_or_path": tiny_llm_dir, "is_llm": True, "pooling": "last", "max_length": 32},
           "data": data, "loss": {"cosine_w": 1.0, "ibn_w": 0.5, "angle_w": 0.02},
           "train": {"name": "t", "storage_path": str(tmp_path / "runs"), "batch_size": 8, "lr": 1e-3},
           **sections}
    return config_from_dict(raw)


def _stream(fmt: str, rows: int = 100) -> StreamPlan:
    return StreamPlan(name="train_0", fmt=fmt, weight=1.0, num_negatives=1, rows=rows)


def test_a_format_a_prompt_is_the_default_text_prompt(tmp_path, tiny_llm_dir):
    cfg = _job(tmp_path, tiny_llm_dir, [{"path": "a.jsonl", "format": "A", "text_prompt": "sts: {text}"}])
    assert training_prompts(cfg, [_stream("A")]) == ({"text": "sts: {text}"}, "text")


def test_query_and_document_prompts_have_no_default_and_the_first_corpus_wins(tmp_path, tiny_llm_dir,
                                                                               caplog):
    cfg = _job(tmp_path, tiny_llm_dir, [
        {"path": "pairs.jsonl", "format": "B", "query_prompt": "query: {text}", "doc_prompt": "passage: {text}"},
        {"path": "c.jsonl", "format": "C", "query_prompt": "q: {text}"},
        {"path": "a.jsonl", "format": "A"}])
    prompts, default = training_prompts(cfg, [_stream("B"), _stream("C"), _stream("A")])
    assert prompts == {"query": "query: {text}", "document": "passage: {text}"} and default is None
    assert "data.1 applies the 'query' prompt 'q: {text}'" in caplog.text


# --- the export ---------------------------------------------------------------------------------


def _checkpoint(root: Path, model, step: int, dev: float) -> Checkpoint:
    """A checkpoint folder as rank 0 writes it, with weights that differ per step."""
    folder = root / f"checkpoint_{step:03d}"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save(folder / MODEL_DIR)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "final": False,
                                                 "metrics": {"step": step, "dev_metric": dev}}))
    return Checkpoint.from_directory(str(folder))


@pytest.fixture
def three_checkpoints(tmp_path, tiny_llm_dir):
    """Checkpoints of steps 2, 4, 6 with dev metrics 61, 64.5 (best), 60, and the run's metrics.csv."""
    cfg = _job(tmp_path, tiny_llm_dir, [{"path": "sts.jsonl", "format": "A", "label_range": [0, 5],
                                         "text_prompt": "Represent the sentence: {text}"}],
               eval={"dev": {"path": "dev.jsonl", "format": "A"}})
    model = build_model(cfg.model)
    run_dir = tmp_path / "runs" / "t"
    kept = [(_checkpoint(run_dir, model, s, d), {"step": s, "dev_metric": d, "total_steps": 6})
            for s, d in ((2, 61.0), (4, 64.5), (6, 60.0))]
    csv = MetricsCsv(run_dir / "metrics.csv")
    for step in range(1, 7):
        csv.add({"step": step, "loss": 1.0 / step, "seconds": 1.25, "world_size": 2})
    return cfg, kept, run_dir


def test_export_writes_the_best_checkpoint_with_its_prompts_and_cards(three_checkpoints):
    cfg, kept, run_dir = three_checkpoints
    final = export_final(cfg, [_stream("A", rows=512)], choose_checkpoint(kept, kept[-1]), run_dir)
    assert final.model_dir == run_dir / "model"
    best = Path(kept[1][0].path) / MODEL_DIR
    for name in ("model.safetensors", "config.json"):
        assert (final.model_dir / name).read_bytes() == (best / name).read_bytes()
    assert (final.model_dir / "model.safetensors").read_bytes() != (
        Path(kept[2][0].path) / MODEL_DIR / "model.safetensors").read_bytes()
    meta = json.loads((final.model_dir / ANGLE_RAY_FILE).read_text())
    assert meta["prompts"] == {"text": "Represent the sentence: {text}"}
    assert meta["default_prompt_name"] == "text"
    assert load_embedding_model(final.model_dir).prompts == meta["prompts"]
    st_config = json.loads((final.st_dir / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"text": "Represent the sentence: "}
    assert st_config["default_prompt_name"] == "text"
    for folder in (final.model_dir, final.st_dir):
        card = (folder / CARD_FILE).read_text()
        assert "The checkpoint of step 4: the best one by the dev metric `dev_metric` = 64.5" in card
        assert "Training ran to step 6." in card
        assert "- training time: 0 min 08 s (7.5 s)" in card  # 6 reports x 1.25 s
        assert "- batch size: 16" in card  # 8 per worker x 2 workers
        assert "| `sts.jsonl` | A | 512 |" in card
        assert "| ibn_w | 0.5 |" in card
        assert "No evaluation was run for this export." in card
        assert "`text`: `Represent the sentence: {text}`" in card


def test_cards_are_rewritten_with_the_eval_table_and_reused_by_a_re_export(three_checkpoints, tmp_path):
    cfg, kept, run_dir = three_checkpoints
    final = export_final(cfg, [_stream("A")], choose_checkpoint(kept, kept[-1]), run_dir)
    final.write_cards({"stsb": {"spearman": 71.25}})
    for folder in (final.model_dir, final.st_dir):
        assert "| stsb | spearman | 71.25 |" in (folder / CARD_FILE).read_text()
    model = load_embedding_model(final.model_dir)
    out = tmp_path / "exported" / "hf"
    model.save(out)
    export_cards(str(final.model_dir), model, [out], None)
    card = (out / CARD_FILE).read_text()
    assert "The checkpoint of step 4" in card and "| stsb | spearman | 71.25 |" in card
    assert json.loads((out / CARD_RECORD).read_text())["chosen_checkpoint"]["step"] == 4


def test_when_the_last_checkpoint_is_the_best_the_card_says_both(three_checkpoints):
    cfg, kept, run_dir = three_checkpoints
    rising = [(kept[0][0], {"step": 2, "dev_metric": 50.0}), (kept[2][0], {"step": 6, "dev_metric": 66.0})]
    final = export_final(cfg, [_stream("A")], choose_checkpoint(rising, rising[-1]), run_dir)
    card = (final.model_dir / CARD_FILE).read_text()
    assert ("The checkpoint of step 6, the last step, which is also the best one by the dev metric "
            "`dev_metric` = 66") in card
    assert "instead of the last step" not in card


def test_without_a_dev_set_the_card_says_the_last_step_was_exported(tmp_path, tiny_llm_dir):
    cfg = _job(tmp_path, tiny_llm_dir, [{"path": "sts.jsonl", "format": "A"}],
               export={"sentence_transformers": False})
    run_dir = tmp_path / "runs" / "t"
    last = _checkpoint(run_dir, build_model(cfg.model), 3, math.nan)
    final = export_final(cfg, [_stream("A")], choose_checkpoint([], (last, {"step": 3})), run_dir)
    assert final.st_dir is None and not final.chosen.by_dev_metric
    card = (final.model_dir / CARD_FILE).read_text()
    assert "The weights of the last training step." in card
    assert json.loads((final.model_dir / ANGLE_RAY_FILE).read_text())["prompts"] == {}


# --- a real run ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_exports_the_checkpoint_with_the_best_dev_metric(ray_local, data_dir, tmp_path):
    """MiniLM trained on STS-B pairs with their labels reversed, scored on the same pairs with the
    true labels: the dev metric falls as training goes on, so the last checkpoint is not the best."""
    from angle_ray.train.driver import run_training
    from angle_ray.train.progress import read_metrics

    rows = [json.loads(x) for x in (data_dir / "stsb" / "train.jsonl").open().readlines()[:64]]
    reversed_rows = [{**r, "label": 5.0 - float(r["label"])} for r in rows]
    train, dev = tmp_path / "reversed.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in reversed_rows))
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({
        "model": {"max_length": 32},
        "data": [{"path": str(train), "format": "A", "label_range": [0, 5], "text_prompt": "s: {text}"}],
        "loss": {"cosine_w": 1.0, "ibn_w": 0.0, "angle_w": 0.0},
        "eval": {"dev": {"path": str(dev), "format": "A", "label_range": [0, 5]}},
        "train": {"name": "best", "storage_path": str(tmp_path / "runs"), "batch_size": 16,
                  "max_steps": 6, "lr": 2e-4, "warmup_steps": 0, "schedule": "constant",
                  "log_every": 2, "checkpoint_every": 2, "keep_checkpoints": 3, "num_workers": 1,
                  "cpus_per_worker": 1, "strategy": "ddp", "shuffle_buffer": 0},
    })
    run = run_training(cfg)
    dev_by_step = {int(r["step"]): float(r["dev_metric"]) for r in read_metrics(run.run_dir)
                   if "dev_metric" in r}
    assert sorted(dev_by_step) == [2, 4, 6]
    best = max(dev_by_step, key=dev_by_step.get)
    assert best != 6, f"the setup should make an earlier checkpoint best: {dev_by_step}"
    assert run.final.chosen.by_dev_metric and run.final.chosen.metrics["step"] == best
    state = json.loads((Path(run.final.chosen.checkpoint.path) / STATE_FILE).read_text())
    assert state["step"] == best
    exported = (run.model_dir / "model.safetensors").read_bytes()
    assert exported == (Path(run.final.chosen.checkpoint.path) / MODEL_DIR / "model.safetensors").read_bytes()
    card = (run.model_dir / CARD_FILE).read_text()
    assert f"The checkpoint of step {best}: the best one by the dev metric `dev_metric`" in card
    assert "Training ran to step 6." in card
    assert json.loads((run.model_dir / ANGLE_RAY_FILE).read_text())["prompts"] == {"text": "s: {text}"}
    st_card = (run.model_dir.parent / "model-sentence-transformers" / CARD_FILE).read_text()
    assert f"The checkpoint of step {best}" in st_card
