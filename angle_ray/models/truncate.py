"""Embeddings of a model's intermediate layers, and models cut to a layer (ESE inference).

Layers are counted from 1 to N over the transformer layers; the embedding layer is not counted.
The embedding "at layer l" is what the model cut to its first l layers outputs, pooled with the
model's pooling: for encoders (BERT style) the output of layer l; for decoders with a final norm
(Llama / Qwen2 / Mistral ``norm``, ModernBERT ``final_norm``) that output passed through the final
norm, as the cut model applies it. Layer N is the model's ordinary embedding.

    layers = pooled_layers(model, ids, mask)            # [h_1, ..., h_N], each [B, H] fp32
    emb = embed_at(model, ids, mask, layer=4, dim=128)  # layer 4's embedding, first 128 dims
    small = cut_to_layer(model, 4)                      # a 4-layer copy (LoRA merged); .save() it
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from angle_ray.models.backbone import EmbeddingModel, final_norm
from angle_ray.models.billm import BILLM_CONFIG_KEY

__all__ = ["cut_to_layer", "embed_at", "final_norm", "layer_stack", "num_layers", "pooled_layers",
           "truncate_dims"]


def _base_model(backbone: nn.Module) -> nn.Module:
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def layer_stack(backbone: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer layers (``num_hidden_layers`` long)."""
    base = _base_model(backbone)
    depth = base.config.num_hidden_layers
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"{type(base).__name__}: no ModuleList of its {depth} layers found")


def num_layers(model: EmbeddingModel) -> int:
    return int(_base_model(model.backbone).config.num_hidden_layers)


def pooled_layers(model: EmbeddingModel, input_ids: Tensor, attention_mask: Tensor) -> list[Tensor]:
    """``[h_1, ..., h_N]``: each layer's pooled embedding ``[B, H]`` fp32 (see the module
    docstring); ``h_N`` equals ``model(input_ids, attention_mask)``. Keeps the graph. The same as
    ``model(ids, mask, all_layers=True)``, the form a training engine's wrapper can run."""
    return model.pooled_layers(input_ids, attention_mask)


def truncate_dims(emb: Tensor, dim: int | None) -> Tensor:
    """The first ``dim`` dimensions (all when None); normalise afterwards if wanted."""
    if dim is None:
        return emb
    if not 1 <= dim <= emb.shape[-1]:
        raise ValueError(f"dim={dim} must be between 1 and the embedding size {emb.shape[-1]}")
    return emb[..., :dim]


def embed_at(model: EmbeddingModel, input_ids: Tensor, attention_mask: Tensor,
             layer: int | None = None, dim: int | None = None) -> Tensor:
    """The embedding at ``layer`` (1..N; None = N) cut to its first ``dim`` dimensions."""
    if layer is None:
        return truncate_dims(model(input_ids, attention_mask), dim)
    depth = num_layers(model)
    if not 1 <= layer <= depth:
        raise ValueError(f"layer={layer} must be between 1 and the model's {depth} layers")
    return truncate_dims(pooled_layers(model, input_ids, attention_mask)[layer - 1], dim)


def cut_to_layer(model: EmbeddingModel, layer: int) -> EmbeddingModel:
    """A copy keeping the first ``layer`` layers (LoRA merged first); saves and reloads as such.

    A BiLLM start at or above the cut leaves no bidirectional layer: the copy is plain causal.
    """
    depth = num_layers(model)
    if not 1 <= layer <= depth:
        raise ValueError(f"layer={layer} must be between 1 and the model's {depth} layers")
    merged = model.merged()
    cut = copy.deepcopy(merged) if merged is model else merged
    base = _base_model(cut.backbone)
    del layer_stack(cut.backbone)[layer:]
    base.config.num_hidden_layers = layer
    if getattr(base.config, "layer_types", None):
        base.config.layer_types = list(base.config.layer_types)[:layer]
    if cut.cfg.billm.enabled and cut.cfg.billm.start_layer >= layer:
        cut.cfg = cut.cfg.model_copy(update={"billm": cut.cfg.billm.model_copy(update={"enabled": False})})
        delattr(base.config, BILLM_CONFIG_KEY)
    return cut
