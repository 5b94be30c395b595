"""Semantic textual similarity: Spearman x100 between cosine similarity and gold scores.

This is the figure the AnglE and sentence-transformers papers report for STS-B, SICK-R and
SemEval STS12-16 ("all" setting: the pairs of a year's folder pooled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, d) arrays."""
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return np.sum(a * b, axis=1)


def spearman_x100(predicted: Sequence[float], gold: Sequence[float]) -> float:
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold scores")
    if len(gold) < 2:
        raise ValueError("Spearman correlation needs at least two pairs")
    return float(spearmanr(predicted, gold).statistic * 100.0)


def sts_spearman(model, text1: list[str], text2: list[str], gold: list[float],
                 batch_size: int = 64, dtype: str = "fp32", prompt: str | None = None,
                 desc: str = "sts", show_progress: bool = True) -> float:
    """Encode both sides (unique texts once) and return Spearman x100 of their cosine."""
    from angle_ray.models.embedder import encode

    unique = list(dict.fromkeys([*text1, *text2]))
    index = {t: i for i, t in enumerate(unique)}
    emb = encode(model, unique, batch_size=batch_size, prompt=prompt, dtype=dtype, desc=desc,
                 show_progress=show_progress)
    e1 = emb[[index[t] for t in text1]]
    e2 = emb[[index[t] for t in text2]]
    return spearman_x100(cosine_rows(e1, e2), gold)
