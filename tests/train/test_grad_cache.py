"""GradCache on a real MiniLM in training mode (dropout on): parameter gradients equal the uncached
loss's for Format A (CoSENT + in-batch negatives) and Format B (in-batch contrastive), with a
mini-batch size that does not divide the batch; on 2 gloo workers with all-gathered negatives
(slow) they equal one process holding the whole global batch."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from angle_ray.config import ModelConfig
from angle_ray.losses.cln import ContrastiveWithNegativesLoss
from angle_ray.losses.cosine import CosineLoss
from angle_ray.losses.ibn import InBatchNegativesLoss
from angle_ray.models.backbone import build_model
from angle_ray.train.gather import gather_cat, world
from angle_ray.train.grad_cache import RngState, cached_step
from tests.ports import free_port

PAIRS = 5  # 10 rows in mini-batches of 4: 4 + 4 + 2
MINI = 4


def format_a_loss(labels):
    cosent, ibn = CosineLoss(tau=20.0), InBatchNegativesLoss(tau=20.0, threshold=0.5)

    def loss(rows):  # rows: this worker's text1 rows, then its text2 rows (role-stacked)
        half = rows.shape[0] // 2
        t1, t2 = gather_cat(rows[:half]), gather_cat(rows[half:])
        every_label = gather_cat(labels)
        return cosent(t1, t2, every_label) + ibn(t1, t2, every_label), {"pairs": t1.shape[0]}

    return loss


def format_b_loss(rows):
    half = rows.shape[0] // 2
    return ContrastiveWithNegativesLoss(tau=20.0)(gather_cat(rows[:half]), gather_cat(rows[half:]))


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig())  # its own copy: these tests leave gradients behind


@pytest.fixture(scope="module")
def stsb_pairs(data_dir):
    with open(data_dir / "stsb" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(40), f)]
    rows = rows[::5][:PAIRS]
    return [r["text1"] for r in rows], [r["text2"] for r in rows], torch.tensor([r["label"] / 5 for r in rows])


@pytest.fixture(scope="module")
def nli_pairs(data_dir):
    with open(data_dir / "nli" / "snli_dev_triples.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(PAIRS), f)]
    return [r["query"] for r in rows], [r["positive"] for r in rows]


def encoder(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def uncached(model, batch, loss_fn, seed, chunk=None):
    """The plain step: forward (in `chunk`-row pieces when given, for the same dropout RNG use
    as GradCache's first pass) WITH the graph, the loss, one backward."""
    torch.manual_seed(seed)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    size = chunk or ids.shape[0]
    emb = torch.cat([model(input_ids=ids[s : s + size], attention_mask=mask[s : s + size])
                     for s in range(0, ids.shape[0], size)])
    result = loss_fn(emb)
    loss = result[0] if isinstance(result, tuple) else result
    loss.backward()
    return loss.detach(), grads(model)


def cached(model, batch, loss_fn, seed):
    torch.manual_seed(seed)
    step = cached_step(encoder(model), batch["input_ids"], batch["attention_mask"], loss_fn, MINI)
    return step, grads(model)


def assert_same_grads(got, want, atol_scale=0.0):
    """rtol 1e-4 per element, atol 1e-7 + atol_scale x the tensor's largest |gradient| (a
    forward over other batch sizes sums in another order: ~1e-6 of the scale apart)."""
    assert got.keys() == want.keys() and len(got) > 50
    for name in want:
        atol = 1e-7 + atol_scale * want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=atol, msg=name)


def test_format_a_cosent_ibn_with_dropout_equals_uncached(model, stsb_pairs):
    t1, t2, labels = stsb_pairs
    batch = model.tokenize(t1 + t2)
    loss_fn = format_a_loss(labels)
    model.train()
    want_loss, want = uncached(model, batch, loss_fn, seed=3, chunk=MINI)
    step, got = cached(model, batch, loss_fn, seed=3)
    torch.testing.assert_close(step.loss, want_loss, rtol=1e-5, atol=0)
    assert step.extras == ({"pairs": PAIRS},) and step.embeddings.shape == (2 * PAIRS, 384)
    assert_same_grads(got, want)
    # dropout really is on: another seed's masks give other gradients, so the replay matters
    _, other = uncached(model, batch, loss_fn, seed=4, chunk=MINI)
    name = "backbone.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(other[name], want[name], rtol=1e-2)


def test_format_b_contrastive_with_dropout_equals_uncached(model, nli_pairs):
    queries, positives = nli_pairs
    batch = model.tokenize(queries + positives)
    model.train()
    want_loss, want = uncached(model, batch, format_b_loss, seed=5, chunk=MINI)
    step, got = cached(model, batch, format_b_loss, seed=5)
    torch.testing.assert_close(step.loss, want_loss, rtol=1e-5, atol=0)
    assert_same_grads(got, want)


def test_without_dropout_equals_one_full_batch_forward(model, stsb_pairs):
    t1, t2, labels = stsb_pairs
    batch = model.tokenize(t1 + t2)
    model.eval()
    try:
        want_loss, want = uncached(model, batch, format_a_loss(labels), seed=0)  # one forward
        step, got = cached(model, batch, format_a_loss(labels), seed=0)
    finally:
        model.train()
    torch.testing.assert_close(step.loss, want_loss, rtol=1e-5, atol=0)
    assert_same_grads(got, want, atol_scale=1e-5)


def test_rng_state_replays_dropout_and_leaves_the_outer_stream_going():
    state = RngState(torch.device("cpu"))
    first = torch.rand(3)
    after_first = torch.rand(3)
    with state.replay():
        assert torch.equal(torch.rand(3), first)
    assert not torch.equal(torch.rand(3), after_first)  # the outer stream continued, not rewound


def test_mini_batch_size_must_be_positive(model):
    batch = model.tokenize(["a", "b"])
    with pytest.raises(ValueError, match="mini_batch_size must be >= 1, got 0"):
        cached_step(encoder(model), batch["input_ids"], batch["attention_mask"], format_b_loss, 0)


# --- two gloo workers (slow): all-gathered negatives, DDP-style gradient averaging


def _worker(rank: int, port: int, texts1, texts2, labels, out_dir: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = build_model(ModelConfig()).eval()  # no dropout: one well-defined global gradient
        half = len(texts1) // 2
        mine = slice(rank * half, (rank + 1) * half)
        batch = model.tokenize(texts1[mine] + texts2[mine])
        _, world_size = world()
        step = cached_step(encoder(model), batch["input_ids"], batch["attention_mask"],
                           format_a_loss(labels[mine]), mini_batch_size=3, grad_scale=world_size)
        for param in model.parameters():  # what DDP / DeepSpeed do: average over workers
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= world_size
        if rank == 0:
            torch.save({"loss": step.loss, "grads": grads(model)}, os.path.join(out_dir, "rank0.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_workers_equal_one_process_with_the_global_batch(model, data_dir, tmp_path):
    with open(data_dir / "stsb" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(8), f)]
    texts1, texts2 = [r["text1"] for r in rows], [r["text2"] for r in rows]
    labels = torch.tensor([r["label"] / 5 for r in rows])
    mp.spawn(_worker, args=(free_port(), texts1, texts2, labels, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "rank0.pt", weights_only=True)  # our own file; tensors only

    model.eval()
    try:
        want_loss, want = uncached(model, model.tokenize(texts1 + texts2), format_a_loss(labels), seed=0)
    finally:
        model.train()
    torch.testing.assert_close(result["loss"], want_loss, rtol=1e-5, atol=0)
    assert_same_grads(result["grads"], want, atol_scale=1e-5)
