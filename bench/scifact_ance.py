"""SciFact dev split, same step budget, N seeds: zero-shot vs in-batch negatives vs static
negatives (BM25, or mined once by the starting model) vs ANCE refresh (from a BM25 or a model
warm start). Prints mean +- std of nDCG@10, MRR@10 and Recall@100, a dev nDCG@10-per-step plot
and how hard each published negatives version was.

    export HF_HUB_OFFLINE=1
    python bench/scifact_ance.py                           # 6 arms x 3 seeds: hours on 2 CPU cores
    python bench/scifact_ance.py --seeds 0 --arms ibn,ance-bm25 --steps 60
    python bench/scifact_ance.py --resume     # reuse the finished runs in --out, train the rest
    python bench/scifact_ance.py --zero-shot-lengths 128,192,256   # zero-shot only, then exit
    python bench/scifact_ance.py --zero-shot-lengths 64,128 --docs 400   # a quick smoke slice

Every trained arm runs jobs/configs/scifact_ance.yaml from its `model.name_or_path` with the same
--steps, batch, learning rate and seeds (`train.seed` = `mining.seed` = the seed, the same list
for every arm); the arms differ only in where the negatives come from:

    zero-shot     the starting model, no training (one evaluation; std 0)
    ibn           mining.warm_start=none, no refresh: in-batch negatives only
    bm25          mining.warm_start=bm25, no refresh: static BM25 negatives
    static-model  mining.warm_start=<model.name_or_path>, no refresh: negatives mined once by
                  the zero-shot model
    ance-bm25     BM25 warm start + refresh every --refresh-every steps from checkpoints
    ance-model    zero-shot-model warm start + refresh every --refresh-every steps

Dev split: `qrels/<split>.tsv` of `eval.retrieval_dev` split by query id (SciFact: 20% of
qrels/train.tsv, seed 0), the same queries `mining.holdout_*` keeps out of training.

The table: the model of each run's LAST step (--steps), searched exactly against the whole
corpus: by default the job's own dev evaluation at that step (metrics.csv: dev_metric = nDCG@10,
dev/mrr@10, dev/recall@100, at `model.max_length`; no second encoding pass), or with
--eval-max-length N the last checkpoint encoded again at N tokens. Not the exported model: with a
dev metric the driver exports the best-dev checkpoint, which would pick the winner on the very
queries we report.
The plot: the job's own dev evaluation during training (`dev_metric` in each run's metrics.csv,
every --eval-every steps (default: half of --steps) and at the last; checkpoints at the refresh
cadence are not evaluated: `train.eval_on_checkpoint=false`), averaged over seeds; step 0 and
the horizontal line are the zero-shot model at that same length.
Wall s: run_training end to end (warm-start mining, steps, refreshes, checkpoints, export) minus
the in-training dev evaluations, estimated as their count x the seconds one zero-shot dev
evaluation takes here at the worker's thread count. The final evaluation is not in it.
Negatives difficulty: from every version's manifest.json (kept: mining.keep_versions is raised
so no version is pruned): mean 1-based rank of the mined negatives, mean (weakest positive's
score - negative's score) in the retriever's units (BM25 or cosine: compare within a source),
and the % of negatives that were random fills.

Output (--out, default runs/bench_scifact_ance): <out>/seed<N>/<arm>/ (one run folder each, with
bench_result.json once the run is evaluated; the script refuses to start over an existing folder,
since a finished run would be resumed and train nothing, except with --resume, which reuses the
finished runs made with the same settings and trains only the rest: the bench can be run a few
seeds or arms at a time), zero_shot.json, results.json (every per-seed figure), dev_ndcg.png.
ance_refresh.py --runs reads the runs of one seed: <out>/seed0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import torch

from angle_ray.config import JobConfig, load_config
from angle_ray.data.beir import load_beir, split_qrels_by_query
from angle_ray.data.location import expand_path
from angle_ray.eval.retrieval import retrieval_metrics, search_flat
from angle_ray.mining.publish import list_versions, read_version
from angle_ray.mining.static import capped_length
from angle_ray.mining.training_setup import NEGATIVES_DIR
from angle_ray.models.backbone import load_embedding_model
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from angle_ray.models.precision import resolve_dtype
from angle_ray.train.checkpoint import MODEL_DIR, STATE_FILE
from angle_ray.train.driver import init_ray, run_training
from angle_ray.train.progress import read_metrics

ZERO_SHOT = "zero-shot"
ARMS = (ZERO_SHOT, "ibn", "bm25", "static-model", "ance-bm25", "ance-model")
METRICS = ("ndcg@10", "mrr@10", "recall@100")
MODEL_WARM_START = "<model>"  # stands for the job's model.name_or_path
WARM_START = {"ibn": "none", "bm25": "bm25", "static-model": MODEL_WARM_START,
              "ance-bm25": "bm25", "ance-model": MODEL_WARM_START}
REFRESHING = {"ance-bm25", "ance-model"}


def arm_overrides(arm: str, seed: int, steps: int, refresh_every: int, eval_every: int,
                  out: Path, model_name: str) -> list[str]:
    """The config overrides of one trained arm and seed (user overrides go after these)."""
    if arm not in WARM_START:
        raise ValueError(f"unknown trained arm {arm!r}; arms: {', '.join(ARMS)}")
    warm = model_name if WARM_START[arm] == MODEL_WARM_START else WARM_START[arm]
    refresh = refresh_every if arm in REFRESHING else "null"
    return [f"train.name={arm}", f"train.storage_path={out / f'seed{seed}'}",
            f"train.max_steps={steps}", f"train.seed={seed}", f"mining.seed={seed}",
            f"mining.warm_start={warm}", f"mining.refresh_every={refresh}",
            f"mining.keep_versions={steps // refresh_every + 2}",  # keep every version
            f"train.checkpoint_every={refresh_every}",  # the same cadence in every arm
            f"train.eval_every={eval_every}", "train.eval_on_checkpoint=false",
            "export.sentence_transformers=false"]


@dataclass
class DevSplit:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_dev_split(cfg: JobConfig, docs: int | None = None) -> DevSplit:
    """The dev queries `eval.retrieval_dev` scores, over the whole corpus (or the first `docs`
    documents, the dev positives always included: a smoke slice, not comparable)."""
    r = cfg.eval.retrieval_dev
    data = load_beir(expand_path(r.path), split=r.split)
    _, dev = split_qrels_by_query(data.qrels, r.dev_fraction, r.seed)
    corpus = data.corpus
    if docs is not None:
        positives = {d for judged in dev.values() for d in judged}
        others = [d for d in corpus if d not in positives][: max(0, docs - len(positives))]
        corpus = {d: corpus[d] for d in [*positives, *others]}
    return DevSplit(corpus=corpus, queries={q: data.queries[q] for q in dev}, qrels=dev)


def evaluate_dev(model, dev: DevSplit, max_length: int, batch_size: int = 64) -> tuple[dict, float]:
    """(nDCG@10 / MRR@10 / Recall@100 ... x100, seconds spent encoding) at `max_length` tokens."""
    doc_ids, query_ids = list(dev.corpus), list(dev.qrels)
    started = time.perf_counter()
    with capped_length(model, max_length):
        doc_emb = encode(model, [dev.corpus[d] for d in doc_ids], batch_size=batch_size,
                         show_progress=False)
        query_emb = encode(model, [dev.queries[q] for q in query_ids], batch_size=batch_size,
                           show_progress=False)
    encode_s = time.perf_counter() - started
    _, idx = search_flat(doc_emb, query_emb, 100)
    rankings = {q: [doc_ids[j] for j in row if j >= 0] for q, row in zip(query_ids, idx)}
    return retrieval_metrics(rankings, dev.qrels), encode_s


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); std 0 for a single value."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(per_seed: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std) over the seeds, for the table's metrics and the wall time."""
    keys = [*METRICS, "train_s"]
    return {k: mean_std([float(r[k]) for r in per_seed.values()]) for k in keys}


def dev_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, dev nDCG@10 x100) from metrics.csv; a step reported twice keeps the later row."""
    by_step: dict[int, float] = {}
    for row in read_metrics(run_dir):
        value = row.get("dev_metric")
        if isinstance(value, (int, float)) and not math.isnan(value):
            by_step[int(row["step"])] = float(value)
    return sorted(by_step.items())


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Per step, the mean over the curves that have that step."""
    values: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            values.setdefault(step, []).append(value)
    return [(step, statistics.fmean(v)) for step, v in sorted(values.items())]


def plot_dev_curves(curves: dict[str, list[tuple[int, float]]], zero_shot: float | None,
                    path: Path, title: str) -> Path:
    """One line per arm (dev nDCG@10 against step), zero-shot as a horizontal line; a PNG."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, curve in curves.items():
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", label=arm)
    if zero_shot is not None:
        ax.axhline(zero_shot, color="grey", linestyle="--", label=ZERO_SHOT)
    ax.set_xlabel("training step")
    ax.set_ylabel("dev nDCG@10 (x100)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def version_difficulty(neg_dir: Path) -> list[dict]:
    """One dict per published negatives version: its name, step, source and difficulty."""
    out = []
    for step, folder in list_versions(neg_dir):
        manifest = read_version(folder)[1]
        stats = manifest.get("stats", {})
        out.append({"version": folder.name, "step": manifest.get("step", step),
                    "source": manifest.get("source", "?"), "mean_rank": stats.get("mean_rank"),
                    "mean_margin": stats.get("mean_margin"),
                    "random_fill_fraction": stats.get("random_fill_fraction")})
    return out


def _fmt_mean(values: list, scale: float = 1.0, digits: int = 2) -> str:
    known = [v * scale for v in values if v is not None]
    return f"{statistics.fmean(known):.{digits}f}" if known else "-"


def _source_name(source) -> str:
    """A refreshed version's source is its own run's checkpoint folder (one per seed): named
    `checkpoint` in the table; a static source (bm25, a model) as it is."""
    return "checkpoint" if Path(str(source)).name.startswith("checkpoint_") else str(source)


def difficulty_table(versions: dict[str, list[list[dict]]]) -> str:
    """Markdown: per arm and version, the difficulty averaged over the seeds that published it.

    `versions`: arm -> one `version_difficulty` list per seed."""
    header = ("| arm | version | step | seeds | source | mean rank | mean (pos - neg score) "
              "| random fills % |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for arm, per_seed in versions.items():
        by_version: dict[tuple[int, str], list[dict]] = {}
        for seed_versions in per_seed:
            for v in seed_versions:
                by_version.setdefault((int(v["step"]), v["version"]), []).append(v)
        for (step, name), rows in sorted(by_version.items()):
            sources = sorted({_source_name(r["source"]) for r in rows})
            lines.append(
                f"| {arm} | {name} | {step} | {len(rows)} | {', '.join(sources)} | "
                f"{_fmt_mean([r['mean_rank'] for r in rows], digits=1)} | "
                f"{_fmt_mean([r['mean_margin'] for r in rows], digits=3)} | "
                f"{_fmt_mean([r['random_fill_fraction'] for r in rows], scale=100.0, digits=1)} |")
    return "\n".join(lines)


def results_table(summaries: dict[str, dict[str, tuple[float, float]]],
                  seeds: dict[str, int]) -> str:
    """Markdown: per arm, mean +- std of each metric and of the wall time."""
    lines = ["| arm | seeds | nDCG@10 | MRR@10 | Recall@100 | wall s |", "|---|---|---|---|---|---|"]
    for arm, s in summaries.items():
        cells = [f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in METRICS]
        lines.append(f"| {arm} | {seeds[arm]} | {' | '.join(cells)} | "
                     f"{s['train_s'][0]:.0f} ± {s['train_s'][1]:.0f} |")
    return "\n".join(lines)


def timed_dev_eval(model, dev: DevSplit, max_length: int, threads: int) -> tuple[dict, float]:
    """(metrics, seconds) of one dev evaluation with `threads` torch threads (as a worker)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        started = time.perf_counter()
        metrics, _ = evaluate_dev(model, dev, max_length)
        return metrics, time.perf_counter() - started
    finally:
        torch.set_num_threads(saved)


def last_dev_row(run_dir: Path, step: int) -> dict:
    """The job's own dev metrics at `step` (metrics.csv; the last step is always evaluated)."""
    rows = [r for r in read_metrics(run_dir) if r.get("step") == step
            and isinstance(r.get("dev/mrr@10"), (int, float)) and not math.isnan(r["dev_metric"])]
    if not rows:
        raise RuntimeError(f"{run_dir}: metrics.csv has no dev evaluation at step {step}")
    r = rows[-1]
    return {"ndcg@10": r["dev_metric"], "mrr@10": r["dev/mrr@10"], "recall@100": r["dev/recall@100"]}


def train_and_evaluate(cfg: JobConfig, dev: DevSplit, eval_max_length: int | None,
                       dev_eval_s: float) -> dict:
    """One run: train, take its last step's dev metrics (or evaluate its last checkpoint again at
    `eval_max_length`), read its curve and negatives versions."""
    started = time.perf_counter()
    run = run_training(cfg)
    run_s = time.perf_counter() - started
    if run.checkpoint_dir is None:
        raise RuntimeError(f"{run.run_dir}: the run reported no checkpoint to evaluate")
    last = Path(run.checkpoint_dir)
    final_step = json.loads((last / STATE_FILE).read_text())["step"]
    metrics = (last_dev_row(run.run_dir, final_step) if eval_max_length is None else
               evaluate_dev(load_embedding_model(last / MODEL_DIR), dev, eval_max_length)[0])
    curve = dev_curve(run.run_dir)
    n_dev_evals = len(curve)
    return {**metrics, "train_s": run_s - n_dev_evals * dev_eval_s, "run_s": run_s,
            "n_dev_evals": n_dev_evals, "final_step": final_step, "checkpoint": str(last),
            "curve": curve, "versions": version_difficulty(run.run_dir / NEGATIVES_DIR)}


RESULT_FILE = "bench_result.json"  # in a run folder: that run's figures, written when it ends


def run_settings(arm: str, seed: int, args, out: Path, base: JobConfig) -> dict:
    """Everything that decides one run's figures; a saved run is reused only if they match:
    the config file's content (not only its path) and the precision this machine trains
    `model.dtype` in (bf16 runs fp32 on a CPU without native bf16)."""
    config = Path(args.config).resolve()
    device = "cuda" if base.train.use_gpu else "cpu"
    return {"arm": arm, "seed": seed, "config": str(config),
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
            "precision": resolve_dtype(base.model.dtype, device)[0],
            "overrides": [*arm_overrides(arm, seed, args.steps, args.refresh_every,
                                         args.eval_every, out, base.model.name_or_path),
                          *args.overrides],
            "eval_max_length": args.eval_max_length}


def saved_result(run_dir: Path, settings: dict) -> dict | None:
    """A finished run's figures if they were made with `settings`, else None."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["result"] if saved.get("settings") == settings else None


def check_fresh(out: Path, arms: list[str], seeds: list[int], reusable: frozenset = frozenset()
                ) -> None:
    """Refuse to start over existing run folders (a finished run would resume and train nothing),
    except the `reusable` ones (--resume: finished runs of the same settings)."""
    taken = [out / f"seed{s}" / a for a in arms if a != ZERO_SHOT for s in seeds
             if (out / f"seed{s}" / a).exists() and out / f"seed{s}" / a not in reusable]
    if taken:
        raise SystemExit(f"run folder(s) exist: {', '.join(map(str, taken))}; pass another --out "
                         "or delete them (--resume reuses only finished runs of the same settings)")


def zero_shot_lengths(cfg: JobConfig, lengths: list[int], docs: int | None, out: Path) -> None:
    """The zero-shot model's dev metrics and encode seconds at each max length."""
    dev = load_dev_split(cfg, docs)
    model = load_model(cfg.model.name_or_path, base=cfg.model)
    rows = {}
    for length in lengths:
        metrics, encode_s = evaluate_dev(model, dev, length)
        rows[length] = {**metrics, "encode_s": encode_s}
        print(f"[bench] max length {length}: {json.dumps(rows[length])}", flush=True)
    print(f"\nzero-shot {cfg.model.name_or_path}, SciFact dev: {len(dev.qrels)} queries, "
          f"{len(dev.corpus)} docs{' (a --docs slice: not comparable)' if docs else ''}\n")
    print("| max length | nDCG@10 | MRR@10 | Recall@100 | encode s |\n|---|---|---|---|---|")
    for length, r in rows.items():
        print(f"| {length} | {r['ndcg@10']:.2f} | {r['mrr@10']:.2f} | {r['recall@100']:.2f} | "
              f"{r['encode_s']:.1f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot_lengths.json").write_text(json.dumps(
        {"docs": len(dev.corpus), "queries": len(dev.qrels), "lengths": rows}, indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="jobs/configs/scifact_ance.yaml")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--refresh-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=None, help="default: half of --steps")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--eval-max-length", type=int, default=None,
                   help="evaluate the last checkpoint again at N tokens (default: the job's own "
                        "dev evaluation at its last step, at model.max_length)")
    p.add_argument("--zero-shot-lengths", default=None,
                   help="e.g. 128,192,256: only the zero-shot model at each length, then exit")
    p.add_argument("--docs", type=int, default=None,
                   help="with --zero-shot-lengths: the first N docs (+ dev positives) only")
    p.add_argument("--out", default="runs/bench_scifact_ance")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished runs (and zero-shot figures) in --out made with the "
                        "same settings; train only the missing ones (the bench takes hours)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for every arm")
    args = p.parse_args(argv)
    args.eval_every = args.eval_every or max(1, args.steps // 2)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.arms = args.arms.split(",")
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; arms: {', '.join(ARMS)}")
    if args.docs is not None and args.zero_shot_lengths is None:
        p.error("--docs only goes with --zero-shot-lengths (training evaluates the whole corpus)")
    return args


def zero_shot_figures(args, base: JobConfig, dev: DevSplit, zero, out: Path) -> dict:
    """The zero-shot dev nDCG@10 at the job's length, timed at a worker's thread count (the
    wall-time correction), and the zero-shot arm's metrics (the same pass unless
    --eval-max-length differs); kept in <out>/zero_shot.json and reused by --resume when the
    settings match."""
    # the thread count a single worker on this node sets (angle_ray.train.loop)
    threads = base.train.torch_threads or os.cpu_count() or 1
    settings = {"model": base.model.name_or_path, "dev_max_length": base.model.max_length,
                "threads": threads, "eval_max_length": args.eval_max_length}
    path = out / "zero_shot.json"
    if args.resume and path.exists():
        saved = json.loads(path.read_text())
        if saved["settings"] == settings:
            return saved["figures"]
    zs_dev, dev_eval_s = timed_dev_eval(zero, dev, base.model.max_length, threads)
    table = (zs_dev if args.eval_max_length in (None, base.model.max_length) else
             evaluate_dev(zero, dev, args.eval_max_length)[0])
    figures = {"dev_ndcg@10": zs_dev["ndcg@10"], "dev_eval_s": dev_eval_s, "metrics": table}
    path.write_text(json.dumps({"settings": settings, "figures": figures}, indent=1))
    return figures


def run_arm_seed(args, arm: str, seed: int, settings: dict, saved: dict | None, dev: DevSplit,
                 out: Path, dev_eval_s: float) -> dict:
    """One trained run's figures: the `saved` ones (--resume found them with these `settings`),
    else trained now and saved (<out>/seed<N>/<arm>/bench_result.json) the moment it ends."""
    run_dir = out / f"seed{seed}" / arm
    if saved is not None:
        print(f"[bench] {arm} seed {seed}: reused from {run_dir / RESULT_FILE}", flush=True)
        return saved
    cfg = load_config(args.config, settings["overrides"])
    result = train_and_evaluate(cfg, dev, args.eval_max_length, dev_eval_s)
    (run_dir / RESULT_FILE).write_text(json.dumps({"settings": settings, "result": result},
                                                  indent=1))
    print(f"[bench] {arm} seed {seed}: " + json.dumps(
        {k: result[k] for k in [*METRICS, "train_s", "run_s"]}), flush=True)
    return result


def run_arms(args, base: JobConfig, out: Path, settings: dict, saved: dict) -> dict:
    """Every arm x seed (`settings` and the reusable `saved` figures by (arm, seed));
    results.json is rewritten after each arm."""
    dev = load_dev_split(base)
    zero = load_model(base.model.name_or_path, base=base.model)
    zs = zero_shot_figures(args, base, dev, zero, out)
    results = {"setup": {k: v for k, v in vars(args).items()},
               "dev_max_length": base.model.max_length,
               "zero_shot_dev_ndcg@10": zs["dev_ndcg@10"], "dev_eval_s": zs["dev_eval_s"],
               "arms": {}}
    if any(a != ZERO_SHOT for a in args.arms):
        init_ray()
    for arm in args.arms:
        per_seed = ({"none": {**zs["metrics"], "train_s": 0.0}} if arm == ZERO_SHOT else
                    {str(seed): run_arm_seed(args, arm, seed, settings[arm, seed],
                                             saved.get((arm, seed)), dev, out, zs["dev_eval_s"])
                     for seed in args.seeds})
        results["arms"][arm] = {"seeds": per_seed, "summary": summarize(per_seed)}
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def report(results: dict, out: Path) -> None:
    """The plot and the two markdown tables."""
    arms = results["arms"]
    s = results["setup"]
    table_length = s["eval_max_length"] or results["dev_max_length"]
    curves = {arm: [(0, results["zero_shot_dev_ndcg@10"]),
                    *mean_curve([r["curve"] for r in a["seeds"].values()])]
              for arm, a in arms.items() if arm != ZERO_SHOT}
    title = (f"SciFact dev nDCG@10 during training (max length {results['dev_max_length']}; "
             f"the table at {table_length}), mean of seeds {s['seeds']}")
    png = plot_dev_curves(curves, results["zero_shot_dev_ndcg@10"], out / "dev_ndcg.png", title)
    print(f"\nSciFact dev (20% of qrels/train.tsv by query, seed 0), {s['steps']} steps per arm, "
          f"seeds {s['seeds']}, last step at max length {table_length}; mean ± "
          f"sample std\n")
    print(results_table({a: {k: tuple(v) for k, v in r["summary"].items()} for a, r in arms.items()},
                        {a: len(r["seeds"]) for a, r in arms.items()}))
    versions = {arm: [r["versions"] for r in a["seeds"].values()]
                for arm, a in arms.items() if arm != ZERO_SHOT}
    print("\nNegatives per published version (mean over the seeds that published it)\n")
    print(difficulty_table({a: v for a, v in versions.items() if any(v)}))
    print(f"\nplot: {png}\nresults: {out / 'results.json'}")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before init_ray: the Ray workers inherit it
    args = parse_args(argv)
    out = Path(args.out).resolve()
    base = load_config(args.config, args.overrides)
    if base.eval.retrieval_dev is None or base.mining is None:
        raise SystemExit(f"{args.config}: needs a mining: section and eval.retrieval_dev "
                         "(the dev split and the curves come from it)")
    if args.zero_shot_lengths:
        lengths = [int(x) for x in args.zero_shot_lengths.split(",")]
        zero_shot_lengths(base, lengths, args.docs, out)
        return
    settings = {(a, s): run_settings(a, s, args, out, base)
                for a in args.arms if a != ZERO_SHOT for s in args.seeds}
    saved = {}
    if args.resume:
        found = {key: saved_result(out / f"seed{key[1]}" / key[0], st) for key, st in settings.items()}
        saved = {key: r for key, r in found.items() if r is not None}
    check_fresh(out, args.arms, args.seeds,
                reusable=frozenset(out / f"seed{s}" / a for a, s in saved))
    out.mkdir(parents=True, exist_ok=True)
    report(run_arms(args, base, out, settings, saved), out)


if __name__ == "__main__":
    main()
