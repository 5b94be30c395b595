"""One training step: a padded batch (all roles) in, the loss and its parts out.

    result = train_step(engine, loss_fn, batch, device)   # batch: angle_ray.data.collate.RoleBatch
    result.loss, result.parts, result.tokens, result.examples

In order: every text of the batch through the model in one forward pass; the embeddings (and
content hashes, and Format A labels) all-gathered across workers, so in-batch negatives span
the global batch; the loss on the global batch in the loss's role layout; backward of the loss
scaled by the world size (see `angle_ray.train.gather`); one engine step (an optimiser update
at the end of each gradient-accumulation cycle).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from angle_ray.data.collate import RoleBatch
from angle_ray.data.roles import to_loss_layout
from angle_ray.train.gather import gather_cat, world


@dataclass
class StepResult:
    loss: float  # the loss of the global batch
    parts: dict[str, float]  # unweighted value of each loss term that was computed
    tokens: int  # non-padding tokens in the global batch
    examples: int  # examples in the global batch


def gather_roles(rows: torch.Tensor, num_roles: int) -> torch.Tensor:
    """This worker's rows stacked by role [R*B, ...] -> every worker's, still stacked by role
    [R*W*B, ...] (within a role: rank 0's rows, then rank 1's, ...). Own rows keep their grad."""
    local = rows.reshape(num_roles, -1, *rows.shape[1:])  # [R, B, ...]
    everyone = gather_cat(local.unsqueeze(0), dim=0)  # [W, R, B, ...]
    return everyone.transpose(0, 1).reshape(-1, *rows.shape[1:])


def train_step(engine, loss_fn, batch: RoleBatch, device: torch.device) -> StepResult:
    """Forward, all-gather, loss, backward, engine step for one batch; see the module doc."""
    _, world_size = world()
    n_roles = len(batch.roles)
    emb = engine.forward(batch.input_ids.to(device), batch.attention_mask.to(device))
    emb = gather_roles(emb.float(), n_roles)
    hashes = gather_roles(batch.hashes.to(device), n_roles)
    labels = gather_cat(batch.labels.to(device)) if batch.labels is not None else None
    loss, parts = loss_fn(to_loss_layout(emb, batch.fmt, n_roles), batch.fmt, labels=labels,
                          ids=to_loss_layout(hashes, batch.fmt, n_roles))
    # each rank holds the global loss; the all-reduce averages, so scale back to a sum
    engine.backward(loss * world_size)
    engine.step()
    return StepResult(loss=loss.item(), parts={k: float(v) for k, v in parts.items()},
                      tokens=int(batch.attention_mask.sum()) * world_size,
                      examples=batch.size * world_size)
