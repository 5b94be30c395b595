"""Export a trained model for use outside angle-ray.

    export_hf(model, "out/hf")                  # transformers.AutoModel / load_model
    export_sentence_transformers(model, "out/st")
    SentenceTransformer("out/st").encode(texts)  # same vectors as angle_ray encode(model, texts)

Both merge LoRA adapters into the base weights first, so the result is a plain model folder.
The sentence-transformers folder is the HF folder plus the files that library reads:
modules.json (Transformer at the root, then 1_Pooling, optionally 2_Normalize),
sentence_bert_config.json (max_seq_length), 1_Pooling/config.json (the pooling_mode_* flags)
and config_sentence_transformers.json (the model's prompts and default prompt). The legacy module
names and flags are used on purpose: every sentence-transformers release from 2.x to 6.x loads them.
The HF folder keeps angle_ray.json (``ANGLE_RAY_FILE``), so ``load_model`` reads either back as
the angle-ray model it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from angle_ray.models.backbone import EmbeddingModel
from angle_ray.models.billm import billm_start_layer

logger = logging.getLogger(__name__)

# angle-ray pooling -> the sentence-transformers Pooling flag that computes the same vector
ST_POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "last": "pooling_mode_lasttoken",
}
_ALL_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_hf(model: EmbeddingModel, out_dir: str | Path) -> Path:
    """A plain HF model folder (LoRA merged): config, safetensors, tokenizer, angle_ray.json."""
    return model.merged().save(out_dir)


def st_prompts(prompts: dict[str, str]) -> dict[str, str]:
    """angle-ray prompt templates -> sentence-transformers prompts (a prefix the text follows).

    A template whose ``{text}`` slot is not at its end has no prefix form: it is left out, with a
    warning (the angle-ray folder keeps it)."""
    out = {}
    for name, template in prompts.items():
        prefix, slot, rest = template.partition("{text}")
        if slot and not rest:
            out[name] = prefix
        else:
            logger.warning("prompt %r (%r) is not a prefix followed by {text}; sentence-transformers "
                           "cannot apply it, so the export leaves it out", name, template)
    return out


def export_sentence_transformers(
    model: EmbeddingModel, out_dir: str | Path, normalize: bool | None = None
) -> Path:
    """A folder ``SentenceTransformer(out_dir)`` loads, giving the same embeddings as ``encode``.

    ``normalize`` appends a Normalize module (then it matches ``encode(..., normalize=True)``);
    None: as ``model.normalize`` says. The model's prompts become the folder's ``prompts``.
    cls_avg and first_last_avg have no sentence-transformers pooling, and sentence-transformers
    cannot run a BiLLM model's bidirectional layers: export those with ``export_hf``.
    """
    start = billm_start_layer(model.backbone)
    if start is not None:
        raise ValueError(
            f"this model is a BiLLM (bidirectional attention from layer {start} on): "
            "sentence-transformers would load it with causal attention in every layer and embed "
            "differently; use export_hf(model, out_dir) and load the folder with "
            "angle_ray.models.load_model (or Embedder.from_pretrained), which re-applies BiLLM"
        )
    if normalize is None:
        normalize = model.normalize
    pooling = model.cfg.pooling
    flag = ST_POOLING_FLAGS.get(pooling)
    if flag is None:
        raise ValueError(
            f"model.pooling={pooling!r} has no sentence-transformers equivalent (it supports "
            f"{', '.join(sorted(ST_POOLING_FLAGS))}); use export_hf(model, out_dir) and load the "
            "folder with angle_ray.models.load_model instead"
        )
    out = export_hf(model, out_dir)  # tokenizer_config.json keeps padding_side ("left" for LLMs)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out / "modules.json", modules)
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": model.cfg.max_length, "do_lower_case": False},
    )
    pooling_cfg = {"word_embedding_dimension": model.embedding_dim}
    pooling_cfg.update({f: f == flag for f in _ALL_FLAGS})
    pooling_cfg["include_prompt"] = True
    _write_json(out / "1_Pooling" / "config.json", pooling_cfg)
    prompts = st_prompts(model.prompts)
    default = model.default_prompt_name if model.default_prompt_name in prompts else None
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": prompts, "default_prompt_name": default, "similarity_fn_name": "cosine"},
    )
    return out
