"""One training step: a padded batch (all roles) in, the loss and its parts out.

    extras = step_extras(job, model)                        # once per worker: teacher, ESE, GradCache
    result = train_step(engine, loss_fn, batch, device, extras)   # batch: data.collate.RoleBatch
    result.loss, result.parts, result.tokens, result.examples

In order: every text of the batch through the model in one forward pass; the embeddings (and
content hashes, and Format A labels) all-gathered across workers, so in-batch negatives span
the global batch; the loss on the global batch in the loss's role layout; backward of the loss
scaled by the world size (see `angle_ray.train.gather`); one engine step (an optimiser update
at the end of each gradient-accumulation cycle).

What the job adds (`StepExtras`), each computed on the gathered global batch so that every
worker holds the same loss and the world-size scaling stays exact:
  * `loss.teacher`: `+ weight * distill(student, teacher)` over all rows (part `teacher`,
    unweighted); the frozen teacher embeds this worker's token ids without a graph.
  * `loss.ese`: the forward returns every layer's pooled rows (`all_layers=True`); the loss is
    `EseLoss(layers, rows -> job loss)` (parts `ese_full`, `ese_prefix`, `ese_align`, `ese_shallow`).
  * `train.grad_cache`: `cached_step` embeds the batch in mini-batches without a graph, takes
    d loss / d embeddings, and replays each mini-batch with its graph (`engine.replay_context`
    marks the last replay as the one that reduces gradients across workers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from angle_ray.config import JobConfig
from angle_ray.data.collate import RoleBatch
from angle_ray.data.roles import to_loss_layout
from angle_ray.losses.distill import Teacher, build_teacher, distill_loss
from angle_ray.losses.ese import EseLoss
from angle_ray.models.backbone import EmbeddingModel
from angle_ray.train.gather import gather_cat, world
from angle_ray.train.grad_cache import cached_step

GlobalLoss = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class StepResult:
    loss: float  # the loss of the global batch
    parts: dict[str, float]  # unweighted value of each loss term that was computed
    tokens: int  # non-padding tokens in the global batch
    examples: int  # examples in the global batch


@dataclass
class StepExtras:
    """What a job adds to the plain step; built once per worker by `step_extras`."""

    teacher: Teacher | None = None
    ese: EseLoss | None = None
    grad_cache_mini_batch: int | None = None  # rows per forward pass; None = GradCache off


def step_extras(job: JobConfig, model: EmbeddingModel) -> StepExtras:
    """The teacher (loaded frozen on the student's device), ESE loss and GradCache size of a job."""
    loss, cache = job.loss, job.train.grad_cache
    return StepExtras(
        teacher=build_teacher(loss.teacher, model) if loss.teacher is not None else None,
        ese=EseLoss(loss.ese.compression_size, loss.ese.kl_temperature) if loss.ese.enabled else None,
        grad_cache_mini_batch=cache.mini_batch_size if cache.enabled else None,
    )


def gather_roles(rows: torch.Tensor, num_roles: int) -> torch.Tensor:
    """This worker's rows stacked by role [R*B, ...] -> every worker's, still stacked by role
    [R*W*B, ...] (within a role: rank 0's rows, then rank 1's, ...). Own rows keep their grad."""
    local = rows.reshape(num_roles, -1, *rows.shape[1:])  # [R, B, ...]
    everyone = gather_cat(local.unsqueeze(0), dim=0)  # [W, R, B, ...]
    return everyone.transpose(0, 1).reshape(-1, *rows.shape[1:])


def _job_loss(loss_fn, batch: RoleBatch, device: torch.device) -> GlobalLoss:
    """global rows (stacked by role) -> the job's loss and parts, in the loss's role layout."""
    n_roles = len(batch.roles)
    hashes = to_loss_layout(gather_roles(batch.hashes.to(device), n_roles), batch.fmt, n_roles)
    labels = gather_cat(batch.labels.to(device)) if batch.labels is not None else None

    def on_global_rows(rows: torch.Tensor):
        return loss_fn(to_loss_layout(rows, batch.fmt, n_roles), batch.fmt, labels=labels, ids=hashes)

    return on_global_rows


def _teacher_rows(teacher: Teacher, ids, mask, n_roles: int, chunk: int | None) -> torch.Tensor:
    """The teacher's embeddings of this batch, gathered like the student's (chunked for GradCache)."""
    chunk = chunk or ids.shape[0]
    local = torch.cat([teacher.embed(ids[s:s + chunk], mask[s:s + chunk])
                       for s in range(0, ids.shape[0], chunk)])
    return gather_roles(local.float(), n_roles)


def _add_teacher(loss, parts: dict, student_rows, teacher: Teacher | None, teacher_rows):
    if teacher is None:
        return loss, parts
    term = distill_loss(student_rows, teacher_rows, teacher.kind)
    return loss + teacher.weight * term, {**parts, "teacher": term.detach()}


def _ese_loss(engine, ese: EseLoss, job_loss: GlobalLoss, ids, mask, n_roles: int):
    """ESE on every layer's gathered rows; returns (loss, parts, the last layer's global rows)."""
    layers = engine.forward(ids, mask, all_layers=True).float()  # [N, R*B, H]
    global_layers = [gather_roles(h, n_roles) for h in layers.unbind(0)]
    loss, parts = ese(global_layers, lambda rows: job_loss(rows)[0])
    return loss, {f"ese_{name}": value for name, value in parts.items()}, global_layers[-1]


def forward_backward(engine, loss_fn, batch: RoleBatch, device: torch.device,
                     extras: StepExtras | None = None) -> tuple[torch.Tensor, dict]:
    """All of `train_step` but the engine step: the global loss (detached) and its parts, with
    the gradients accumulated in the engine (DeepSpeed ZeRO-2/3 keep them in their partitions)."""
    extras = extras or StepExtras()
    _, world_size = world()
    n_roles = len(batch.roles)
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    job_loss = _job_loss(loss_fn, batch, device)
    teacher_rows = (_teacher_rows(extras.teacher, ids, mask, n_roles, extras.grad_cache_mini_batch)
                    if extras.teacher is not None else None)

    def rows_loss(local_rows: torch.Tensor):  # this worker's rows -> the global batch's loss
        rows = gather_roles(local_rows.float(), n_roles)
        loss, parts = job_loss(rows)
        return _add_teacher(loss, parts, rows, extras.teacher, teacher_rows)

    # each rank holds the global loss; the all-reduce averages, so scale back to a sum
    if extras.grad_cache_mini_batch is not None:
        cached = cached_step(engine.forward, ids, mask, rows_loss, extras.grad_cache_mini_batch,
                             grad_scale=world_size, backward=engine.backward,
                             replay_context=engine.replay_context)
        return cached.loss, cached.extras[0]
    if extras.ese is not None:
        loss, parts, last = _ese_loss(engine, extras.ese, job_loss, ids, mask, n_roles)
        loss, parts = _add_teacher(loss, parts, last, extras.teacher, teacher_rows)
    else:
        loss, parts = rows_loss(engine.forward(ids, mask))
    engine.backward(loss * world_size)
    return loss.detach(), parts


def train_step(engine, loss_fn, batch: RoleBatch, device: torch.device,
               extras: StepExtras | None = None) -> StepResult:
    """Forward, all-gather, loss, backward, engine step for one batch; see the module doc."""
    loss, parts = forward_backward(engine, loss_fn, batch, device, extras)
    engine.step()
    _, world_size = world()
    return StepResult(loss=loss.item(), parts={k: float(v) for k, v in parts.items()},
                      tokens=int(batch.attention_mask.sum()) * world_size,
                      examples=batch.size * world_size)
