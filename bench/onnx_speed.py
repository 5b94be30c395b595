"""Embedding speed and quality on CPU: PyTorch fp32 vs ONNX fp32 vs ONNX int8 (onnxruntime).

    source .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/onnx_speed.py                                  # 1000 sentences, full STS-B test
    python bench/onnx_speed.py --model runs/quickstart/model    # a trained model
    python bench/onnx_speed.py --sentences 50 --pairs 25        # smoke run (~2 min with export)

The model (default all-MiniLM-L6-v2) is exported once with ``export_onnx`` into a temporary
folder (``--out`` keeps it). Every system embeds the same texts with the same batch size and the
same number of threads (``--threads``, default all cores: ``torch.set_num_threads`` and
onnxruntime's intra-op threads), normalised, after a warm-up batch:

- texts/s: the first ``--sentences`` STS-B test sentences (text1 column, then text2), the best
  of ``--repeats`` timed passes, tokenisation included on every side;
- STS-B test Spearman x100 (cosine vs gold, all 1379 pairs unless ``--pairs``): what int8
  quantisation costs in quality, next to what it buys in speed.

Prints one table with the ratios to PyTorch fp32 side by side. Timings on a shared machine are
noisy: compare ratios from one run and use ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from angle_ray.eval.sts import cosine_rows, spearman_x100
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from angle_ray.models.onnx_export import OnnxEmbedder, export_onnx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("ANGLE_RAY_DATA_DIR", REPO.parent / "shared" / "data"))
Encoder = Callable[[list[str]], np.ndarray]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="folder or name (any load_model ref)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="holds stsb/test.jsonl")
    p.add_argument("--sentences", type=int, default=1000, help="sentences timed per system")
    p.add_argument("--pairs", type=int, default=None, help="STS-B test pairs scored (default all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, every system")
    p.add_argument("--repeats", type=int, default=1, help="timed passes per system; best is kept")
    p.add_argument("--out", type=Path, default=None, help="keep the ONNX export here")
    return p.parse_args(argv)


def read_stsb_test(data_dir: Path, pairs: int | None) -> tuple[list[str], list[str], list[float]]:
    path = data_dir / "stsb" / "test.jsonl"
    with path.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[:pairs] if pairs else rows
    return [r["text1"] for r in rows], [r["text2"] for r in rows], [float(r["label"]) for r in rows]


def texts_per_second(encode_fn: Encoder, texts: list[str], repeats: int) -> float:
    encode_fn(texts[:32])  # warm-up: first-call allocations, onnxruntime's graph preparation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode_fn(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def stsb_spearman(encode_fn: Encoder, text1: list[str], text2: list[str], gold: list[float]) -> float:
    unique = list(dict.fromkeys([*text1, *text2]))
    index = {t: i for i, t in enumerate(unique)}
    emb = encode_fn(unique)
    return spearman_x100(cosine_rows(emb[[index[t] for t in text1]], emb[[index[t] for t in text2]]),
                         gold)


def build_systems(args, out_dir: Path) -> dict[str, Encoder]:
    model = load_model(args.model).eval()
    start = time.perf_counter()
    export_onnx(model, out_dir, quantize_int8=True)
    print(f"exported {args.model} to {out_dir} in {time.perf_counter() - start:.0f} s")
    fp32 = OnnxEmbedder(out_dir, variant="fp32", threads=args.threads)
    int8 = OnnxEmbedder(out_dir, variant="int8", threads=args.threads)
    size = args.batch_size
    return {
        "PyTorch fp32": lambda t: encode(model, t, batch_size=size, normalize=True, show_progress=False),
        "ONNX fp32": lambda t: fp32.encode(t, batch_size=size),
        "ONNX int8": lambda t: int8.encode(t, batch_size=size),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    text1, text2, gold = read_stsb_test(args.data_dir, args.pairs)
    all1, all2, _ = read_stsb_test(args.data_dir, None)
    sentences = list(dict.fromkeys(all1 + all2))[: args.sentences]  # unique: no cache effects
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as tmp:
        systems = build_systems(args, args.out or Path(tmp) / "model")
        results = {}
        for name, encode_fn in systems.items():
            results[name] = (texts_per_second(encode_fn, sentences, args.repeats),
                             stsb_spearman(encode_fn, text1, text2, gold))
            print(f"  {name}: {results[name][0]:.1f} texts/s, Spearman {results[name][1]:.2f}")
    base_speed, base_rho = results["PyTorch fp32"]
    print(f"\n{len(sentences)} STS-B test sentences, batch {args.batch_size}, {args.threads} threads; "
          f"Spearman on {len(gold)} STS-B test pairs\n")
    print("| system | texts/s | x PyTorch fp32 | STS-B test Spearman | vs PyTorch fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, (speed, rho) in results.items():
        print(f"| {name} | {speed:.1f} | {speed / base_speed:.2f}x | {rho:.2f} | {rho - base_rho:+.2f} |")


if __name__ == "__main__":
    main()
