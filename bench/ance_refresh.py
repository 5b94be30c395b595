"""What an ANCE refresh costs and what makes it cheaper: the encode arms side by side (seconds,
texts/s, ratio and the mined lists' overlap with today's), FAISS build/search, and the refresh's
effect on training steps.

    python bench/ance_refresh.py                          # SciFact, 192 tokens (the lead runs it)
    python bench/ance_refresh.py --sample 0.3             # + a partial refresh arm
    python bench/ance_refresh.py --docs 200 --queries 40  # a smoke run (about a minute or two)
    python bench/ance_refresh.py --sample 0.3 --arms bf16,sample-bf16   # today + those two
    python bench/ance_refresh.py --skip-encode --runs runs/bench_scifact_ance/seed0   # step times

1. encode: the SciFact corpus + training queries (with --docs/--queries: the first --docs
   documents plus the kept queries' positives) encoded through the refresher's own path
   (`angle_ray.mining.refresher.mine_candidates`: encoder actor pool -> FAISS), from an
   angle-ray model folder as a checkpoint holds it, at --max-length tokens, in these arms:
     today          texts in (tokenised in the actors), unsorted, fp32
     token cache    token ids from the job's token cache, unsorted, fp32
     + length sort  longest rows first, so each batch pads to its own longest row
     + bf16         pool.precision=bf16 (autocast; fp32 where the CPU has no native bf16)
     + int8         pool.precision=int8 (dynamic quantisation of most Linear layers)
     + sample F     (--sample F) length sort, fp32, mining.refresh_sample=F: F of the corpus
                    plus the positives re-encoded, searched among those only
     + sample F + bf16   the same in bf16 (fp32 where the CPU has no native bf16)
     + sample F + int8   the same in int8
   Each arm starts its own pool (actor start + model load count, as in a refresh). Columns:
   seconds, texts/s, today / arm, and the mean overlap of each training query's top-30
   candidate list with today's. The token cache's one-time build (per job) is printed apart.
2. index: FAISS flat, IVF and HNSW over today's embeddings: build seconds, search seconds for
   the training queries (top 100), and recall of the exact top-10 (flat = 1.0).
3. steps (--runs DIR): DIR/bm25 (static negatives, no refresh) and DIR/ance-bm25 (refresh running
   beside training), as written by bench/scifact_ance.py: mean seconds per train step over
   the logged windows, the ratio ance / bm25, and the time the loop spent waiting on negatives
   (`neg/wait_s`, 0 unless mining.max_staleness is set and exceeded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOP = 30  # candidates per query compared between arms


def subset_task(task, docs: int | None, queries: int | None):
    """The first ``queries`` queries over the first ``docs`` documents + their positives."""
    from angle_ray.mining.task import MiningTask

    if docs is None and queries is None:
        return task
    q = slice(0, queries)
    positives = task.positives[q]
    keep = sorted(set(range(min(docs or len(task.doc_ids), len(task.doc_ids))))
                  | {d for p in positives for d in p})
    new = {old: i for i, old in enumerate(keep)}
    return MiningTask(doc_ids=[task.doc_ids[d] for d in keep], doc_texts=[task.doc_texts[d] for d in keep],
                      query_ids=task.query_ids[q], query_texts=task.query_texts[q],
                      positives=[[new[d] for d in p] for p in positives])


ARM_KEYS = ("today", "tokens", "sort", "bf16", "int8", "sample", "sample-bf16", "sample-int8")


def arms(sample: float | None, keys: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, settings): token ids or texts, pool.sort_by_length, pool.precision, refresh_sample.
    ``keys``: only those arms (``ARM_KEYS``), today's always first (the reference)."""
    out = [("today", "today (text, unsorted, fp32)", {"tokens": False, "sort": False, "precision": "fp32"}),
           ("tokens", "token cache", {"tokens": True, "sort": False, "precision": "fp32"}),
           ("sort", "+ length sort", {"tokens": True, "sort": True, "precision": "fp32"}),
           ("bf16", "+ bf16", {"tokens": True, "sort": True, "precision": "bf16"}),
           ("int8", "+ int8", {"tokens": True, "sort": True, "precision": "int8"})]
    if sample is not None:
        for precision in ("fp32", "bf16", "int8"):
            name = f"+ length sort + sample {sample:g}" + (
                " (fp32)" if precision == "fp32" else f" + {precision}")
            key = "sample" if precision == "fp32" else f"sample-{precision}"
            out.append((key, name, {"tokens": True, "sort": True, "precision": precision,
                                    "sample": sample}))
    return [(name, arm) for key, name, arm in out if keys is None or key == "today" or key in keys]


def overlap(idx: np.ndarray, ref: np.ndarray) -> float:
    """Mean share of each query's reference top list found in its top list (-1s ignored)."""
    shares = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(idx, ref)]
    return float(np.mean(shares))


def bench_encode(job, task, model_dir: str, sample: float | None, keys: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    from angle_ray.mining.refresher import mine_candidates
    from angle_ray.mining.token_cache import mining_tokens

    with tempfile.TemporaryDirectory() as neg_dir:
        built = mining_tokens(job, task, Path(neg_dir))
        reused = mining_tokens(job, task, Path(neg_dir))
    texts = len(task.doc_texts) + len(task.query_texts)
    m = job.mining
    rows, ref, today = [], None, None
    for name, arm in arms(sample, keys):
        pool = m.pool.model_copy(update={"sort_by_length": arm["sort"], "precision": arm["precision"]})
        arm_job = job.model_copy(update={"mining": m.model_copy(update={
            "pool": pool, "refresh_sample": arm.get("sample")})})
        cands, run, encoded = mine_candidates(arm_job, task, model_dir, step=0,
                                              tokens=reused if arm["tokens"] else None, top=TOP)
        n = encoded + len(task.query_texts)
        if ref is None:
            ref, today = cands.idx, (run.seconds, run.embeddings[:encoded], run.embeddings[encoded:])
        rows.append((name, run.seconds, n / run.seconds, today[0] / run.seconds, overlap(cands.idx, ref), n))
    print(f"\n## encode: {len(task.doc_texts)} SciFact docs + {len(task.query_texts)} training queries, "
          f"max_length {m.max_length}, {m.pool.max_actors} actor(s) x {m.pool.cpus_per_actor:g} CPU, "
          f"batch {m.pool.batch_size}\n")
    print(f"token cache (once per job): tokenised {texts} texts in {built.seconds:.2f} s, "
          f"read back in {reused.seconds:.2f} s\n")
    print(f"| arm | texts encoded | seconds | texts/s | today / arm | top-{TOP} overlap vs today |")
    print("|---|---|---|---|---|---|")
    for name, sec, rate, ratio, ov, n in rows:
        print(f"| {name} | {n} | {sec:.1f} | {rate:.1f} | {ratio:.2f}x | {ov:.3f} |")
    return today[1], today[2]


def bench_index(doc_emb: np.ndarray, query_emb: np.ndarray) -> None:
    from angle_ray.config import MiningConfig
    from angle_ray.mining.index import build_index

    exact = None
    top = min(100, len(doc_emb))
    print(f"\n## index: {len(doc_emb)} docs, {len(query_emb)} queries, top {top}\n")
    print("| index | build s | search s | recall of exact top-10 |")
    print("|---|---|---|---|")
    for kind in ("flat", "ivf", "hnsw"):
        cfg = MiningConfig(beir="-", index=kind, faiss_gpu=False)
        t0 = time.perf_counter()
        index = build_index(doc_emb, cfg)
        t1 = time.perf_counter()
        _, idx = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), top)
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
    for name in ("bm25", "ance-bm25"):  # the run folders bench/scifact_ance.py writes
        per_step, wait, steps = mean_step_s(runs / name)
        out[name] = per_step
        print(f"| {name} | {steps} | {per_step:.2f} | {wait:.1f} |")
    print(f"\nstep time with refresh / without: {out['ance-bm25'] / out['bm25']:.2f}x")


def run_encode_and_index(args) -> None:
    import ray.data

    from angle_ray.config import config_from_dict
    from angle_ray.mining.task import load_mining_task
    from angle_ray.models.backbone import build_model
    from angle_ray.train.driver import init_ray

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    job = config_from_dict({"model": {"max_length": args.max_length}, "mining": {
        "beir": "{data_dir}/scifact", "max_length": args.max_length,
        "pool": {"min_actors": args.actors, "max_actors": args.actors,
                 "cpus_per_actor": args.cpus_per_actor, "batch_size": args.batch}}})
    task = subset_task(load_mining_task(job.mining), args.docs, args.queries)
    with tempfile.TemporaryDirectory() as checkpoint:  # an angle-ray folder, as a checkpoint holds it
        build_model(job.model).save(checkpoint)
        doc_emb, query_emb = bench_encode(job, task, checkpoint, args.sample, args.arms)
    bench_index(doc_emb, query_emb)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=None, help="first N documents (+ the positives)")
    p.add_argument("--queries", type=int, default=None, help="first N training queries")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sample", type=float, default=None, help="add a mining.refresh_sample arm")
    p.add_argument("--arms", default=None, type=lambda v: v.split(","),
                   help=f"only these arms besides today's, of {','.join(ARM_KEYS)} "
                        "(sample arms need --sample)")
    p.add_argument("--runs", default=None,
                   help="a seed folder of bench/scifact_ance.py (its bm25/ and ance-bm25/ runs)")
    p.add_argument("--skip-encode", action="store_true")
    args = p.parse_args()
    unknown = sorted(set(args.arms or ()) - set(ARM_KEYS))
    if unknown:
        p.error(f"--arms: unknown {', '.join(unknown)} (known: {', '.join(ARM_KEYS)})")
    if args.sample is None and any(k.startswith("sample") for k in args.arms or ()):
        p.error("--arms: the sample arms need --sample F")
    if not args.skip_encode:
        run_encode_and_index(args)
    if args.runs:
        bench_steps(Path(args.runs))


if __name__ == "__main__":
    main()
