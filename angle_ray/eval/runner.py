"""Run named evaluation tasks on a model and report them as a markdown table and JSON.

    angle-ray eval --model all-MiniLM-L6-v2 --pooling mean --tasks stsb,sickr
    angle-ray eval --model runs/quickstart/model --tasks beir:/data/nfcorpus:test
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from angle_ray.eval.retrieval import evaluate_retrieval
from angle_ray.eval.sts import sts_spearman
from angle_ray.eval.tasks import (
    default_data_dir,
    is_retrieval_task,
    load_retrieval_task,
    load_sts_task,
    resolve_tasks,
)


def run_tasks(model, tasks: str | list[str], data_dir: str | Path | None = None,
              batch_size: int = 64, dtype: str = "fp32") -> dict:
    """Returns {"tasks": {name: {metric: value}}, "skipped": [...], "seconds": {...}}."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    names, skipped = resolve_tasks(tasks, data_dir)
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for task in names:
        start = time.perf_counter()
        if is_retrieval_task(task):
            corpus, queries, qrels = load_retrieval_task(task, data_dir)
            results[task] = evaluate_retrieval(model, corpus, queries, qrels,
                                               batch_size=batch_size, dtype=dtype)
        else:
            data = load_sts_task(task, data_dir)
            results[task] = {"spearman": sts_spearman(model, data.text1, data.text2, data.gold,
                                                      batch_size=batch_size, dtype=dtype,
                                                      desc=task)}
        seconds[task] = round(time.perf_counter() - start, 2)
    return {"tasks": results, "skipped": skipped, "seconds": seconds}


def headline(task: str, metrics: dict[str, float]) -> float:
    """The single figure a task contributes to the table: Spearman for STS, nDCG@10 otherwise."""
    return metrics["spearman"] if "spearman" in metrics else metrics["ndcg@10"]


def markdown_table(results: dict) -> str:
    """One column per task plus the average, like the AnglE README's STS tables."""
    tasks = results["tasks"]
    names = list(tasks)
    values = [headline(t, tasks[t]) for t in names]
    header = "| " + " | ".join([*names, "avg"]) + " |"
    rule = "|" + "---|" * (len(names) + 1)
    avg = sum(values) / len(values) if values else float("nan")
    row = "| " + " | ".join(f"{v:.2f}" for v in [*values, avg]) + " |"
    lines = [header, rule, row]
    extra = {t: m for t, m in tasks.items() if len(m) > 1}
    for task, metrics in extra.items():
        lines.append("")
        lines.append(f"{task}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    if results.get("skipped"):
        lines.append("")
        lines.append("not run (no data found): " + ", ".join(results["skipped"]))
    return "\n".join(lines)


def write_json(results: dict, path: str | Path, model_path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"model": model_path, **results}, indent=2))
