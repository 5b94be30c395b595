"""GradCache: peak memory and pairs/s at a large batch, uncached vs cached (``train.grad_cache``).

    source .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/grad_cache_memory.py                        # batch 512, mini-batch 32, 3 steps
    python bench/grad_cache_memory.py --batch 64 --steps 1   # smoke run (~1 min)

Each configuration runs in a fresh Python process (so one's allocations cannot hide the other's
peak): all-MiniLM-L6-v2 in training mode (dropout on), the DDP engine of angle-ray on one CPU
worker, ``train_step`` on ``--batch`` real STS-B train pairs (Format A: CoSENT + in-batch
negatives + angle, 2 x batch texts per step), one untimed warm-up step, then ``--steps`` timed
steps. Memory is the process's resident-set high-water mark (``VmHWM`` in /proc/self/status;
tracemalloc does not see torch's allocations): ``peak`` at the end, ``model`` right after the
model and engine were built, ``train`` = peak - model, what the steps themselves added.

Prints one table with the cached / uncached ratios side by side. On a GPU the same ratio holds for
activation memory; ``--device cuda`` reports torch.cuda.max_memory_allocated instead of VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from angle_ray.config import LossConfig, ModelConfig, TrainConfig
from angle_ray.data.collate import TokenBatch, pad
from angle_ray.data.roles import ragged
from angle_ray.data.stream import text_hash
from angle_ray.losses import build_loss
from angle_ray.models.backbone import build_model
from angle_ray.train.engine import make_engine
from angle_ray.train.step import StepExtras, train_step

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("ANGLE_RAY_DATA_DIR", REPO.parent / "shared" / "data"))
LOSS = LossConfig(cosine_w=1.0, ibn_w=1.0, angle_w=0.02)


def vm_hwm_mib() -> float:
    """This process's resident-set high-water mark, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return vm_hwm_mib()


def stsb_batches(tokenizer, batch: int, count: int, max_length: int):
    """`count` Format A batches of `batch` consecutive STS-B train pairs, padded."""
    rows = [json.loads(line) for line in (DATA / "stsb" / "train.jsonl").open()]
    if batch * count > len(rows):
        raise SystemExit(f"--batch {batch} x {count} steps needs more than the {len(rows)} STS-B pairs")
    out = []
    for start in range(0, batch * count, batch):
        chunk = rows[start:start + batch]
        cols = {"label": np.array([r["label"] / 5 for r in chunk], dtype=np.float32)}
        for role in ("text1", "text2"):
            texts = [r[role] for r in chunk]
            cols[f"{role}_ids"] = ragged(tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
            cols[f"{role}_hash"] = np.array([text_hash(t) for t in texts], dtype=np.int64)
        out.append(pad(TokenBatch("A", 0, cols), pad_id=tokenizer.pad_token_id, left_pad=False))
    return out


def child(args: argparse.Namespace) -> None:
    """One configuration, in this (fresh) process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(ModelConfig(max_length=args.max_length)).to(device).train()
    engine = make_engine(model, TrainConfig(strategy="ddp", lr=2e-5, warmup_steps=0,
                                            batch_size=args.batch), args.steps + 1, device)
    batches = stsb_batches(model.tokenizer, args.batch, args.steps + 1, args.max_length)
    extras = StepExtras(grad_cache_mini_batch=args.mini_batch if args.mode == "grad_cache" else None)
    loss_fn = build_loss(LOSS)
    base = peak_mib(device)
    train_step(engine, loss_fn, batches[0], device, extras)  # warm-up: allocator, thread pools
    started = time.perf_counter()
    for batch in batches[1:]:
        train_step(engine, loss_fn, batch, device, extras)
    seconds = time.perf_counter() - started
    peak = peak_mib(device)
    print(json.dumps({"mode": args.mode, "model_mib": base, "peak_mib": peak,
                      "train_mib": peak - base, "pairs_per_s": args.batch * args.steps / seconds}))


def run_child(args: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--batch", str(args.batch),
           "--mini-batch", str(args.mini_batch), "--steps", str(args.steps),
           "--threads", str(args.threads), "--max-length", str(args.max_length),
           "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(uncached: dict, cached: dict, args: argparse.Namespace) -> str:
    unit = "GPU MiB (max allocated)" if args.device.startswith("cuda") else "RSS MiB (VmHWM)"
    title = (f"global batch {args.batch} pairs ({2 * args.batch} texts), mini-batch "
             f"{args.mini_batch} texts, {args.steps} timed steps, {args.threads} threads; {unit}")
    lines = [title, "", "| | uncached | grad_cache | grad_cache / uncached |", "|---|---|---|---|"]
    for key, label in (("peak_mib", "peak"), ("train_mib", "train (peak - model)"),
                       ("pairs_per_s", "pairs/s")):
        a, b = uncached[key], cached[key]
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512, help="pairs per step (default 512)")
    p.add_argument("--mini-batch", type=int, default=32, help="GradCache texts per forward (32)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text (64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--child", choices=["uncached", "grad_cache"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    results = {mode: run_child(args, mode) for mode in ("uncached", "grad_cache")}
    print(table(results["uncached"], results["grad_cache"], args))


if __name__ == "__main__":
    main()
