"""2 workers x batch b must train exactly like 1 worker x batch 2b on the same rows.

The embeddings are all-gathered so in-batch negatives span the global batch, and the loss is
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
    import ray.train

    from angle_ray.config import LossConfig, ModelConfig, TrainConfig
    from angle_ray.data.stream import text_hash
    from angle_ray.losses import build_loss
    from angle_ray.models.backbone import build_model
    from angle_ray.train.engine import make_engine
    from angle_ray.train.gather import gather_cat, world
    from angle_ray.train.loop import split_roles

    rank, size = world()
    model = build_model(ModelConfig(max_length=48))
    model.eval()  # dropout off: both runs must see the same function
    engine = make_engine(model, TrainConfig(strategy="ddp"), 10, torch.device("cpu"))
    rows = config["rows"]
    b = len(rows) // size
    mine = rows[rank * b:(rank + 1) * b]
    texts = [r["text1"] for r in mine] + [r["text2"] for r in mine]
    batch = model.tokenize(texts)
    hashes = torch.tensor([text_hash(t) for t in texts])
    emb = engine.forward(batch["input_ids"], batch["attention_mask"])
    per_role, ids = split_roles(emb, hashes, ["text1", "text2"])
    labels = gather_cat(torch.tensor([r["label"] / 5.0 for r in mine]))
    loss_fn = build_loss(LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02, ibn_threshold=0.6))
    loss, _ = loss_fn(per_role, "A", labels=labels, ids=ids)
    # what the loss would be with this worker's rows only (no all-gather), for the guard below
    local = emb.detach().reshape(2, len(mine), -1)
    local_loss, _ = loss_fn({"text1": local[0], "text2": local[1]}, "A",
                            labels=torch.tensor([r["label"] / 5.0 for r in mine]))
    engine.backward(loss * size)
    params = dict(model.named_parameters())
    if rank == 0:  # one machine: the test reads rank 0's view from a file
        out = {"loss": loss.item(), "local_loss": local_loss.item(),
               "grads": {n: params[n].grad.flatten()[:300].tolist() for n in PROBED},
               "grad_norm": float(torch.sqrt(sum((p.grad ** 2).sum() for p in params.values())))}
        with open(config["out"], "w") as f:
            json.dump(out, f)
    ray.train.report({"loss": loss.item()})


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
