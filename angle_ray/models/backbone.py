"""The embedding model: a Hugging Face backbone (encoder, or causal LLM + LoRA) plus pooling.

    model = build_model(ModelConfig())                       # all-MiniLM-L6-v2, offline
    batch = model.tokenize(["A plane is taking off.", "A man plays a flute."])
    emb = model(**batch)                                     # [2, 384] float32
    model.save("out/ckpt")                                   # safetensors + tokenizer + angle_ray.json
    same = load_embedding_model("out/ckpt")

Encoders (BERT / RoBERTa / ModernBERT style) load without their pooler (an unused pooler leaves
parameters without gradients, which DDP rejects) and pad on the right. Causal LLMs
(``model.is_llm``: Llama / Qwen / Mistral style) load as the base model without the LM head, pad
on the LEFT (so the last position is the last real token) with pad = eos when the tokenizer has
no pad token, get no ``token_type_ids``, and optionally LoRA adapters (PEFT), bf16 weights and
activation checkpointing.

A saved folder holds ``angle_ray.json`` (``ANGLE_RAY_FILE``: the ModelConfig, the base model path,
the prompts and the normalisation flag), the tokenizer, and either the full backbone (config.json +
model.safetensors) or, for LoRA, only the adapter (adapter_config.json + adapter_model.safetensors)
on top of the recorded base model. To load any model folder or name, use
``angle_ray.models.loader.load_model``.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from angle_ray.config import LoraConfig, ModelConfig
from angle_ray.models.billm import configure_billm
from angle_ray.models.default_model import resolve_model_path
from angle_ray.models.pooling import pool
from angle_ray.models.precision import TORCH_DTYPES, autocast
from angle_ray.version import __version__

logger = logging.getLogger(__name__)

ANGLE_RAY_FILE = "angle_ray.json"  # the marker (and settings) file of an angle-ray model folder


def final_norm(backbone: nn.Module) -> nn.Module | None:
    """The norm a model applies after its last layer (Llama / Qwen2 / Mistral ``norm``, ModernBERT
    ``final_norm``); None for BERT-style encoders."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    for name in ("norm", "final_norm"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


class EmbeddingModel(nn.Module):
    """A backbone and a pooling strategy: ``forward(input_ids, attention_mask) -> [B, H]`` fp32.

    Besides ``cfg`` it carries how the model is meant to be used (saved with it, exported to
    sentence-transformers, read back by ``load_model``):
      prompts              name -> prompt template with a ``{text}`` slot, e.g. {"query": "query: {text}"}
      default_prompt_name  the prompt applied when the caller names none (None: no prompt)
      normalize            whether its embeddings are meant to be L2-normalised
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        cfg: ModelConfig,
        base_model_path: str,
        embedding_dim: int,
        *,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.base_model_path = base_model_path
        self.embedding_dim = embedding_dim  # what forward returns (output_dim when set)
        self.full_dim = embedding_dim  # the hidden size
        self.output_dim: int | None = None  # set_output_dim: keep a prefix (evaluation only)
        self.prompts = dict(prompts or {})
        self.default_prompt_name = default_prompt_name
        self.normalize = normalize
        # from_pretrained gives eval mode: keep the wrapper's flag in step with the backbone's
        self.train(backbone.training)

    @property
    def is_lora(self) -> bool:
        return self.cfg.lora.enabled

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Pad to the longest text of the batch, truncate to ``max_length`` (default cfg.max_length)."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.cfg.max_length,
            return_tensors="pt",
        )
        batch = dict(enc)
        if self.cfg.is_llm:
            batch.pop("token_type_ids", None)
        return batch

    def forward(self, input_ids: Tensor, attention_mask: Tensor, all_layers: bool = False,
                autocast_dtype: str = "fp32", **ignored) -> Tensor:
        """Pooled embeddings ``[B, H]`` fp32; ``all_layers``: every layer's ``[N, B, H]`` (see
        ``pooled_layers``), through the same call so DDP / DeepSpeed wrappers see one forward.
        ``autocast_dtype``: autocast inside the call (the training engines; see there)."""
        with autocast(input_ids.device, autocast_dtype):
            return self._forward(input_ids, attention_mask, all_layers)

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, all_layers: bool) -> Tensor:
        if all_layers:
            return torch.stack(self.pooled_layers(input_ids, attention_mask))
        want_layers = self.cfg.pooling == "first_last_avg"
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if want_layers:
            kwargs["output_hidden_states"] = True
        if self.cfg.is_llm:
            kwargs["use_cache"] = False
        out = self.backbone(**kwargs)
        layers = tuple(h.float() for h in out.hidden_states) if want_layers else None
        emb = pool(out.last_hidden_state.float(), attention_mask, self.cfg.pooling, layers)
        return emb if self.output_dim is None else emb[:, : self.output_dim]

    def set_output_dim(self, dim: int | None) -> EmbeddingModel:
        """From now on embed to the first ``dim`` dimensions (None: all), e.g. to evaluate a
        Matryoshka / ESE prefix with code that takes a model. Not saved: ``save`` refuses it."""
        if dim is not None and not 1 <= dim <= self.full_dim:
            raise ValueError(f"dim={dim} must be between 1 and the embedding size {self.full_dim}")
        self.output_dim = dim
        self.embedding_dim = dim or self.full_dim
        return self

    def pooled_layers(self, input_ids: Tensor, attention_mask: Tensor) -> list[Tensor]:
        """``[h_1, ..., h_N]``: each transformer layer's pooled embedding ``[B, H]`` fp32, through
        the final norm where the model has one, i.e. what the model cut to l layers embeds
        (``angle_ray.models.truncate``); ``h_N`` equals ``forward``. Keeps the graph."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "output_hidden_states": True}
        if self.cfg.is_llm:
            kwargs["use_cache"] = False
        out = self.backbone(**kwargs)
        norm = final_norm(self.backbone)
        states = [norm(h) if norm is not None else h for h in out.hidden_states[1:-1]]
        states.append(out.last_hidden_state)
        first = out.hidden_states[0].float()  # first_last_avg averages the embedding layer in
        return [pool(h.float(), attention_mask, self.cfg.pooling, (first, h.float())) for h in states]

    def save(self, directory: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Write the weights (safetensors; LoRA: the adapter only), tokenizer and angle_ray.json.

        ``state_dict``: the backbone's full state dict when the live parameters are not (e.g.
        gathered from ZeRO-3 shards, or DeepSpeed's fp32 masters of its bf16 module); keys as in
        ``self.backbone.state_dict()``. ``config.json`` then records the dtype written.
        """
        if self.output_dim is not None:
            raise ValueError(f"this model embeds to its first {self.output_dim} dimensions "
                             "(set_output_dim), which a saved folder cannot record; save the full "
                             "model and truncate when encoding (Embedder.encode(truncate_dim=...))")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        # PEFT saves only the adapter; transformers saves config.json + model.safetensors
        if state_dict is None:
            self.backbone.save_pretrained(out)
        else:
            self.backbone.save_pretrained(out, state_dict=state_dict)
            _record_saved_dtype(out / "config.json", state_dict)
        self.tokenizer.save_pretrained(out)
        meta = {
            "angle_ray_version": __version__,
            "model": self.cfg.model_dump(mode="json"),
            "base_model_path": self.base_model_path,
            "embedding_dim": self.embedding_dim,
            **self.usage(),
        }
        (out / ANGLE_RAY_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    def usage(self) -> dict:
        """The prompts / default prompt / normalisation settings, as saved in ANGLE_RAY_FILE."""
        return {"prompts": dict(self.prompts), "default_prompt_name": self.default_prompt_name,
                "normalize": self.normalize}

    def merged(self) -> EmbeddingModel:
        """A copy with the LoRA adapter merged into the base weights (plain model); self if no LoRA."""
        if not self.is_lora:
            return self
        backbone = copy.deepcopy(self.backbone).merge_and_unload()
        cfg = ModelConfig.model_validate(
            {**self.cfg.model_dump(), "lora": {**self.cfg.lora.model_dump(), "enabled": False}}
        )
        return EmbeddingModel(
            backbone, copy.deepcopy(self.tokenizer), cfg, self.base_model_path, self.full_dim,
            **self.usage(),
        ).set_output_dim(self.output_dim)


def _record_saved_dtype(config: Path, state_dict: dict[str, Tensor]) -> None:
    """transformers writes the live module's dtype into config.json (which a plain
    ``from_pretrained`` loads in): make it the dtype of the weights written instead."""
    dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    if len(dtypes) != 1 or not config.is_file():  # LoRA writes no config.json
        return
    settings = json.loads(config.read_text())
    settings["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    config.write_text(json.dumps(settings, indent=2) + "\n")


def _accepts_pooling_flag(config) -> bool:
    """Whether the AutoModel class for ``config`` takes ``add_pooling_layer`` (BERT, RoBERTa...)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        model_cls = MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        return False
    return "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters


def load_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype the backbone's weights load in, for training and inference alike: weights as
    they train, fp32 master weights (autocast or DeepSpeed's bf16 runs ``cfg.dtype``, see
    ``angle_ray.train.engine``; inference autocasts the same way, ``embedder.encode``), so a
    bf16-trained folder loads the fp32 weights it saved. A frozen LoRA base loads in
    ``cfg.dtype`` (half the memory; it trained that way)."""
    if not cfg.lora.enabled:
        return torch.float32
    return TORCH_DTYPES[cfg.dtype]


def _load_backbone(path: str, cfg: ModelConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    kwargs = {"dtype": load_dtype(cfg)}
    if cfg.is_llm:
        config.use_cache = False  # embeddings never generate; no KV cache objects
    elif _accepts_pooling_flag(config):
        kwargs["add_pooling_layer"] = False
    archs = getattr(config, "architectures", None) or []
    if not cfg.is_llm and any(a.endswith("ForCausalLM") for a in archs):
        logger.warning(
            "%s is a causal LM (%s) but model.is_llm is false: it will pad on the right; set "
            "model.is_llm=true for left padding and last-token pooling",
            path,
            archs[0],
        )
    from transformers.utils import logging as hf_logging

    # the load report lists the pooler weights we skip on purpose; keep real errors only
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModel.from_pretrained(path, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def _load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    # padding_side goes in as a load argument: only init arguments are written back to
    # tokenizer_config.json by save_pretrained (an attribute set afterwards is lost on save)
    side = "left" if cfg.is_llm else "right"
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=side)
    tokenizer.padding_side = side
    tokenizer.init_kwargs["padding_side"] = side
    if cfg.is_llm:
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"tokenizer of {path} has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        tokenizer.model_input_names = names
        tokenizer.init_kwargs["model_input_names"] = names
    return tokenizer


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    """The tokenizer ``build_model(cfg)`` would use (left padding + pad token for LLMs).

    ``path`` defaults to ``cfg.name_or_path`` (the default model resolves to the packaged MiniLM);
    data pipelines call this to tokenise exactly as the model will.
    """
    return _load_tokenizer(path or resolve_model_path(cfg.name_or_path), cfg)


def _enable_checkpointing(backbone: nn.Module) -> None:
    """Activation checkpointing (non-reentrant) with input grads, so it also works under LoRA."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x; enables input grads
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        backbone.enable_input_require_grads()


def _peft_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,  # None: PEFT's default for the architecture
        task_type=TaskType.FEATURE_EXTRACTION,
    )


def _hidden_size(backbone: nn.Module) -> int:
    size = getattr(backbone.config, "hidden_size", None)
    return int(size) if size else int(backbone.get_input_embeddings().embedding_dim)


def _assemble(
    cfg: ModelConfig,
    weights_path: str,
    tokenizer_path: str,
    base_model_path: str,
    adapter_dir: str | None = None,
    usage: dict | None = None,
) -> EmbeddingModel:
    backbone = _load_backbone(weights_path, cfg)
    configure_billm(backbone, cfg)  # cfg.billm, else the start layer a saved HF config records
    dim = _hidden_size(backbone)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(backbone)
    if cfg.lora.enabled:
        from peft import PeftModel, get_peft_model

        with warnings.catch_warnings():
            # PEFT 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` property
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            if adapter_dir is None:
                backbone = get_peft_model(backbone, _peft_config(cfg.lora))
            else:
                backbone = PeftModel.from_pretrained(backbone, adapter_dir, is_trainable=True)
    tokenizer = _load_tokenizer(tokenizer_path, cfg)
    return EmbeddingModel(backbone, tokenizer, cfg, base_model_path, dim, **(usage or {}))


def build_model(cfg: ModelConfig, usage: dict | None = None) -> EmbeddingModel:
    """Load ``cfg.name_or_path`` (the default model resolves to the packaged MiniLM) for training.

    ``usage``: prompts / default_prompt_name / normalize to attach (see ``EmbeddingModel``).
    The weights load in fp32 whatever ``cfg.dtype`` (a LoRA base in ``cfg.dtype``, see ``load_dtype``)."""
    path = resolve_model_path(cfg.name_or_path)
    return _assemble(cfg, weights_path=path, tokenizer_path=path, base_model_path=path, usage=usage)


def load_embedding_model(directory: str | Path, dtype: str | None = None) -> EmbeddingModel:
    """Read a folder written by ``EmbeddingModel.save`` (or an export); ``dtype`` overrides cfg.dtype,
    the precision it runs in (its weights load as ``load_dtype`` says: fp32 unless a LoRA base).

    A LoRA folder loads its base model from the recorded path (falling back to
    ``cfg.name_or_path`` when that path does not exist here) and the adapter from the folder,
    trainable, so a reloaded model can continue training.
    """
    folder = Path(directory)
    meta_file = folder / ANGLE_RAY_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{folder} is not an angle-ray model folder (no {ANGLE_RAY_FILE}); to embed with a plain "
            "Hugging Face model use build_model(ModelConfig(name_or_path=...))"
        )
    meta = json.loads(meta_file.read_text())
    raw_cfg = meta["model"]
    if dtype is not None:
        raw_cfg = {**raw_cfg, "dtype": dtype}
    cfg = ModelConfig.model_validate(raw_cfg)
    usage = {key: meta[key] for key in ("prompts", "default_prompt_name", "normalize") if key in meta}
    if not cfg.lora.enabled:
        return _assemble(cfg, str(folder), str(folder), meta.get("base_model_path") or str(folder),
                         usage=usage)
    base = meta.get("base_model_path")
    if not base or not Path(base).exists():
        base = resolve_model_path(cfg.name_or_path)
    return _assemble(
        cfg,
        weights_path=base,
        tokenizer_path=str(folder),
        base_model_path=base,
        adapter_dir=str(folder),
        usage=usage,
    )
