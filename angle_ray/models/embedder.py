"""Batched inference: texts -> float32 numpy embeddings, in input order.

    vecs = encode(model, ["A plane is taking off.", "A man plays a flute."], normalize=True)
    docs = encode(model, corpus, batch_size=256, prompt="passage: {text}", dtype="bf16")

Texts are sorted longest first so each batch pads to similar lengths, then put back in the
caller's order. The model runs in eval mode (restored afterwards) under ``torch.inference_mode``
on the device its parameters are on.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from angle_ray.models.backbone import EmbeddingModel

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def apply_prompt(texts: list[str], prompt: str | None) -> list[str]:
    """Put every text into ``prompt``'s ``{text}`` slot (other braces are left alone)."""
    if prompt is None:
        return list(texts)
    if "{text}" not in prompt:
        raise ValueError(f"prompt {prompt!r} has no '{{text}}' slot")
    return [prompt.replace("{text}", t) for t in texts]


def encode(
    model: EmbeddingModel,
    texts: list[str],
    batch_size: int = 64,
    prompt: str | None = None,
    normalize: bool = False,
    dtype: str = "fp32",
    show_progress: bool = True,
    desc: str = "encode",
) -> np.ndarray:
    """Embed ``texts`` with ``model``; returns a float32 array of shape (len(texts), H)."""
    if dtype not in _AUTOCAST:
        raise ValueError(f"encode dtype {dtype!r} is not one of {sorted(_AUTOCAST)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = apply_prompt(list(texts), prompt)
    out = np.empty((len(texts), model.embedding_dim), dtype=np.float32)
    if not texts:
        return out
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties keep input order
    device = model.device
    autocast_dtype = _AUTOCAST[dtype]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(
                range(0, len(order), batch_size), desc=desc, disable=not show_progress, unit="batch"
            ):
                idx = order[start : start + batch_size]
                batch = model.tokenize([texts[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                autocast = (
                    torch.autocast(device_type=device.type, dtype=autocast_dtype)
                    if autocast_dtype is not None
                    else contextlib.nullcontext()
                )
                with autocast:
                    emb = model(**batch)
                emb = emb.float()
                if normalize:
                    emb = F.normalize(emb, p=2, dim=-1)
                out[idx] = emb.cpu().numpy()
    finally:
        model.train(was_training)
    return out
