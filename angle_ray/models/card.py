"""The model card: a README.md in an exported folder saying what the model is and how to use it.

    write_model_card(
        "runs/quickstart/model-sentence-transformers",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        data=[{"path": "stsb/train.jsonl", "format": "A", "rows": 5749}],
        loss={"cosine_w": 1.0, "ibn_w": 1.0, "angle_w": 0.02},
        train={"steps": 360, "seconds": 412.5, "lr": 5e-5, "batch": 32},
        eval_table={"stsb": {"spearman": 83.68}, "sickr": 79.1},
        pooling="mean",
        prompts={"query": "query: {text}"},
        chosen_checkpoint={"step": 300, "metric": "stsb_dev_spearman", "value": 87.2},
    )

Sections: what it is, base model, training data, loss weights, training (steps, time, lr,
batch), evaluation table, which checkpoint was exported and why (the best by dev metric, or the
last step when none was scored), pooling and prompts, and usage with ``angle_ray.Embedder`` and
with sentence-transformers. The usage snippets name the folder as written, so they run as they
stand (tests execute them); the sentence-transformers one appears when the folder (or
``sentence_transformers_dir``) holds a modules.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from angle_ray.models.backbone import ANGLE_RAY_FILE
from angle_ray.models.loader import ST_CONFIG_FILE, ST_MODULES_FILE
from angle_ray.models.onnx_export import META_FILE, ONNX_DIR

CARD_FILE = "README.md"
_EXAMPLE_TEXTS = ["A man is playing a flute.", "A man plays the flute.", "A plane is taking off."]


def _fmt(value) -> str:
    """Numbers as a reader wants them: 5e-05, 0.02, 83.68, 5749."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:g}" if abs(value) < 1e-3 or value.is_integer() else f"{value:.4g}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _front_matter(base_model: str) -> list[str]:
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [sentence-transformers, sentence-similarity, feature-extraction, angle-ray]"]
    if not base_model.startswith(("/", ".", "~")):  # a hub id, not a path on the training machine
        lines.append(f"base_model: {base_model}")
    return [*lines, "---", ""]


def _data_section(data: Sequence[Mapping]) -> list[str]:
    lines = ["## Training data", "", "| file | format | rows |", "|---|---|---:|"]
    for item in data:
        rows = item.get("rows")
        lines.append(f"| `{item['path']}` | {item.get('format', 'auto')} | "
                     f"{_fmt(rows) if rows is not None else 'not counted'} |")
    return [*lines, ""]


def _loss_section(loss: Mapping[str, float]) -> list[str]:
    lines = ["## Loss weights", "", "| term | weight |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(weight)} |" for name, weight in loss.items()]
    return [*lines, ""]


def _train_section(train: Mapping) -> list[str]:
    lines = ["## Training", ""]
    named = {"steps": "steps", "seconds": "training time", "lr": "learning rate",
             "batch": "batch size"}
    for key, value in train.items():
        label = named.get(key, key)
        shown = f"{_duration(value)} ({_fmt(value)} s)" if key == "seconds" else _fmt(value)
        lines.append(f"- {label}: {shown}")
    return [*lines, ""]


def _eval_section(eval_table: Mapping) -> list[str]:
    lines = ["## Evaluation", ""]
    if not eval_table:
        return [*lines, "No evaluation was run for this export.", ""]
    lines += ["| task | metric | value |", "|---|---|---:|"]
    for task, result in eval_table.items():
        metrics = result if isinstance(result, Mapping) else {"score": result}
        lines += [f"| {task} | {metric} | {_fmt(value)} |" for metric, value in metrics.items()]
    return [*lines, ""]


def _checkpoint_section(chosen: Mapping | None) -> list[str]:
    lines = ["## Exported checkpoint", ""]
    if chosen is None:
        text = ("The weights of the last training step. No checkpoint with a dev metric was kept "
                "(no dev evaluation ran), so there was no better one to choose.")
    elif chosen.get("last_step") == chosen["step"]:  # the best one is the last one
        text = (f"The checkpoint of step {chosen['step']}, the last step, which is also the best "
                f"one by the dev metric `{chosen['metric']}` = {_fmt(chosen['value'])} among the "
                "checkpoints kept.")
    else:
        text = (f"The checkpoint of step {chosen['step']}: the best one by the dev metric "
                f"`{chosen['metric']}` = {_fmt(chosen['value'])} among the checkpoints kept, "
                "exported instead of the last step's weights because it scored best on held-out "
                "data.")
        if chosen.get("last_step") is not None:
            text += f" Training ran to step {chosen['last_step']}."
    return [*lines, text, ""]


def _pooling_section(pooling: str, prompts: Mapping[str, str]) -> list[str]:
    lines = ["## Pooling and prompts", "", f"- pooling: `{pooling}`"]
    if not prompts:
        return [*lines, "- prompts: none (texts are embedded as they are)", ""]
    lines.append("- prompts (the text goes into the `{text}` slot; pass `prompt_name=`):")
    lines += [f"  - `{name}`: `{template}`" for name, template in prompts.items()]
    return [*lines, ""]


def _st_prompt_names(st_dir: Path) -> set[str]:
    config = st_dir / ST_CONFIG_FILE
    return set(json.loads(config.read_text()).get("prompts") or {}) if config.is_file() else set()


def _onnx_usage(model_dir: Path, with_prompt: str) -> list[str]:
    """The onnxruntime snippet, for a folder ``export_onnx`` wrote (int8 when it has one)."""
    meta_file = model_dir / ONNX_DIR / META_FILE
    if not meta_file.is_file():
        return []
    variant = "int8" if "int8" in json.loads(meta_file.read_text()).get("files", {}) else "fp32"
    return ["With onnxruntime (no PyTorch model; `pip install 'angle-ray[onnx]'`):", "", "```python",
            "from angle_ray.models.onnx_export import OnnxEmbedder", "",
            f'onnx_model = OnnxEmbedder("{model_dir}", variant="{variant}")',
            f"vecs = onnx_model.encode({_EXAMPLE_TEXTS!r}{with_prompt})",
            "print(vecs.shape)", "print(vecs @ vecs.T)", "```", ""]


def _usage_section(model_dir: Path, st_dir: Path | None, prompts: Mapping[str, str]) -> list[str]:
    name = next(iter(prompts), None)
    with_prompt = f', prompt_name="{name}"' if name else ""
    lines = ["## Usage", "", "With angle-ray (`pip install angle-ray`):", "", "```python",
             "from angle_ray import Embedder", "",
             f'embedder = Embedder.from_pretrained("{model_dir}")',
             f"vecs = embedder.encode({_EXAMPLE_TEXTS!r}{with_prompt})",
             "print(vecs.shape)", "print(embedder.similarity(vecs, vecs))", "```", "",
             *_onnx_usage(model_dir, with_prompt)]
    if st_dir is None:
        note = ("This folder has no sentence-transformers layout (its pooling has no "
                "sentence-transformers equivalent); load it with angle-ray.")
        return [*lines, note, ""]
    st_prompt = f', prompt_name="{name}"' if name and name in _st_prompt_names(st_dir) else ""
    lines += ["With sentence-transformers:", "", "```python",
              "from sentence_transformers import SentenceTransformer", "",
              f'model = SentenceTransformer("{st_dir}")',
              f"vecs = model.encode({_EXAMPLE_TEXTS!r}{st_prompt})",
              "print(vecs.shape)", "print(model.similarity(vecs, vecs))", "```", ""]
    return lines


def _intro(model_dir: Path, base_model: str) -> list[str]:
    meta_file = model_dir / ANGLE_RAY_FILE
    dim = json.loads(meta_file.read_text()).get("embedding_dim") if meta_file.is_file() else None
    size = f"a {dim}-dimensional vector" if dim else "a vector"
    what = (f"A text-embedding model fine-tuned from `{base_model}` with angle-ray (AnglE-optimised "
            f"losses, trained on Ray Train). It maps a text to {size}; compare two texts by the "
            "cosine similarity of their vectors (semantic similarity, retrieval, clustering).")
    return [f"# {model_dir.name}", "", what, "", f"Base model: `{base_model}`", ""]


def _extra_section(extra: Mapping | str | None) -> list[str]:
    if not extra:
        return []
    if isinstance(extra, str):
        return ["## Notes", "", extra, ""]
    return ["## Notes", "", *[f"- {key}: {_fmt(value)}" for key, value in extra.items()], ""]


def write_model_card(
    model_dir: str | Path,
    *,
    base_model: str,
    data: Sequence[Mapping],
    loss: Mapping[str, float],
    train: Mapping,
    eval_table: Mapping,
    pooling: str,
    prompts: Mapping[str, str],
    chosen_checkpoint: Mapping | None,
    extra: Mapping | str | None = None,
    sentence_transformers_dir: str | Path | None = None,
) -> Path:
    """Write ``model_dir/README.md`` (see the module docstring); returns its path.

    ``data``: one mapping per corpus with ``path``, ``format`` and ``rows`` (None: not counted).
    ``train``: ``steps``, ``seconds``, ``lr``, ``batch`` (any other keys are listed too).
    ``eval_table``: task -> a number, or task -> {metric: number}.
    ``chosen_checkpoint``: {"step", "metric", "value"[, "last_step"]}, or None when the last
    step's weights were exported. ``sentence_transformers_dir``: the folder the
    sentence-transformers snippet loads (default: ``model_dir`` when it holds a modules.json).
    """
    folder = Path(model_dir)
    st_dir = Path(sentence_transformers_dir) if sentence_transformers_dir else (
        folder if (folder / ST_MODULES_FILE).is_file() else None)
    lines = [*_front_matter(base_model), *_intro(folder, base_model), *_data_section(data),
             *_loss_section(loss), *_train_section(train), *_eval_section(eval_table),
             *_checkpoint_section(chosen_checkpoint), *_pooling_section(pooling, prompts),
             *_usage_section(folder, st_dir, prompts), *_extra_section(extra)]
    card = folder / CARD_FILE
    card.write_text("\n".join(lines).rstrip() + "\n")
    return card
