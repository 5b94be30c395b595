"""Backbones (encoder, causal LLM + LoRA), pooling, batched encoding, save/load and export."""

from angle_ray.models.backbone import (
    ANGLE_RAY_FILE,
    EmbeddingModel,
    build_model,
    load_embedding_model,
    load_tokenizer,
)
from angle_ray.models.default_model import resolve_model_path
from angle_ray.models.embedder import encode
from angle_ray.models.export import export_hf, export_sentence_transformers
from angle_ray.models.pooling import POOLING_STRATEGIES, pool
from angle_ray.models.tiny_llm import make_tiny_llm

__all__ = [
    "ANGLE_RAY_FILE",
    "POOLING_STRATEGIES",
    "EmbeddingModel",
    "build_model",
    "encode",
    "export_hf",
    "export_sentence_transformers",
    "load_embedding_model",
    "load_tokenizer",
    "make_tiny_llm",
    "pool",
    "resolve_model_path",
]
