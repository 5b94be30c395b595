"""QA hard examples: evaluate, keep the rows the model gets wrong, train on them, evaluate again.

    angle-ray qa-hard --config jobs/configs/qa_hard.yaml --top-k 1 --loss cln
    angle-ray qa-hard --config jobs/configs/qa_hard.yaml --qa my_qa.jsonl --loss margin train.max_steps=40
    ray job submit --working-dir . -- angle-ray qa-hard --config jobs/configs/qa_hard.yaml

(On a cluster the evaluations run in the job's driver process, the training on Ray Train workers.)
For QA rows (a question, candidate contexts, the gold index; see ``angle_ray.data.qa``; built
from a BEIR folder's judged queries and BM25 candidates by ``make_qa_from_beir``):

1. split the rows by a seeded fraction into a train part and a held-out part, so the figures
   after training are not only measured on the rows trained on;
2. rank each row's contexts by cosine with its question; top-1/3/5 accuracy = gold within the
   first k (a context scoring the same as the gold is ranked above it: a model that cannot tell
   them apart gets no credit);
3. hard examples = train-part rows whose gold is not in the top ``k``, written as Format C rows
   ``{"query", "positive": gold, "negative": [contexts ranked above the gold, hardest first]}``;
4. train on them with the normal driver (``run_training``; the job's ``data:`` replaced by the
   hard-example file) with ``loss.cln_w`` (contrastive with negatives) or ``loss.margin_w``
   (margin ranking: the gold above every negative by ``loss.margin``);
5. evaluate the trained model on the same rows; write ``qa_hard_<loss>.json`` / ``.md`` (a
   before/after table) in the run folder ``<train.storage_path>/<train.name>/``.

The training run is ``<run folder>/train_<loss>_<hash of the hard examples>``: running the same
command again resumes (or reuses) it, while other hard examples (another model, ``--top-k``,
split...) get a fresh run instead of a checkpoint trained on different rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from angle_ray.config import DatasetConfig, JobConfig, MiningConfig
from angle_ray.data.qa import QARow
from angle_ray.errors import UserError
from angle_ray.eval.retrieval import top_k_accuracy
from angle_ray.mining.bm25 import bm25_candidates
from angle_ray.mining.task import load_mining_task
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model
from angle_ray.train.driver import run_dir_of, run_training

TOP_KS = (1, 3, 5)
LOSSES = ("cln", "margin")
HARD_FILE = "hard_examples.jsonl"


class QAHardError(UserError):
    """A qa-hard setting that cannot be used (a fraction out of range, too few candidates...)."""


def _log(msg: str) -> None:
    print(f"[angle-ray] qa-hard: {msg}", flush=True)


def is_beir_folder(path: str | Path) -> bool:
    """A BEIR layout folder (corpus.jsonl[.gz] and qrels/), as opposed to a QA file or folder."""
    p = Path(path)
    return p.is_dir() and (p / "qrels").is_dir() and any(
        (p / f"corpus.jsonl{gz}").is_file() for gz in ("", ".gz"))


def make_qa_from_beir(beir_folder: str | Path, n_candidates: int = 20, split: str = "train",
                      holdout_fraction: float = 0.2, holdout_seed: int = 0, seed: int = 0,
                      max_questions: int | None = None, show_progress: bool = True) -> list[QARow]:
    """Judged queries of a BEIR folder -> QA rows with ``n_candidates`` contexts each.

    The queries are those of ``load_mining_task`` (``split`` minus the dev queries of
    ``split_qrels_by_query(qrels, holdout_fraction, holdout_seed)``, the ones ``eval.retrieval_dev``
    scores, so a QA run never trains on them; 0 keeps all). Contexts are the query's BM25 top
    documents; the gold is the query's first relevant document, put in place of the last
    candidate when BM25 missed it; its other relevant documents are left out (they are not wrong
    answers). The order is shuffled per query from (seed, query id), so position says nothing.
    """
    if n_candidates < 2:
        raise QAHardError(f"n_candidates must be >= 2 (the gold and another), got {n_candidates}")
    task = load_mining_task(MiningConfig(beir=str(beir_folder), split=split,
                                         holdout_fraction=holdout_fraction, holdout_seed=holdout_seed))
    keep = range(len(task.query_ids))[:max_questions]
    task.query_ids = [task.query_ids[i] for i in keep]
    task.query_texts = [task.query_texts[i] for i in keep]
    task.positives = [task.positives[i] for i in keep]
    if len(task.doc_ids) < n_candidates:
        raise QAHardError(f"{beir_folder}: {len(task.doc_ids)} documents, fewer than "
                         f"n_candidates={n_candidates}")
    depth = min(len(task.doc_ids), n_candidates + max(len(p) for p in task.positives))
    found = bm25_candidates(task, depth, show_progress=show_progress).idx
    rows = []
    for qid, text, positives, hits in zip(task.query_ids, task.query_texts, task.positives, found):
        gold, others = positives[0], set(positives[1:])
        picked = [int(j) for j in hits if j >= 0 and j not in others][:n_candidates]
        if gold not in picked:
            picked[-1] = gold
        random.Random(f"{seed}:{qid}").shuffle(picked)
        rows.append(QARow(text, [task.doc_texts[j] for j in picked], picked.index(gold),
                          f"{beir_folder} query {qid}"))
    return rows


def split_rows(rows: Sequence[QARow], eval_fraction: float, seed: int) -> tuple[list[QARow], list[QARow]]:
    """(train part, held-out part): ``round(eval_fraction * n)`` rows held out, chosen by seed."""
    if not 0.0 <= eval_fraction < 1.0:
        raise QAHardError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[: round(eval_fraction * len(rows))])
    return ([r for i, r in enumerate(rows) if i not in held],
            [r for i, r in enumerate(rows) if i in held])


def score_contexts(model, rows: Sequence[QARow], batch_size: int = 64, query_prompt: str | None = None,
                   doc_prompt: str | None = None, show_progress: bool = True) -> list[np.ndarray]:
    """Per row, the cosine of its question with each of its contexts (each text encoded once)."""
    questions = list(dict.fromkeys(r.question for r in rows))
    contexts = list(dict.fromkeys(c for r in rows for c in r.contexts))
    q_emb = encode(model, questions, batch_size=batch_size, prompt=query_prompt, normalize=True,
                   desc="encode questions", show_progress=show_progress)
    c_emb = encode(model, contexts, batch_size=batch_size, prompt=doc_prompt, normalize=True,
                   desc="encode contexts", show_progress=show_progress)
    q_at = {t: i for i, t in enumerate(questions)}
    c_at = {t: i for i, t in enumerate(contexts)}
    return [c_emb[[c_at[c] for c in r.contexts]] @ q_emb[q_at[r.question]] for r in rows]


def ranking(scores: np.ndarray, gold: int) -> list[int]:
    """Context indices best first; among equal scores the gold comes last (no credit for ties)."""
    return sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j == gold))


def accuracy(rows: Sequence[QARow], scores: Sequence[np.ndarray], ks: Sequence[int] = TOP_KS) -> dict:
    """Top-k accuracy x100 (gold within the first k contexts) for each k."""
    if not rows:
        return {f"top{k}": float("nan") for k in ks}
    ranked = [ranking(s, r.gold) for r, s in zip(rows, scores)]
    return {f"top{k}": 100.0 * float(np.mean([top_k_accuracy(o, {r.gold: 1}, k)
                                               for r, o in zip(rows, ranked)])) for k in ks}


def select_hard(rows: Sequence[QARow], scores: Sequence[np.ndarray], k: int = 1,
                max_negatives: int = 3) -> tuple[list[int], list[dict]]:
    """Rows whose gold is not in the top ``k``: (their indices, their Format C rows).

    The negatives are the contexts ranked above the gold, hardest (highest score) first, at most
    ``max_negatives`` of them."""
    if k < 1 or max_negatives < 1:
        raise QAHardError(f"k and max_negatives must be >= 1, got k={k}, max_negatives={max_negatives}")
    picked, out = [], []
    for i, (r, s) in enumerate(zip(rows, scores)):
        order = ranking(s, r.gold)
        above = order[: order.index(r.gold)]
        if len(above) >= k:
            picked.append(i)
            out.append({"query": r.question, "positive": r.contexts[r.gold],
                        "negative": [r.contexts[j] for j in above[:max_negatives]]})
    return picked, out


def training_config(cfg: JobConfig, hard_path: str | Path, loss: str, num_negatives: int,
                    tag: str = "") -> JobConfig:
    """The job with ``data:`` = the hard-example file (Format C) and the chosen loss switched on.

    cln: ``cln_w`` (the job's value, else 1) and no margin term; margin: ``margin_w`` (the job's
    value, else 1) and no cln term. Other weights come from the job. The first ``data:`` entry's
    prompts are kept; the run goes to ``<run folder>/train_<loss>[_<tag>]``."""
    if loss not in LOSSES:
        raise QAHardError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    base = cfg.data[0] if cfg.data else DatasetConfig(path=str(hard_path))
    data = base.model_copy(update={"path": str(hard_path), "format": "C", "column_rename_mapping": {},
                                   "num_negatives": num_negatives, "weight": 1.0, "loss": {},
                                   "on_bad_rows": "error"})
    lc = cfg.loss
    if loss == "cln":
        lc = lc.model_copy(update={"cln_w": lc.cln_w or 1.0, "margin_w": 0.0})
    else:
        lc = lc.model_copy(update={"margin_w": lc.margin_w or 1.0, "cln_w": 0.0})
    name = f"train_{loss}_{tag}" if tag else f"train_{loss}"
    train = cfg.train.model_copy(update={"storage_path": str(run_dir_of(cfg)), "name": name})
    return cfg.model_copy(update={"data": [data], "loss": lc, "train": train})


@dataclass
class QAHardResult:
    run_dir: Path
    hard_path: Path
    model_dir: Path | None
    sets: dict[str, int]  # set name -> rows
    before: dict[str, dict[str, float]]  # set -> {"top1": ..}
    after: dict[str, dict[str, float]] = field(default_factory=dict)
    loss: str = "cln"
    train_loss: list[float] = field(default_factory=list)  # logged loss, first to last report
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def json_path(self) -> Path:
        return self.run_dir / f"qa_hard_{self.loss}.json"  # and .md beside it

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "loss": self.loss, "hard_examples": str(self.hard_path),
                "model_dir": str(self.model_dir) if self.model_dir else None, "sets": self.sets,
                "before": self.before, "after": self.after, "train_loss": self.train_loss,
                "seconds": self.seconds}


def markdown_table(result: QAHardResult, ks: Sequence[int] = TOP_KS) -> str:
    """A row per (set, model): top-k accuracy x100 before and after training on the hard rows."""
    lines = ["| rows | n | model | " + " | ".join(f"top-{k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for name, n in result.sets.items():
        for label, figures in (("before", result.before), ("after", result.after)):
            if name in figures:
                values = " | ".join(f"{figures[name][f'top{k}']:.2f}" for k in ks)
                lines.append(f"| {name} | {n} | {label} | {values} |")
    return "\n".join(lines)


def _logged_losses(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


def _write_hard_examples(run_dir: Path, hard: list[dict]) -> tuple[Path, str]:
    """The hard examples as Format C JSONL in the run folder: (its path, its text)."""
    text = "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in hard)
    path = run_dir / HARD_FILE
    path.write_text(text, encoding="utf-8")
    return path, text


def run_qa_hard(cfg: JobConfig, rows: Sequence[QARow], top_k: int = 1, loss: str = "cln",
                max_negatives: int = 3, eval_fraction: float = 0.2, seed: int = 0,
                address: str | None = None, model=None, show_progress: bool = True) -> QAHardResult:
    """Evaluate -> select hard rows -> train (``run_training``) -> evaluate; see the module doc.

    ``model``: the starting model when already loaded (else built from ``cfg.model``)."""
    if loss not in LOSSES:
        raise QAHardError(f"loss {loss!r} is not one of {', '.join(LOSSES)}")
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_rows, held_rows = split_rows(rows, eval_fraction, seed)
    prompts = ({"query_prompt": cfg.data[0].query_prompt, "doc_prompt": cfg.data[0].doc_prompt}
               if cfg.data else {})
    everything, n_train = [*train_rows, *held_rows], len(train_rows)
    seconds: dict[str, float] = {}

    def evaluate(m, label: str) -> list[np.ndarray]:
        start = time.perf_counter()
        scores = score_contexts(m, everything, cfg.eval.batch_size, show_progress=show_progress,
                                **prompts)
        seconds[f"eval_{label}"] = round(time.perf_counter() - start, 1)
        return scores

    def figures(scores: list[np.ndarray], hard_idx: list[int]) -> dict[str, dict[str, float]]:
        out = {"train part": accuracy(train_rows, scores[:n_train]),
               "hard examples": accuracy([train_rows[i] for i in hard_idx],
                                         [scores[i] for i in hard_idx])}
        if held_rows:
            out["held-out"] = accuracy(held_rows, scores[n_train:])
        return out

    _log(f"{len(rows)} QA rows: {n_train} to mine and train on, {len(held_rows)} held out "
         f"(eval_fraction {eval_fraction}, seed {seed}); evaluating {cfg.model.name_or_path}")
    model = model if model is not None else load_model(cfg.model.name_or_path, base=cfg.model)
    scores = evaluate(model, "before")
    hard_idx, hard = select_hard(train_rows, scores[:n_train], top_k, max_negatives)
    hard_path, hard_text = _write_hard_examples(run_dir, hard)
    sets = {"train part": n_train, "hard examples": len(hard),
            **({"held-out": len(held_rows)} if held_rows else {})}
    result = QAHardResult(run_dir, hard_path, None, sets, figures(scores, hard_idx), loss=loss,
                          seconds=seconds)
    _log(f"before: {json.dumps(result.before)}")
    _log(f"{len(hard)} hard examples (gold not in the top {top_k}) written to {hard_path}")
    if not hard:
        _log("no hard examples: nothing to train on")
        _write(result)
        return result

    start = time.perf_counter()
    # the run is named by its hard examples: a re-run resumes only a run trained on the same rows
    tag = hashlib.sha256(hard_text.encode()).hexdigest()[:8]
    run = run_training(training_config(cfg, hard_path, loss, max_negatives, tag), address=address)
    seconds["train"] = round(time.perf_counter() - start, 1)
    if run.model_dir is None:
        raise RuntimeError(f"training wrote no model (run folder {run.run_dir})")
    result.model_dir, result.train_loss = run.model_dir, _logged_losses(run.run_dir)
    result.after = figures(evaluate(load_model(run.model_dir), "after"), hard_idx)
    _write(result)
    return result


def _write(result: QAHardResult) -> None:
    result.json_path.write_text(json.dumps(result.to_json(), indent=1))
    result.json_path.with_suffix(".md").write_text(markdown_table(result) + "\n")
