"""SciFact dev split, same step budget: zero-shot vs in-batch negatives vs + static BM25
negatives vs + ANCE refresh. Prints nDCG@10 and Recall@100 side by side.

    python bench/scifact_ance.py                     # ~40-60 min on 2 CPU cores
    python bench/scifact_ance.py --steps 60 --arms ibn,ance

All arms start from all-MiniLM-L6-v2 and run jobs/configs/scifact_ance.yaml with the same
steps, batch, learning rate and seed; they differ only in where negatives come from:

    zero-shot  the packaged model, no training
    ibn        mining.warm_start=none, no refresh: Format B, in-batch negatives only
    bm25       mining.warm_start=bm25, no refresh: the same BM25 negatives all run
    ance       mining.warm_start=bm25 + refresh every --refresh-every steps from checkpoints

The dev split is `qrels/train.tsv` split by query id (fraction 0.2, seed 0, the same split the
miner holds out), evaluated against the whole corpus with exact FAISS search after training
(no dev evaluation during training, so every arm spends its time on the same steps).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARMS = {
    "ibn": ["mining.warm_start=none", "mining.refresh_every=null"],
    "bm25": ["mining.warm_start=bm25", "mining.refresh_every=null"],
    "ance": ["mining.warm_start=bm25"],
}


def dev_metrics(model, max_length: int) -> dict:
    from angle_ray.data.beir import load_beir, split_qrels_by_query
    from angle_ray.data.location import expand_path
    from angle_ray.eval.retrieval import evaluate_retrieval

    data = load_beir(expand_path("{data_dir}/scifact"), split="train")
    _, dev = split_qrels_by_query(data.qrels, 0.2, 0)
    model.cfg = model.cfg.model_copy(update={"max_length": max_length})
    return evaluate_retrieval(model, data.corpus, data.queries, dev, batch_size=64,
                              show_progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="jobs/configs/scifact_ance.yaml")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--refresh-every", type=int, default=25)
    p.add_argument("--arms", default="zero-shot,ibn,bm25,ance")
    p.add_argument("--eval-max-length", type=int, default=256)
    p.add_argument("--out", default="runs/bench_scifact_ance")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for every arm")
    args = p.parse_args()

    from angle_ray.config import load_config
    from angle_ray.models.backbone import load_embedding_model
    from angle_ray.models.loader import load_model
    from angle_ray.train.driver import init_ray, run_training

    init_ray()
    out = Path(args.out).resolve()
    results: dict[str, dict] = {}
    for arm in args.arms.split(","):
        started = time.perf_counter()
        if arm == "zero-shot":
            cfg = load_config(args.config)
            model = load_model(cfg.model.name_or_path, base=cfg.model)
            results[arm] = {**dev_metrics(model, args.eval_max_length), "train_s": 0.0}
        else:
            overrides = [f"train.name={arm}", f"train.storage_path={out}",
                         f"train.max_steps={args.steps}", f"mining.refresh_every={args.refresh_every}",
                         f"train.checkpoint_every={args.refresh_every}", "eval.retrieval_dev=null",
                         "export.sentence_transformers=false", *ARMS[arm], *args.overrides]
            run = run_training(load_config(args.config, overrides))
            metrics = dev_metrics(load_embedding_model(run.model_dir), args.eval_max_length)
            status = run.run_dir / "negatives" / "refresher.json"
            refreshes = json.loads(status.read_text())["published"] if status.exists() else []
            results[arm] = {**metrics, "train_s": time.perf_counter() - started,
                            "versions": refreshes}
        print(f"[bench] {arm}: {json.dumps(results[arm])}", flush=True)

    print(f"\nSciFact dev (qrels/train.tsv split by query, 20%, seed 0), {args.steps} steps per arm\n")
    print("| arm | nDCG@10 | Recall@100 | MRR@10 | wall s | refreshed versions |")
    print("|---|---|---|---|---|---|")
    for arm, r in results.items():
        print(f"| {arm} | {r['ndcg@10']:.2f} | {r['recall@100']:.2f} | {r['mrr@10']:.2f} | "
              f"{r['train_s']:.0f} | {r.get('versions', '')} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
