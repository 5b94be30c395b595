"""`angle-ray embed` throughput on the SciFact corpus: the Ray Data encoder pool with 1 and 2
actors against one plain process, texts/s and ratios side by side.

    python bench/embed_throughput.py                 # all 5183 docs (minutes on 2 cores)
    python bench/embed_throughput.py --docs 100      # a slice, to check that it runs

The corpus (its first --docs documents, BEIR layout, title + text) is written to a temporary
BEIR folder, then embedded (a) by `encode` in this process (torch on all cores, loading the
model included) and (b) by
`embed_corpus` with 1 and then 2 actors of --cpus-per-actor CPUs each, into fresh output
folders. The embed times are end to end, as a user sees them: the row check pass, starting the
actors, loading the model in each, writing the Parquet shards. Every embed run's vectors are
checked against the plain ones (max abs diff < 1e-4) before a figure is printed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from angle_ray.config import PoolConfig
from angle_ray.data.location import default_data_dir
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from angle_ray.workflows.embed_corpus import EmbedSpec, embed_corpus

MODEL = "all-MiniLM-L6-v2"


def corpus_slice(src: Path, docs: int | None, folder: Path) -> list[str]:
    """The first `docs` SciFact documents as a BEIR folder; their texts as embed reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    with gzip.open(src / "corpus.jsonl.gz", "rt") as f, (folder / "corpus.jsonl").open("w") as out:
        for n, line in enumerate(f):
            if docs is not None and n >= docs:
                break
            row = json.loads(line)
            out.write(line if line.endswith("\n") else line + "\n")
            title = (row.get("title") or "").strip()
            texts.append(f"{title} {row['text']}" if title else row["text"])
    return texts


def plain_encode(texts: list[str], max_length: int, batch: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    model = load_model(MODEL, max_length=max_length)
    emb = encode(model, texts, batch_size=batch, normalize=True, show_progress=False)
    return emb, time.perf_counter() - t0


def pool_embed(folder: Path, out: Path, actors: int, args) -> tuple[np.ndarray, float]:
    pool = PoolConfig(min_actors=actors, max_actors=actors, cpus_per_actor=args.cpus_per_actor,
                      batch_size=args.batch)
    spec = EmbedSpec(model=MODEL, input=str(folder), output=str(out), max_length=args.max_length,
                     shard_rows=args.shard_rows, pool=pool)
    report = embed_corpus(spec)
    emb = np.stack(pd.read_parquet(out)["embedding"].to_numpy())
    return emb, report.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=None, help="first N documents (default: all 5183)")
    p.add_argument("--data-dir", default=None, help="folder holding scifact/ (default: the project's data)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="texts per encode call")
    p.add_argument("--shard-rows", type=int, default=1000)
    p.add_argument("--cpus-per-actor", type=float, default=max(1, (os.cpu_count() or 2) // 2))
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = Path(args.data_dir or default_data_dir()) / "scifact"
    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    try:
        texts = corpus_slice(src, args.docs, work / "scifact")
        plain, plain_s = plain_encode(texts, args.max_length, args.batch)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = [("plain process (encode)", plain_s)]
        for actors in (1, 2):
            emb, seconds = pool_embed(work / "scifact", work / f"out-{actors}", actors, args)
            diff = float(np.abs(emb - plain).max())
            assert diff < 1e-4, f"embed with {actors} actor(s) differs from plain encode by {diff}"
            rows.append((f"angle-ray embed, {actors} actor(s)", seconds))
        report(rows, len(texts), args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[tuple[str, float]], n: int, args) -> None:
    print(f"\n## embed: {n} SciFact docs, {MODEL}, max_length {args.max_length}, batch {args.batch}, "
          f"{args.cpus_per_actor:g} CPU(s) per actor, {os.cpu_count()} cores\n")
    print("| encoder | seconds | texts/s | vs plain |")
    print("|---|---|---|---|")
    plain_s = rows[0][1]
    for name, sec in rows:
        print(f"| {name} | {sec:.1f} | {n / sec:.1f} | {plain_s / sec:.2f}x |")
    print(f"\nembed 2 actors / 1 actor: {rows[1][1] / rows[2][1]:.2f}x")


if __name__ == "__main__":
    main()
