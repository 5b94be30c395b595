"""The per-worker training loop that Ray Train runs on every worker.

Reads top to bottom: set up (threads, seed, model, loss, engine) -> resume from the latest
checkpoint if there is one -> for each planned step: pick a dataset (weighted, same choice on
every rank), take a batch from this worker's shard, encode every text of the batch in one
forward pass, all-gather the embeddings (global in-batch negatives), AnglE loss, backward,
step -> report metrics every `log_every` steps, checkpoints (with a dev metric) every
`checkpoint_every` steps and at the end.

The loop knows nothing of where the rows or negatives come from: it consumes the Ray Data
shards named in the plan (`train_0`, `train_1`, ...).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from angle_ray.config import JobConfig
from angle_ray.data.collate import length_grouped_batches, pad_roles
from angle_ray.train.engine import make_engine
from angle_ray.train.gather import gather_cat, world

STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"


def pick_stream(seed: int, step: int, weights: list[float]) -> int:
    """Which dataset feeds `step`: weighted, reproducible, identical on every rank."""
    if len(weights) == 1:
        return 0
    return random.Random(f"{seed}:{step}").choices(range(len(weights)), weights=weights)[0]


def split_roles(emb: torch.Tensor, hashes: torch.Tensor, role_names: list[str]):
    """[R*B, H] local rows -> per-role global tensors [W*B, H] (and hashes [W*B])."""
    n_roles = len(role_names)
    local = emb.reshape(n_roles, -1, emb.shape[-1])  # [R, B, H]
    glob = gather_cat(local.unsqueeze(0), dim=0)  # [W, R, B, H]
    glob_hashes = gather_cat(hashes.reshape(n_roles, -1).unsqueeze(0), dim=0)  # [W, R, B]
    out, ids = {}, {}
    for r, role in enumerate(role_names):
        out[role] = glob[:, r].reshape(-1, emb.shape[-1])
        ids[role] = glob_hashes[:, r].reshape(-1)
    return out, ids


def to_loss_inputs(fmt: str, emb: dict, ids: dict):
    """Per-role tensors -> the layout AnglELoss expects (negatives stacked [N, k, H])."""
    if fmt != "C":
        return emb, ids
    negs = sorted((r for r in emb if r.startswith("negative_")), key=lambda r: int(r.split("_")[1]))
    return ({"query": emb["query"], "positive": emb["positive"],
             "negative": torch.stack([emb[r] for r in negs], dim=1)},
            {"query": ids["query"], "positive": ids["positive"],
             "negative": torch.stack([ids[r] for r in negs], dim=1)})


class Streams:
    """This worker's batch iterators, one per training dataset, restarted when exhausted."""

    def __init__(self, plan: dict, seed: int, rank: int):
        import ray.train

        self.plan = plan
        self.seed = seed
        self.rank = rank
        self.shards = [ray.train.get_dataset_shard(s["name"]) for s in plan["streams"]]
        self.iters = [None] * len(self.shards)
        self.restarts = [0] * len(self.shards)

    def _open(self, i: int):
        s, t = self.plan["streams"][i], self.plan["train"]
        mega = t["batch_size"] * t["group_size"]
        seed = self.seed + 7919 * self.restarts[i] + i
        batches = self.shards[i].iter_batches(
            batch_size=mega, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=t["shuffle_buffer"] or None,
            local_shuffle_seed=seed + self.rank if t["shuffle_buffer"] else None)
        return length_grouped_batches(batches, s["roles"], t["batch_size"], seed,
                                      group=t["group_size"] > 1)

    def next(self, i: int) -> dict:
        if self.iters[i] is None:
            self.iters[i] = self._open(i)
        try:
            return next(self.iters[i])
        except StopIteration:
            self.restarts[i] += 1
            self.iters[i] = self._open(i)
            return next(self.iters[i])


def _threads(train: dict) -> int:
    import ray.train

    if train.get("torch_threads"):
        return int(train["torch_threads"])
    local = max(1, ray.train.get_context().get_local_world_size())
    return max(1, (os.cpu_count() or 1) // local)


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    from angle_ray.losses import build_loss
    from angle_ray.models.backbone import build_model

    job = JobConfig.model_validate(config["job"])
    plan = config["plan"]
    t = job.train
    rank, world_size = world()
    torch.set_num_threads(_threads(plan["train"]))
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    device = (torch.device("cuda", ray.train.get_context().get_local_rank())
              if t.use_gpu and torch.cuda.is_available() else torch.device("cpu"))

    if device.type == "cpu":  # DeepSpeed picks its accelerator on first use
        os.environ["DS_ACCELERATOR"] = "cpu"
    model = build_model(job.model).to(device)
    model.train()
    losses = [build_loss(job.loss.model_copy(update=s.get("loss", {}))) for s in plan["streams"]]
    total_steps = plan["total_steps"]
    engine = make_engine(model, t, total_steps, device)

    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            engine.load(folder)
            step = json.loads((Path(folder) / STATE_FILE).read_text())["step"]
        if rank == 0:
            print(f"[angle-ray] resumed from checkpoint at step {step}/{total_steps}", flush=True)

    start_step = step
    streams = Streams(plan, t.seed, rank)
    weights = [s["weight"] for s in plan["streams"]]
    for skipped in range(step):  # move the data streams past what the checkpoint has seen
        streams.next(pick_stream(t.seed, skipped, weights))

    dev = DevEvaluator(job, plan) if plan.get("dev") else None
    feed = _negatives_feed(plan, job)
    window = Window()
    stream_steps = [0] * len(weights)
    while step < total_steps:
        i = pick_stream(t.seed, step, weights)
        s = plan["streams"][i]
        raw = streams.next(i)
        fmt, role_names = s["fmt"], s["roles"]
        if feed is not None:
            feed.poll(step)
            feed.wait_if_stale(step)
            if i == plan["negatives"]["stream"]:
                raw = feed.attach(raw)
                if "negative_0_ids" in raw:
                    fmt, role_names = "C", [*role_names, *(f"negative_{j}" for j in range(feed.m["k"]))]
        batch = pad_roles(raw, role_names, plan["pad_id"], plan["left_pad"])
        start = time.perf_counter()
        emb = engine.forward(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        per_role, ids = split_roles(emb.float(), batch["hashes"].to(device), role_names)
        labels = batch.get("labels")
        if labels is not None:
            labels = gather_cat(labels.to(device))
        emb_in, ids_in = to_loss_inputs(fmt, per_role, ids)
        loss, parts = losses[i](emb_in, fmt, labels=labels, ids=ids_in)
        # each rank holds the global loss; the all-reduce averages, so scale back to a sum
        engine.backward(loss * world_size)
        engine.step()
        step += 1
        stream_steps[i] += 1
        window.add(loss.item(), {k: float(v) for k, v in parts.items()},
                   examples=t.batch_size * world_size,
                   tokens=int(batch["attention_mask"].sum()) * world_size,
                   seconds=time.perf_counter() - start)

        last = step == total_steps
        logging = step % t.log_every == 0 or last
        checkpointing = step % t.checkpoint_every == 0 or last
        evaluating = dev is not None and (checkpointing or (t.eval_every and step % t.eval_every == 0))
        if not (logging or checkpointing or evaluating):
            continue
        metrics = {"step": step, "total_steps": total_steps, "lr": engine.lr(),
                   "world_size": world_size, "resumed_from": start_step}
        if logging:
            metrics.update(window.flush())
            metrics.update({f"steps/{p['name']}": n for p, n in zip(plan["streams"], stream_steps)})
            if feed is not None:
                metrics.update(feed.metrics(step))
        if evaluating:
            metrics["dev_metric"] = dev.run(engine, rank)
        if checkpointing:
            save_and_report(engine, model, job, step, metrics, rank, last)
        else:
            ray.train.report(metrics)
        window.restart_clock()  # reporting, checkpoints and dev evaluation are not step time
    if start_step >= total_steps:  # a finished run re-submitted: nothing left to do
        ray.train.report({"step": step, "total_steps": total_steps, "lr": 0.0,
                          "world_size": world_size, "resumed_from": start_step})


def _negatives_feed(plan: dict, job: JobConfig):
    """The published hard negatives (ANCE) for the mined stream, when the job mines."""
    if not plan.get("negatives"):
        return None
    from angle_ray.models.backbone import load_tokenizer
    from angle_ray.train.negatives_feed import NegativesFeed

    n = plan["negatives"]
    feed = NegativesFeed(n["dir"], job.mining.model_dump(), load_tokenizer(job.model),
                         job.model.max_length)
    feed.prime()
    return feed


class Window:
    """Running averages between two reports.

    `samples_per_s` is wall-clock time of the train steps, data waiting included (what a user
    gets); `compute_s` is the part spent in forward/backward/step. Reporting, checkpoints and
    dev evaluation fall outside the window (`restart_clock` after them).
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.n, self.loss, self.parts = 0, 0.0, {}
        self.examples, self.tokens, self.compute = 0, 0, 0.0
        self.restart_clock()

    def restart_clock(self):
        self.started = time.perf_counter()

    def add(self, loss, parts, examples, tokens, seconds):
        self.n += 1
        self.loss += loss
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        self.examples += examples
        self.tokens += tokens
        self.compute += seconds

    def flush(self) -> dict:
        n = max(1, self.n)
        wall = max(time.perf_counter() - self.started, 1e-9)
        out = {"loss": self.loss / n, **{f"loss/{k}": v / n for k, v in self.parts.items()},
               "seconds": wall, "compute_s": self.compute,
               "samples_per_s": self.examples / wall, "tokens_per_s": self.tokens / wall}
        self.reset()
        return out


class DevEvaluator:
    """The dev metric during training: STS Spearman x100, or retrieval nDCG@10 x100."""

    def __init__(self, job: JobConfig, plan: dict):
        self.job = job
        self.dev = plan["dev"]

    def run(self, engine, rank: int) -> float:
        if rank != 0 and not engine.all_ranks_forward_for_eval:
            return float("nan")  # rank 0's value is the one Ray Train records
        model = engine.model
        model.eval()
        try:
            with engine.full_weights():
                return self._measure(model)
        finally:
            model.train()

    def _measure(self, model) -> float:
        d, bs = self.dev, self.job.eval.batch_size
        if d["kind"] == "retrieval":
            from angle_ray.eval.retrieval import evaluate_retrieval

            return evaluate_retrieval(model, d["corpus"], d["queries"], d["qrels"], batch_size=bs,
                                      show_progress=False)["ndcg@10"]
        from angle_ray.eval.sts import sts_spearman

        return sts_spearman(model, d["text1"], d["text2"], d["gold"], batch_size=bs,
                            desc="dev", show_progress=False)


def save_and_report(engine, model, job: JobConfig, step: int, metrics: dict, rank: int,
                    last: bool) -> None:
    """Every rank writes its engine shard; rank 0 adds the step, config and an HF model folder."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="angle-ckpt-") as folder:
        engine.save(folder)
        with engine.full_weights():
            if rank == 0:
                model.save(os.path.join(folder, MODEL_DIR))
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps(
                {"step": step, "final": last, "metrics": metrics,
                 "config": job.model_dump(mode="json")}, indent=1))
        wrote = any(Path(folder).iterdir())
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if wrote else None)
