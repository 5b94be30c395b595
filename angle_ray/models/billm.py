"""BiLLM: bidirectional attention in a decoder LLM's upper layers (``model.billm``).

Layers ``start_layer`` (0-based) and above attend to every real token of the text, before and
after; the layers below stay causal. Llama / Qwen2 / Mistral-style decoders (a stack of layers
with ``self_attn``) in the installed transformers (5.x).

How. transformers builds ONE causal mask per forward (``masking_utils.create_causal_mask``) and
hands the same mask to every layer; the flag ``config.is_causal=False`` would switch the whole
model, not some layers. So each upper layer gets a forward pre-hook that swaps its mask for a
bidirectional one, and its attention module gets ``is_causal = False``:

  * a 4D mask ``[B, 1, T, T]`` (sdpa bool, eager additive float): the causal mask's LAST query
    row allows exactly the real keys (causality allows all of them there; padding removes the
    pads), for left and right padding alike, so that row broadcast to every query is the
    padding-only mask. Valid without a KV cache (query length = key length), as for embeddings.
  * ``None`` (sdpa without padding) or a 2D padding mask (flash attention): passed on; the
    attention function reads ``module.is_causal`` and, now False, attends both ways.

Flex attention (a BlockMask) and sliding-window layers are refused. The hooks are a plain
module-level function, so deep copies (``EmbeddingModel.merged``), PEFT wrapping and
``merge_and_unload`` keep them; hooks sit outside activation checkpointing's recomputation.

Saved with the model: ``start_layer`` is written to the backbone's HF config as
``angle_ray_billm_start_layer`` (so config.json of a save or merged export carries it), and the
job's ``model.billm`` lands in angle_ray.json. Loading re-applies it with ``configure_billm``.

    apply_billm(model.backbone, start_layer=2)
    configure_billm(backbone, cfg)        # from cfg.billm, else from the HF config's record
"""

from __future__ import annotations

from torch import Tensor, nn

from angle_ray.config import ModelConfig

BILLM_CONFIG_KEY = "angle_ray_billm_start_layer"


def _base_model(backbone: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the backbone itself)."""
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The decoder's layer stack: the first ModuleList whose every entry has ``self_attn``."""
    for module in _base_model(backbone).modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
            hasattr(layer, "self_attn") for layer in module
        ):
            return module
    raise ValueError(
        f"BiLLM: {type(_base_model(backbone)).__name__} has no decoder layer stack (a ModuleList "
        "of layers with `self_attn`); BiLLM supports Llama / Qwen2 / Mistral-style decoders"
    )


def _bidirectional_mask_hook(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace the layer's causal mask by the padding-only mask (see the module docstring)."""
    if "attention_mask" in kwargs:
        kwargs["attention_mask"] = _padding_only(kwargs["attention_mask"])
    elif len(args) > 1:
        args = (args[0], _padding_only(args[1]), *args[2:])
    return args, kwargs


def _padding_only(mask):
    if isinstance(mask, Tensor) and mask.dim() == 4:
        return mask[:, :, -1:, :].expand(mask.shape)
    if mask is None or isinstance(mask, Tensor):
        return mask  # None / 2D padding mask: the attention reads module.is_causal (now False)
    raise ValueError(f"BiLLM: unsupported attention mask type {type(mask).__name__} (flex attention?)")


def _has_hook(layer: nn.Module) -> bool:
    return any(hook is _bidirectional_mask_hook for hook in layer._forward_pre_hooks.values())


def _check_supported(config, layers: nn.ModuleList, start_layer: int) -> None:
    if not 0 <= start_layer < len(layers):
        raise ValueError(
            f"model.billm.start_layer={start_layer}, but the model has {len(layers)} layers "
            f"(valid: 0 to {len(layers) - 1})"
        )
    if getattr(config, "_attn_implementation", None) == "flex_attention":
        raise ValueError("BiLLM does not support flex attention; load with sdpa, eager or flash")
    layer_types = getattr(config, "layer_types", None) or []
    sliding = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
    if sliding:
        raise ValueError(f"BiLLM: layers {sliding} use sliding-window attention; not supported")


def apply_billm(backbone: nn.Module, start_layer: int) -> nn.Module:
    """Make layers ``start_layer``.. bidirectional, in place; record it in the HF config.

    Applying again with the same start is a no-op; another start is an error (the hooks of the
    first call cannot be told apart from a fresh model's).
    """
    base = _base_model(backbone)
    layers = decoder_layers(backbone)
    recorded = getattr(base.config, BILLM_CONFIG_KEY, None)
    if recorded is not None and any(_has_hook(layer) for layer in layers):
        if recorded != start_layer:
            raise ValueError(f"BiLLM already applied from layer {recorded}; cannot re-apply from {start_layer}")
        return backbone
    _check_supported(base.config, layers, start_layer)
    for layer in layers[start_layer:]:
        layer.self_attn.is_causal = False
        layer.register_forward_pre_hook(_bidirectional_mask_hook, with_kwargs=True)
    setattr(base.config, BILLM_CONFIG_KEY, start_layer)
    return backbone


def billm_start_layer(backbone: nn.Module) -> int | None:
    """The start layer recorded in the backbone's HF config (None: plain causal model)."""
    return getattr(_base_model(backbone).config, BILLM_CONFIG_KEY, None)


def configure_billm(backbone: nn.Module, cfg: ModelConfig) -> int | None:
    """Apply BiLLM as ``cfg.billm`` says, else as the loaded HF config records (an exported
    BiLLM model read back as a plain folder); returns the start layer, or None."""
    start = cfg.billm.start_layer if cfg.billm.enabled else billm_start_layer(backbone)
    if start is not None:
        apply_billm(backbone, start)
    return start
