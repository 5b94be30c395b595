"""2 workers x batch b must train exactly like 1 worker x batch 2b on the same rows.

Each worker runs the real `train_step`. The embeddings are all-gathered so in-batch negatives span the global batch, and the loss is
scaled by the world size before DDP's gradient averaging; if either broke, the loss or the
gradients of the two runs would differ.
"""

import json
import sys

import pytest
import ray.cloudpickle
import torch

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROBED = ("backbone.encoder.layer.0.attention.self.query.weight",
          "backbone.encoder.layer.5.output.dense.weight", "backbone.encoder.layer.3.intermediate.dense.bias")


def _loss_and_grads(config):
    import numpy as np
    import ray.train

    from angle_ray.config import LossConfig, ModelConfig, TrainConfig
    from angle_ray.data.collate import TokenBatch, pad
    from angle_ray.data.roles import ragged, to_loss_layout
    from angle_ray.data.stream import text_hash
    from angle_ray.losses import build_loss
    from angle_ray.models.backbone import build_model
    from angle_ray.train.engine import make_engine
    from angle_ray.train.gather import world
    from angle_ray.train.step import train_step

    rank, size = world()
    model = build_model(ModelConfig(max_length=48))
    model.eval()  # dropout off: both runs must see the same function
    # grad_accum=2: the step accumulates without an optimiser update, so the gradients of the
    # step stay on the parameters for the comparison (halved in both runs alike)
    engine = make_engine(model, TrainConfig(strategy="ddp", grad_accum=2), 10, torch.device("cpu"))
    rows = config["rows"]
    b = len(rows) // size
    mine = rows[rank * b:(rank + 1) * b]
    columns = {"label": np.array([r["label"] / 5.0 for r in mine], dtype=np.float32)}
    for role in ("text1", "text2"):
        texts = [r[role] for r in mine]
        columns[f"{role}_ids"] = ragged(model.tokenizer(texts, truncation=True, max_length=48)["input_ids"])
        columns[f"{role}_hash"] = np.array([text_hash(t) for t in texts])
    batch = pad(TokenBatch("A", 1, columns), model.tokenizer.pad_token_id, left_pad=False)
    loss_fn = build_loss(LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02, ibn_threshold=0.6))
    # what the loss would be with this worker's rows only (no all-gather), for the guard below
    with torch.no_grad():
        local = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).float()
        local_loss, _ = loss_fn(to_loss_layout(local, "A", 2), "A", labels=batch.labels)
    result = train_step(engine, loss_fn, batch, torch.device("cpu"))
    params = dict(model.named_parameters())
    if rank == 0:  # one machine: the test reads rank 0's view from a file
        out = {"loss": result.loss, "local_loss": local_loss.item(),
               "grads": {n: params[n].grad.flatten()[:300].tolist() for n in PROBED},
               "grad_norm": float(torch.sqrt(sum((p.grad ** 2).sum() for p in params.values())))}
        with open(config["out"], "w") as f:
            json.dump(out, f)
    ray.train.report({"loss": result.loss})


def _fit(rows, workers, tmp_path):
    out = tmp_path / f"probe{workers}-{len(rows)}.json"
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _loss_and_grads, train_loop_config={"rows": rows, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"probe{workers}-{len(rows)}", storage_path=str(tmp_path)))
    trainer.fit()
    return json.loads(out.read_text())


def test_two_workers_match_one_worker_with_the_global_batch(ray_local, data_dir, tmp_path):
    lines = (data_dir / "stsb" / "train.jsonl").open().read().splitlines()
    rows = [json.loads(x) for x in lines[:16]]
    assert sum(r["label"] / 5 >= 0.6 for r in rows) >= 4  # the ibn term has positives to use
    one = _fit(rows, 1, tmp_path)
    two = _fit(rows, 2, tmp_path)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # guard: without the all-gather a worker's loss would be visibly different
    assert abs(two["local_loss"] - one["loss"]) > 1e-2
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    for name in PROBED:
        torch.testing.assert_close(torch.tensor(two["grads"][name]), torch.tensor(one["grads"][name]),
                                   rtol=1e-3, atol=1e-7)


def test_collective_tensors_live_where_the_backend_moves_them(monkeypatch):
    """gloo moves CPU tensors, NCCL only CUDA ones (a CPU tensor there fails with "No backend
    type associated with device type cpu"). No GPU here: NCCL's backend name and the worker's
    current CUDA device are stood in for."""
    import torch.distributed as dist

    from angle_ray.train.gather import collective_device

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert collective_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collective_device() == torch.device("cuda", 1)
