"""One loader for every model a user can point at: an angle-ray folder, a sentence-transformers
folder, or a plain Hugging Face folder / name.

    model = load_model("runs/quickstart/model")             # an angle-ray folder, exactly as saved
    model = load_model("exported/sentence-transformers")    # its own pooling, normalisation, prompts
    model = load_model("all-MiniLM-L6-v2")                  # the default model (offline, packaged)
    model = load_model("/models/my-bert", pooling="cls", max_length=256)
    model = load_model(ref, base=job.model)                 # embed as the job trains (encoder pool)

What is read, by the files the folder holds (a hub id is looked up in the local HF cache first):

  angle_ray.json (``ANGLE_RAY_FILE``)  the saved ModelConfig, prompts and normalisation, as they
      were; ``max_length`` / ``dtype`` may override, a ``pooling`` that differs from the saved one
      is a ``ModelLoadError`` (the model was trained with its own).
  modules.json (sentence-transformers)  the Transformer module's folder, the Pooling module's mode
      (cls / mean / max / lasttoken -> cls / mean / max / last), whether a Normalize module
      follows, ``max_seq_length`` (sentence_bert_config.json, else the tokenizer's
      model_max_length) and the prompts of config_sentence_transformers.json. Any other module
      (Dense, LayerNorm...) is a ``ModelLoadError``: its vectors could not be reproduced.
  config.json only (plain HF)  pooling ``mean`` (``last`` with ``is_llm``), max_length 128.

Precedence for the last two: the keyword arguments, then ``base`` (a job's ModelConfig: when
given, the model is built exactly as the job trains it, so its pooling and max_length win over a
sentence-transformers folder's), then the folder's own settings, then the defaults.

Every loaded ``EmbeddingModel`` carries, besides ``model.cfg``:
  model.prompts: dict[str, str]        prompt name -> template with a ``{text}`` slot; a
                                       sentence-transformers prompt (a prefix) "query: " becomes
                                       "query: {text}" (use with ``apply_prompt``)
  model.default_prompt_name: str|None  the prompt sentence-transformers applies when none is named
  model.normalize: bool                True when the embeddings are meant L2-normalised (a
                                       Normalize module, or saved so)

A path that does not exist, a folder that holds no model, or a name that is neither packaged nor
in the local cache raises ``ModelLoadError`` naming the path and the files looked for.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from pydantic import ValidationError

from angle_ray.config import ModelConfig
from angle_ray.errors import UserError
from angle_ray.models.backbone import ANGLE_RAY_FILE, EmbeddingModel, build_model, load_embedding_model
from angle_ray.models.default_model import resolve_model_path

logger = logging.getLogger(__name__)

ST_MODULES_FILE = "modules.json"  # marks a sentence-transformers folder
ST_CONFIG_FILE = "config_sentence_transformers.json"  # its prompts
ST_TRANSFORMER_CONFIG = "sentence_bert_config.json"  # its max_seq_length (older releases)
HF_CONFIG_FILE = "config.json"
LOOKED_FOR = f"{ANGLE_RAY_FILE}, {ST_MODULES_FILE} or {HF_CONFIG_FILE}"
# sentence-transformers pooling mode -> angle-ray pooling (the others have no equivalent here)
ST_POOLING = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "last"}
_ST_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_NO_LIMIT = 100_000  # a tokenizer's model_max_length above this means "not set" (HF uses 1e30)


class ModelLoadError(UserError):
    """A model path or name that cannot be loaded; the message names it and what was looked for."""


@dataclass
class StFolder:
    """What a sentence-transformers folder says about how to embed with it."""

    weights_dir: Path  # the Transformer module's folder (config.json, weights, tokenizer)
    pooling: str
    normalize: bool
    max_length: int | None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({err})") from None


def _module_kind(module: dict) -> str:
    """`sentence_transformers.models.Pooling` / `...modules.pooling.Pooling` -> `Pooling`."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _st_pooling(config_file: Path) -> str:
    cfg = _read_json(config_file)
    mode = cfg.get("pooling_mode")  # sentence-transformers >= 6; older releases: one flag per mode
    if mode is None:
        modes = [name for flag, name in _ST_LEGACY_FLAGS.items() if cfg.get(flag)]
        mode = modes[0] if len(modes) == 1 else (modes or "mean")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if not isinstance(mode, str) or mode not in ST_POOLING:
        raise ModelLoadError(
            f"{config_file}: pooling {mode!r} has no angle-ray equivalent (supported: "
            f"{', '.join(sorted(ST_POOLING))})")
    if cfg.get("include_prompt") is False:
        logger.warning("%s: include_prompt is false, but angle-ray pools over the prompt's tokens "
                       "too; embeddings made with a prompt will differ from sentence-transformers'",
                       config_file)
    return ST_POOLING[mode]


def _st_max_length(weights_dir: Path) -> int | None:
    """sentence_bert_config.json's max_seq_length, else the tokenizer's model_max_length."""
    for name, key in ((ST_TRANSFORMER_CONFIG, "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        file = weights_dir / name
        value = _read_json(file).get(key) if file.is_file() else None
        if isinstance(value, (int, float)) and 0 < value <= _NO_LIMIT:
            return int(value)
    return None


def _st_prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """Prompts as templates: sentence-transformers prepends its prompt, so prefix + "{text}"."""
    file = folder / ST_CONFIG_FILE
    cfg = _read_json(file) if file.is_file() else {}
    prompts = {name: f"{prefix}{{text}}" for name, prefix in (cfg.get("prompts") or {}).items()}
    return prompts, cfg.get("default_prompt_name") or None


def read_st_folder(folder: Path) -> StFolder:
    """Read modules.json and the module configs of a sentence-transformers folder."""
    modules = _read_json(folder / ST_MODULES_FILE)
    by_kind = {_module_kind(m): m for m in modules}
    unknown = [m.get("type") for m in modules if _module_kind(m) not in ("Transformer", "Pooling",
                                                                         "Normalize")]
    if unknown or "Transformer" not in by_kind:
        raise ModelLoadError(
            f"{folder / ST_MODULES_FILE}: angle-ray runs a Transformer, then Pooling, then an optional "
            f"Normalize module; this folder has {[m.get('type') for m in modules]}")
    weights_dir = folder / by_kind["Transformer"].get("path", "")
    pooling_module = by_kind.get("Pooling")
    pooling = (_st_pooling(folder / pooling_module["path"] / "config.json")
               if pooling_module is not None else "mean")
    prompts, default_prompt_name = _st_prompts(folder)
    return StFolder(weights_dir=weights_dir, pooling=pooling, normalize="Normalize" in by_kind,
                    max_length=_st_max_length(weights_dir), prompts=prompts,
                    default_prompt_name=default_prompt_name)


def _looks_like_path(ref: str) -> bool:
    """A filesystem path (absolute, ./, ../, ~, or more than one '/'), not a hub id `org/name`."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or (os.sep != "/" and os.sep in ref)


def _cached_snapshot(name: str) -> Path | None:
    """The local HF cache's folder of a hub id (no download), or None when it is not there."""
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def locate(ref: str | os.PathLike) -> tuple[Path | None, str]:
    """(the local folder to read, or None for a hub id to hand to transformers; the ref as text)."""
    text = str(ref)
    resolved = Path(resolve_model_path(text)).expanduser()
    if resolved.exists():
        if not resolved.is_dir():
            raise ModelLoadError(f"{text}: is a file; a model is a folder holding {LOOKED_FOR}")
        return resolved, text
    if isinstance(ref, os.PathLike) or _looks_like_path(text):
        raise ModelLoadError(f"{text}: no such model folder (a folder holding {LOOKED_FOR})")
    return _cached_snapshot(text), text


def _load_angle_ray(folder: Path, pooling: str | None, max_length: int | None,
                    is_llm: bool, dtype: str | None) -> EmbeddingModel:
    meta = _read_json(folder / ANGLE_RAY_FILE)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ModelLoadError(f"{folder / ANGLE_RAY_FILE}: has no `model` settings; re-save the model")
    saved = ModelConfig.model_validate(meta["model"])
    if pooling and pooling != saved.pooling:
        raise ModelLoadError(f"{folder} was trained with pooling {saved.pooling!r}, not {pooling!r}; "
                             "drop --pooling or pass that value")
    if is_llm and not saved.is_llm:
        raise ModelLoadError(f"{folder} was saved as an encoder (model.is_llm false); drop --is-llm")
    model = load_embedding_model(folder, dtype=dtype)
    if max_length:
        model.cfg = model.cfg.model_copy(update={"max_length": max_length})
    return model


def _settings(weights: str, st: StFolder | None, base: ModelConfig | None,
              explicit: dict) -> ModelConfig:
    """The ModelConfig of a non-angle-ray model: explicit > base > the folder's own > defaults."""
    raw: dict = {}
    if base is not None:
        raw = base.model_dump(exclude={"name_or_path"})
    elif st is not None:
        raw = {"pooling": st.pooling, **({"max_length": st.max_length} if st.max_length else {})}
    raw.update({key: value for key, value in explicit.items() if value})
    if raw.get("is_llm") and "pooling" not in raw:
        raw["pooling"] = "last"
    try:
        return ModelConfig.model_validate({**raw, "name_or_path": weights})
    except ValidationError as err:
        problems = "; ".join(e["msg"] for e in err.errors())
        raise ModelLoadError(f"{weights}: these model settings do not go together: {problems}") from None


def _name_or_path(text: str, folder: Path | None, st: StFolder | None) -> str:
    """What ModelConfig.name_or_path records: a name stays a name (the packaged default model, a
    cached hub id), so a saved model finds its base on another machine; else the weights' folder."""
    if folder is None:
        return text
    weights = st.weights_dir if st else folder
    if not (weights / HF_CONFIG_FILE).is_file():
        raise ModelLoadError(f"{text}: {weights} holds no model (looked for {LOOKED_FOR})")
    named = weights == folder and not Path(text).expanduser().exists()
    return text if named else str(weights)


def load_model(ref: str | os.PathLike, *, pooling: str | None = None, max_length: int | None = None,
               is_llm: bool = False, dtype: str | None = None,
               base: ModelConfig | None = None) -> EmbeddingModel:
    """Load ``ref`` (a folder, the default model's name, or a hub id); see the module docstring."""
    folder, text = locate(ref)
    if folder is not None and (folder / ANGLE_RAY_FILE).is_file():
        return _load_angle_ray(folder, pooling, max_length, is_llm, dtype)
    st = read_st_folder(folder) if folder is not None and (folder / ST_MODULES_FILE).is_file() else None
    explicit = {"pooling": pooling, "max_length": max_length, "is_llm": is_llm, "dtype": dtype}
    cfg = _settings(_name_or_path(text, folder, st), st, base, explicit)
    usage = ({"prompts": st.prompts, "default_prompt_name": st.default_prompt_name,
              "normalize": st.normalize} if st else None)
    try:
        return build_model(cfg, usage=usage)
    except OSError as err:  # transformers: not a local folder, not in the cache, hub unreachable
        raise ModelLoadError(
            f"{text}: not a model folder here (looked for {LOOKED_FOR}) and not loadable as a "
            f"Hugging Face model id ({str(err).splitlines()[0]})") from None
