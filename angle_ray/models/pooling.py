"""Token states -> one vector per text.

    emb = pool(out.last_hidden_state, batch["attention_mask"], "mean")             # [B, H]
    emb = pool(out.last_hidden_state, mask, "first_last_avg", out.hidden_states)  # needs all layers

Strategies (``ModelConfig.pooling``):
  cls             the first token (encoders pad on the right, so it is [CLS])
  cls_avg         (cls + mean) / 2
  mean            mean over real tokens (pads excluded)
  max             per-dimension max over real tokens (pads excluded)
  last            the last real token, found from the mask: right for left and right padding alike
  first_last_avg  mean over real tokens of (embedding-layer output + last layer) / 2

Pad positions are excluded by selection, never by multiplying with the mask: a left-padded
decoder can produce NaN at fully masked pad positions, and NaN * 0 is still NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLING_STRATEGIES = ("cls", "cls_avg", "mean", "max", "last", "first_last_avg")


def _mean(hidden: Tensor, keep: Tensor) -> Tensor:
    summed = torch.where(keep.unsqueeze(-1), hidden, 0.0).sum(dim=1)
    count = keep.sum(dim=1, keepdim=True).clamp(min=1).to(summed.dtype)
    return summed / count


def _max(hidden: Tensor, keep: Tensor) -> Tensor:
    lowest = torch.finfo(hidden.dtype).min
    out = torch.where(keep.unsqueeze(-1), hidden, lowest).max(dim=1).values
    return torch.where(keep.any(dim=1, keepdim=True), out, 0.0)  # a row of pads only -> zeros


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of the last real token of each row (works for left and right padding)."""
    seq_len = attention_mask.shape[1]
    from_end = attention_mask.flip(dims=[1]).to(torch.int32).argmax(dim=1)
    return (seq_len - 1 - from_end).long()


def pool(
    last_hidden: Tensor,
    attention_mask: Tensor,
    strategy: str,
    hidden_states: tuple[Tensor, ...] | None = None,
) -> Tensor:
    """Pool ``last_hidden`` [B, T, H] with ``attention_mask`` [B, T] into [B, H]."""
    if strategy not in POOLING_STRATEGIES:
        raise ValueError(
            f"unknown pooling {strategy!r}; valid strategies: {', '.join(POOLING_STRATEGIES)}"
        )
    keep = attention_mask.bool()
    if strategy == "cls":
        return last_hidden[:, 0]
    if strategy == "cls_avg":
        return (last_hidden[:, 0] + _mean(last_hidden, keep)) / 2
    if strategy == "mean":
        return _mean(last_hidden, keep)
    if strategy == "max":
        return _max(last_hidden, keep)
    if strategy == "last":
        rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
        return last_hidden[rows, last_token_index(attention_mask).to(last_hidden.device)]
    # first_last_avg
    if hidden_states is None or len(hidden_states) < 2:
        raise ValueError(
            "pooling 'first_last_avg' needs hidden_states (all layers: run the backbone with "
            "output_hidden_states=True)"
        )
    return _mean((hidden_states[0] + hidden_states[-1]) / 2, keep)
