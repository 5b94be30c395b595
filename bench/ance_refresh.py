"""What an ANCE refresh costs: encoder pool throughput, FAISS build/search, and its effect on
training steps. Prints the figures side by side with the ratios.

    python bench/ance_refresh.py                          # encode + index, ~5 min on 2 cores
    python bench/ance_refresh.py --runs runs/bench_scifact_ance/seed0   # + step times of two runs

1. encode: the SciFact corpus (first --docs documents) embedded by one plain process
   (`angle_ray.models.embedder.encode`, all cores) and by the Ray Data encoder pool with 1 and
   2 actors (`encode_with_pool`, --cpus-per-actor each); texts/s and ratios pool / plain.
   Pool times include starting the actors and loading the model in each.
2. index: FAISS flat, IVF and HNSW over those embeddings: build seconds, search seconds for the
   SciFact training queries (top 100), and recall of the exact top-10 (flat = 1.0).
3. steps (--runs DIR): DIR/bm25 (static negatives, no refresh) and DIR/ance-bm25 (refresh running
   beside training), as written by bench/scifact_ance.py: mean seconds per train step over
   the logged windows, the ratio ance / bm25, and the time the loop spent waiting on negatives
   (`neg/wait_s`, 0 unless mining.max_staleness is set and exceeded).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_encode(texts: list[str], max_length: int, cpus_per_actor: float, batch: int) -> np.ndarray:
    from angle_ray.config import ModelConfig, PoolConfig
    from angle_ray.mining.encoder_pool import encode_with_pool
    from angle_ray.models.embedder import encode
    from angle_ray.models.loader import load_model

    cfg = ModelConfig()
    t0 = time.perf_counter()
    model = load_model(cfg.name_or_path, max_length=max_length, base=cfg)
    plain = encode(model, texts, batch_size=batch, normalize=True, show_progress=False)
    plain_s = time.perf_counter() - t0
    rows = [("plain process", plain_s)]
    for actors in (1, 2):
        pool = PoolConfig(min_actors=actors, max_actors=actors, cpus_per_actor=cpus_per_actor,
                          batch_size=batch)
        run = encode_with_pool(cfg.name_or_path, texts, cfg, pool, max_length=max_length)
        assert np.allclose(run.embeddings, plain, atol=1e-4), "pool and plain embeddings differ"
        rows.append((f"pool, {actors} actor(s)", run.seconds))
    print(f"\n## encode: {len(texts)} SciFact docs, max_length {max_length}, "
          f"{cpus_per_actor} CPU per actor\n")
    print("| encoder | seconds | texts/s | vs plain |")
    print("|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.1f} | {len(texts) / sec:.1f} | {plain_s / sec:.2f}x |")
    print(f"\npool 2 actors / 1 actor: {rows[1][1] / rows[2][1]:.2f}x")
    return plain


def bench_index(doc_emb: np.ndarray, query_emb: np.ndarray) -> None:
    from angle_ray.config import MiningConfig
    from angle_ray.mining.index import build_index

    exact = None
    print(f"\n## index: {len(doc_emb)} docs, {len(query_emb)} queries, top 100\n")
    print("| index | build s | search s | recall of exact top-10 |")
    print("|---|---|---|---|")
    for kind in ("flat", "ivf", "hnsw"):
        cfg = MiningConfig(beir="-", index=kind, faiss_gpu=False)
        t0 = time.perf_counter()
        index = build_index(doc_emb, cfg)
        t1 = time.perf_counter()
        _, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), 100)
        t2 = time.perf_counter()
        if exact is None:
            exact = idx[:, :10]
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx[:, :10], exact)])
        print(f"| {kind} | {t1 - t0:.3f} | {t2 - t1:.3f} | {recall:.3f} |")


def mean_step_s(run_dir: Path) -> tuple[float, float, int]:
    from angle_ray.train.progress import read_metrics

    rows = [r for r in read_metrics(run_dir) if "seconds" in r]
    steps, seconds, prev = 0, 0.0, 0
    for r in rows:
        step = r["step"]
        seconds += r["seconds"]
        steps += step - prev
        prev = step
    wait = max(r.get("neg/wait_s", 0.0) for r in rows)
    return seconds / max(steps, 1), wait, steps


def bench_steps(runs: Path) -> None:
    print(f"\n## train steps with and without a refresh running ({runs})\n")
    print("| run | steps | s/step | waited on negatives s |")
    print("|---|---|---|---|")
    out = {}
    for name in ("bm25", "ance-bm25"):
        per_step, wait, steps = mean_step_s(runs / name)
        out[name] = per_step
        print(f"| {name} | {steps} | {per_step:.2f} | {wait:.1f} |")
    print(f"\nstep time with refresh / without: {out['ance-bm25'] / out['bm25']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", default=None, help="folder with bm25/ and ance-bm25/ runs to compare")
    p.add_argument("--skip-encode", action="store_true")
    args = p.parse_args()

    from angle_ray.config import MiningConfig
    from angle_ray.mining.task import load_mining_task
    from angle_ray.train.driver import init_ray

    if not args.skip_encode:
        init_ray()
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        task = load_mining_task(MiningConfig(beir="{data_dir}/scifact"))
        texts = task.doc_texts[: args.docs]
        doc_emb = bench_encode(texts, args.max_length, args.cpus_per_actor, args.batch)
        from angle_ray.config import ModelConfig
        from angle_ray.models.embedder import encode
        from angle_ray.models.loader import load_model

        model = load_model(ModelConfig().name_or_path, max_length=args.max_length, base=ModelConfig())
        query_emb = encode(model, task.query_texts, normalize=True, show_progress=False)
        bench_index(doc_emb, query_emb)
    if args.runs:
        bench_steps(Path(args.runs))


if __name__ == "__main__":
    main()
