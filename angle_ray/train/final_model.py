"""The model a run hands over: which checkpoint, its folder with the training prompts, the
sentence-transformers export and a model card in both.

    chosen = choose_checkpoint(result.best_checkpoints, (result.checkpoint, result.metrics))
    final = export_final(cfg, plan.streams, chosen, run_dir)  # <run>/model (+ -sentence-transformers)
    final.write_cards(eval_table)                             # again once an evaluation ran

The export is the kept checkpoint with the highest dev metric (Ray Train keeps
`train.keep_checkpoints` of them, scored by `dev_metric` when the job has a dev set), ties going
to the later step; without a scored checkpoint, the last one. The prompts the corpora applied
while training (`text_prompt` -> "text", `query_prompt` -> "query", `doc_prompt` -> "document";
the mined pairs stream carries the `mining:` prompts) are saved with the model, so `Embedder` and
sentence-transformers apply the same ones.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from angle_ray.config import JobConfig
from angle_ray.data.formats import prompts_used
from angle_ray.models.backbone import ANGLE_RAY_FILE, load_embedding_model
from angle_ray.models.card import write_model_card
from angle_ray.models.export import export_sentence_transformers
from angle_ray.train.checkpoint import MODEL_DIR
from angle_ray.train.plan import StreamPlan
from angle_ray.train.progress import read_metrics

logger = logging.getLogger(__name__)

DEV_METRIC = "dev_metric"
CARD_RECORD = "angle_ray_card.json"  # the card's inputs, so a re-export can write the same card


@dataclass
class Chosen:
    """The checkpoint to export, the metrics reported with it, and whether the dev metric chose it."""

    checkpoint: Any  # a ray.train.Checkpoint (anything with as_directory() and path)
    metrics: dict
    by_dev_metric: bool


def _dev_value(metrics: Mapping | None) -> float | None:
    value = (metrics or {}).get(DEV_METRIC)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def choose_checkpoint(kept: Sequence[tuple[Any, Mapping]], latest: tuple[Any, Mapping] | None
                      ) -> Chosen | None:
    """The kept checkpoint with the best (highest) dev metric, ties to the later step; else the
    latest one (no checkpoint carries a finite dev metric); None without any checkpoint.

    ``kept``: Ray Train's ``result.best_checkpoints`` ((checkpoint, metrics) pairs);
    ``latest``: (``result.checkpoint``, ``result.metrics``)."""
    scored = [(ckpt, m) for ckpt, m in kept if _dev_value(m) is not None]
    if scored:
        ckpt, metrics = max(scored, key=lambda cm: (_dev_value(cm[1]), cm[1].get("step", 0)))
        return Chosen(ckpt, dict(metrics), by_dev_metric=True)
    if latest is None or latest[0] is None:
        return None
    return Chosen(latest[0], dict(latest[1] or {}), by_dev_metric=False)


def training_prompts(cfg: JobConfig, streams: Sequence[StreamPlan]) -> tuple[dict[str, str], str | None]:
    """(prompt name -> template, default prompt name) as the corpora applied them in training.

    A name two corpora fill differently keeps the first corpus' prompt (a warning says so).
    The default is "text" when Format A's prompt is the only one (every text got it in
    training); query / document prompts are asymmetric, so then there is no default."""
    prompts: dict[str, str] = {}
    for i, (ds, stream) in enumerate(zip(cfg.data, streams)):
        for name, prompt in prompts_used(ds, stream.fmt).items():
            if prompts.setdefault(name, prompt) != prompt:
                logger.warning("data.%d applies the %r prompt %r, an earlier corpus %r; the "
                               "exported model keeps the first", i, name, prompt, prompts[name])
    return prompts, ("text" if list(prompts) == ["text"] else None)


def save_prompts(model_dir: Path, prompts: Mapping[str, str], default: str | None) -> None:
    """Record the prompts in the folder's angle_ray.json (what load_model and Embedder read)."""
    meta_file = model_dir / ANGLE_RAY_FILE
    meta = json.loads(meta_file.read_text())
    meta.update({"prompts": dict(prompts), "default_prompt_name": default})
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")


def dev_description(cfg: JobConfig) -> str | None:
    ev = cfg.eval
    if ev.dev is not None:
        return f"STS Spearman x100 on {ev.dev.path}"
    if ev.retrieval_dev is not None:
        r = ev.retrieval_dev
        return (f"nDCG@10 x100 on the held-out {r.dev_fraction:g} of the judged queries of "
                f"{r.path} (qrels/{r.split}.tsv, seed {r.seed})")
    return None


def card_inputs(cfg: JobConfig, streams: Sequence[StreamPlan], chosen: Chosen, run_dir: Path,
                prompts: Mapping[str, str]) -> dict:
    """write_model_card's arguments but the folders and the eval table, from the run's records."""
    rows = read_metrics(run_dir)
    last_step = max([int(r["step"]) for r in rows if "step" in r] or [chosen.metrics.get("step", 0)])
    workers = next((int(r["world_size"]) for r in reversed(rows) if "world_size" in r), 1)
    seconds = sum(float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), (int, float)))
    loss = {k: v for k, v in cfg.loss.model_dump().items() if k.endswith("_w")}
    for i, ds in enumerate(cfg.data):
        loss.update({f"{k} (data.{i})": v for k, v in ds.loss.items()})
    chosen_card = None
    if chosen.by_dev_metric:
        chosen_card = {"step": chosen.metrics.get("step"), "metric": DEV_METRIC,
                       "value": chosen.metrics[DEV_METRIC], "last_step": last_step}
    notes = {"run folder": str(run_dir), "checkpoint": Path(str(chosen.checkpoint.path)).name}
    if dev_description(cfg):
        notes["dev_metric"] = dev_description(cfg)
    return {
        "base_model": cfg.model.name_or_path,
        "data": [{"path": ds.path, "format": s.fmt, "rows": s.rows} for ds, s in zip(cfg.data, streams)],
        "loss": loss,
        "train": {"steps": last_step, "seconds": round(seconds, 1), "lr": cfg.train.lr,
                  "batch": cfg.train.batch_size * workers},
        "pooling": cfg.model.pooling, "prompts": dict(prompts), "chosen_checkpoint": chosen_card,
        "extra": notes,
    }


@dataclass
class FinalModel:
    model_dir: Path
    st_dir: Path | None  # the sentence-transformers export, when written
    chosen: Chosen
    card: dict = field(default_factory=dict)  # card_inputs(...)

    def write_cards(self, eval_table: Mapping | None = None) -> list[Path]:
        """README.md (and its inputs, CARD_RECORD) in the model and sentence-transformers folders."""
        inputs = {**self.card, "eval_table": dict(eval_table or {})}
        return [_write_card(self.model_dir, inputs, self.st_dir),
                *([_write_card(self.st_dir, inputs, None)] if self.st_dir is not None else [])]


def _write_card(folder: Path, inputs: Mapping, st_dir: Path | None) -> Path:
    (folder / CARD_RECORD).write_text(json.dumps(inputs, indent=1, default=str) + "\n")
    return write_model_card(folder, sentence_transformers_dir=st_dir, **inputs)


def export_cards(source: str, model, folders: Sequence[Path], st_dir: Path | None) -> list[Path]:
    """Cards for the folders `angle-ray export` wrote from ``source``: the training's card
    (its CARD_RECORD) when ``source`` has one, else what the model itself says."""
    record_file = Path(source).expanduser() / CARD_RECORD
    if record_file.is_file():
        inputs = json.loads(record_file.read_text())
    else:
        inputs = {"base_model": model.base_model_path or source, "data": [], "loss": {}, "train": {},
                  "eval_table": {}, "chosen_checkpoint": None,
                  "extra": "No training record (angle_ray_card.json) was found beside the source "
                           "model, so its data, loss weights and training are not listed."}
    inputs.update({"pooling": model.cfg.pooling, "prompts": dict(model.prompts)})
    return [_write_card(folder, inputs, st_dir if folder != st_dir else None) for folder in folders]


def _export_st(cfg: JobConfig, model_dir: Path) -> Path | None:
    if not cfg.export.sentence_transformers:
        return None
    st_dir = model_dir.parent / (model_dir.name + "-sentence-transformers")
    try:
        return export_sentence_transformers(load_embedding_model(str(model_dir)), str(st_dir))
    except ValueError as err:  # pooling without a sentence-transformers equivalent
        logger.warning("sentence-transformers export skipped: %s", err)
        return None


def export_final(cfg: JobConfig, streams: Sequence[StreamPlan], chosen: Chosen | None,
                 run_dir: Path) -> FinalModel | None:
    """Copy the chosen checkpoint's model folder out, with the training prompts, write the
    sentence-transformers export and both model cards (no eval table yet)."""
    if chosen is None:
        return None
    out = Path(cfg.export.output_dir) if cfg.export.output_dir else run_dir / "model"
    with chosen.checkpoint.as_directory() as folder:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(Path(folder) / MODEL_DIR, out)
    prompts, default = training_prompts(cfg, streams)
    save_prompts(out, prompts, default)
    final = FinalModel(out, _export_st(cfg, out), chosen,
                       card_inputs(cfg, streams, chosen, run_dir, prompts))
    final.write_cards()
    step = chosen.metrics.get("step")
    why = (f"best {DEV_METRIC} {chosen.metrics[DEV_METRIC]:.2f}" if chosen.by_dev_metric
           else "the last one; no dev metric")
    print(f"[angle-ray] model written to {out} (checkpoint of step {step}: {why})", flush=True)
    return final
