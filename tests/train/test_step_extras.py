"""train_step with the job's extras on real MiniLM and real STS-B rows, in one process:
a teacher equal to the student adds nothing (part 0, same gradients); ESE's step loss is EseLoss's
value on the model's pooled layers; GradCache gives the uncached step's parameter gradients with
the DDP engine and with DeepSpeed ZeRO-0, ZeRO-2 and ZeRO-3 (world size 1, gloo, DeepSpeed on CPU;
the uncached reference is plain PyTorch's, the same for every engine).

Dropout is off (eval mode) so that one forward over the whole batch and GradCache's mini-batches
compute the same function; GradCache under dropout is tested in test_grad_cache.py."""

import json

import pytest
import torch

from angle_ray.config import (
    EseConfig,
    GradCacheConfig,
    JobConfig,
    LossConfig,
    ModelConfig,
    TeacherConfig,
    TrainConfig,
)
from angle_ray.data.roles import to_loss_layout
from angle_ray.losses import build_loss
from angle_ray.losses.distill import kl_rows
from angle_ray.losses.ese import EseLoss
from angle_ray.models.backbone import build_model
from angle_ray.models.truncate import pooled_layers
from angle_ray.train.engine import make_engine
from angle_ray.train.step import StepExtras, forward_backward, step_extras, train_step
from tests.train.conftest import format_a_batch

CPU = torch.device("cpu")
PAIRS = 7  # 14 rows in GradCache mini-batches of 4: 4 + 4 + 4 + 2
LOSS = LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02)


@pytest.fixture(scope="module")
def stsb_batch(data_dir):
    with open(data_dir / "stsb" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(60), f)][::8][:PAIRS]
    return format_a_batch(rows)


def fresh_model():
    return build_model(ModelConfig(max_length=48)).eval()  # dropout off: see the module doc


def ddp_engine(model, **train):
    return make_engine(model, TrainConfig(strategy="ddp", lr=1e-3, warmup_steps=0, **train), 10, CPU)


def param_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, want):
    """rtol 1e-4 per element; atol 1e-5 x the tensor's largest |gradient| + 1e-6 x the largest of
    all (forwards over other batch sizes sum in another order, ~1e-6 of the scale apart; the key
    biases' gradients are 0 in exact arithmetic, rounding noise here)."""
    assert got.keys() == want.keys() and len(want) > 50
    overall = max(g.abs().max().item() for g in want.values())
    for name in want:
        atol = 1e-5 * want[name].abs().max().item() + 1e-6 * overall
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


# --- teacher ----------------------------------------------------------------------------------


def test_a_teacher_equal_to_the_student_adds_a_zero_term_and_no_gradient(stsb_batch):
    plain_model, taught_model = fresh_model(), fresh_model()
    job = JobConfig(loss=LOSS.model_copy(update={"teacher": TeacherConfig(path="all-MiniLM-L6-v2",
                                                                          weight=0.5)}))
    extras = step_extras(job, taught_model)
    assert extras.teacher is not None and extras.ese is None and extras.grad_cache_mini_batch is None
    loss_fn = build_loss(LOSS)
    want_loss, want_parts = forward_backward(ddp_engine(plain_model), loss_fn, stsb_batch, CPU)
    got_loss, got_parts = forward_backward(ddp_engine(taught_model), loss_fn, stsb_batch, CPU, extras)
    assert float(got_parts["teacher"]) == pytest.approx(0.0, abs=1e-7)
    assert set(got_parts) == set(want_parts) | {"teacher"}
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-7)
    assert_same_grads(param_grads(taught_model), param_grads(plain_model))


def test_after_the_student_moves_the_teacher_part_is_the_kl_of_their_embeddings(stsb_batch):
    student = fresh_model()
    job = JobConfig(loss=LOSS.model_copy(update={"teacher": TeacherConfig(path="all-MiniLM-L6-v2",
                                                                          weight=2.0)}))
    extras = step_extras(job, student)
    engine = ddp_engine(student)
    train_step(engine, build_loss(LOSS), stsb_batch, CPU, extras)  # the student moves
    with torch.no_grad():
        s = student(stsb_batch.input_ids, stsb_batch.attention_mask)
        t = extras.teacher.embed(stsb_batch.input_ids, stsb_batch.attention_mask)
        p_t, log_p_s = torch.softmax(t, -1), torch.log_softmax(s, -1)
        by_hand = (p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean()  # KL(teacher || student)
    assert by_hand > 1e-9 and kl_rows(t, s) == pytest.approx(by_hand.item(), rel=1e-4)
    angle_only, _ = forward_backward(ddp_engine(fresh_model()), build_loss(LOSS), stsb_batch, CPU)
    result = train_step(engine, build_loss(LOSS), stsb_batch, CPU, extras)
    assert result.parts["teacher"] == pytest.approx(by_hand.item(), rel=1e-4)
    angle_part = result.loss - 2.0 * result.parts["teacher"]
    assert angle_part == pytest.approx(sum(w * result.parts[k] for k, w in
                                           (("cosine", 1.0), ("ibn", 1.0), ("angle", 0.02))), rel=1e-5)
    assert angle_only.item() != pytest.approx(angle_part, rel=1e-6)  # the student did move


# --- ESE --------------------------------------------------------------------------------------


def test_ese_step_loss_is_ese_loss_on_the_pooled_layers(stsb_batch):
    model = fresh_model()
    job = JobConfig(loss=LOSS.model_copy(update={"ese": EseConfig(enabled=True, compression_size=64,
                                                                  kl_temperature=0.5)}))
    extras = step_extras(job, model)
    assert isinstance(extras.ese, EseLoss) and (extras.ese.k, extras.ese.temperature) == (64, 0.5)
    loss_fn = build_loss(LOSS)
    ids, mask, h = stsb_batch.input_ids, stsb_batch.attention_mask, stsb_batch.hashes

    def rows_loss(rows):
        return loss_fn(to_loss_layout(rows, "A", 2), "A", labels=stsb_batch.labels,
                       ids=to_loss_layout(h, "A", 2))[0]

    with torch.no_grad():
        layers = pooled_layers(model, ids, mask)
        want, want_parts = EseLoss(64, 0.5)(layers, rows_loss)
    assert len(layers) == 6
    result = train_step(ddp_engine(model), loss_fn, stsb_batch, CPU, extras)
    assert result.loss == pytest.approx(want.item(), rel=1e-5)
    assert set(result.parts) == {"ese_full", "ese_prefix", "ese_align", "ese_shallow"}
    for name, value in want_parts.items():
        assert result.parts[f"ese_{name}"] == pytest.approx(value.item(), rel=1e-5)
    assert result.parts["ese_full"] == pytest.approx(rows_loss(layers[-1]).item(), rel=1e-5)


# --- GradCache: DDP, DeepSpeed ZeRO-0, 2 and 3 ------------------------------------------------


def test_step_extras_take_the_grad_cache_size_from_the_job(minilm_small):
    job = JobConfig(train=TrainConfig(grad_cache=GradCacheConfig(enabled=True, mini_batch_size=8)))
    assert step_extras(job, minilm_small) == StepExtras(grad_cache_mini_batch=8)
    assert step_extras(JobConfig(), minilm_small) == StepExtras()


def deepspeed_grads(model, engine) -> dict[str, torch.Tensor]:
    from deepspeed.utils import safe_get_full_grad  # ZeRO-2 keeps gradients in its partitions

    del engine  # the engine holds the partitions the helper reads through the parameters
    return {n: safe_get_full_grad(p).clone() for n, p in model.named_parameters() if p.requires_grad}


def _grads_with(strategy: str, zero: int, batch, grad_cache: int | None):
    model = fresh_model()
    cfg = TrainConfig(strategy=strategy, zero_stage=zero, lr=1e-3, warmup_steps=0,
                      batch_size=PAIRS, max_grad_norm=0.0)
    engine = make_engine(model, cfg, 10, CPU)
    extras = StepExtras(grad_cache_mini_batch=grad_cache)
    loss, parts = forward_backward(engine, build_loss(LOSS), batch, CPU, extras)
    grads = param_grads(model) if strategy == "ddp" else deepspeed_grads(model, engine)
    return loss, parts, grads


@pytest.fixture(scope="module")
def uncached(stsb_batch):
    """The reference for every engine: one forward and backward over the whole batch in plain
    PyTorch (DDP engine, world of one), the gradients GradCache must reproduce. Once per module:
    a DeepSpeed engine costs 1-3 s to build, and DeepSpeed's own uncached step gave these same
    gradients (within assert_same_grads) at ZeRO-0, 2 and 3 when it was the reference."""
    return _grads_with("ddp", 0, stsb_batch, grad_cache=None)


@pytest.mark.parametrize(("strategy", "zero"), [("ddp", 0), ("deepspeed", 0), ("deepspeed", 2), ("deepspeed", 3)])
def test_grad_cache_gives_the_uncached_gradients(gloo_world_of_one, stsb_batch, uncached, strategy, zero):
    want_loss, want_parts, want = uncached
    got_loss, got_parts, got = _grads_with(strategy, zero, stsb_batch, grad_cache=4)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=0)
    assert got_parts.keys() == want_parts.keys() == {"cosine", "ibn", "angle"}
    assert_same_grads(got, want)
    assert max(g.abs().max().item() for g in want.values()) > 1e-3  # not trivially zero


def test_grad_cache_step_updates_like_the_uncached_step_with_deepspeed(gloo_world_of_one, stsb_batch):
    """Through engine.step too: ZeRO-2 applies the update after the replays (boundary kept)."""
    probe = "backbone.encoder.layer.0.attention.self.query.weight"
    after, grads = [], []
    for grad_cache in (None, 4):
        model = fresh_model()
        cfg = TrainConfig(strategy="deepspeed", zero_stage=2, lr=1e-3, warmup_steps=0,
                          batch_size=PAIRS, max_grad_norm=0.0)
        engine = make_engine(model, cfg, 10, CPU)
        forward_backward(engine, build_loss(LOSS), stsb_batch, CPU,
                         StepExtras(grad_cache_mini_batch=grad_cache))
        grads.append(deepspeed_grads(model, engine)[probe])
        assert engine.step()  # an optimiser update, at the boundary the last replay kept
        after.append(dict(model.named_parameters())[probe].detach().clone())
    before = dict(fresh_model().named_parameters())[probe]
    assert (after[0] - before).abs().max() > 5e-4  # the step applied an update
    # Adam's first update is about lr * g / |g|: elements whose gradient is rounding noise may
    # move either way, all others the same
    clear = grads[0].abs() > 1e-4 * grads[0].abs().max()
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(after[1][clear], after[0][clear], rtol=1e-4, atol=1e-6)
