"""Load a retrieval corpus in BEIR layout and split its judgements by query.

    folder/corpus.jsonl(.gz)   {"_id" or "id", "title", "text"}
    folder/queries.jsonl(.gz)  {"_id" or "id", "text"}
    folder/qrels/<split>.tsv   header "query-id  corpus-id  score", tab-separated

    data = load_beir("../shared/data/scifact")              # 5183 docs, 1109 queries
    train_qrels, dev_qrels = split_qrels_by_query(data.qrels, dev_fraction=0.2, seed=0)

A document's text is ``title + " " + text`` when the title is not empty. Malformed rows,
duplicate ids and judgements that name an unknown query or document are errors with file and line.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from angle_ray.data.errors import DataError
from angle_ray.data.readers import iter_rows
from angle_ray.errors import UserError

QRELS_HEADER = ("query-id", "corpus-id", "score")


class SplitError(UserError):
    """A judgement split that cannot be made as asked (e.g. a dev fraction outside (0, 1))."""


@dataclass
class BeirData:
    corpus: dict[str, str]  # doc id -> "title text"
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"BEIR folder {folder} has no {stem}.jsonl or {stem}.jsonl.gz")


def _string_field(row: dict, name: str, file: str, lineno: int, required: bool) -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise DataError(file, lineno, name, f"missing {name!r}")
        return ""
    if not isinstance(value, str):
        raise DataError(file, lineno, name, f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _read_id(row: dict, file: str, lineno: int) -> str:
    key = "_id" if "_id" in row else "id"
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(file, lineno, key, f"missing or invalid id {value!r}; expected '_id' or 'id' (string)")
    value = str(value)
    if not value.strip():
        raise DataError(file, lineno, key, "empty id")
    return value


def _read_texts(path: Path, with_title: bool) -> dict[str, str]:
    file = str(path)
    out: dict[str, str] = {}
    for lineno, row in iter_rows(path):
        doc_id = _read_id(row, file, lineno)
        if doc_id in out:
            raise DataError(file, lineno, None, f"duplicate id {doc_id!r}")
        text = _string_field(row, "text", file, lineno, required=True)
        title = _string_field(row, "title", file, lineno, required=False).strip() if with_title else ""
        full = f"{title} {text}" if title else text
        if not full.strip():
            raise DataError(file, lineno, "text", "empty text (and no title)")
        out[doc_id] = full
    return out


def read_qrels(path: str | os.PathLike, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    """qrels TSV -> {query id: {doc id: score}}; ids must exist in ``queries`` / ``corpus``."""
    path = Path(path)
    file = str(path)
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if lineno == 1:
                if tuple(p.strip() for p in parts) != QRELS_HEADER:
                    expected = "<TAB>".join(QRELS_HEADER)
                    raise DataError(file, 1, None, f"expected the header {expected!r}, got {line!r}")
                continue
            if len(parts) != 3:
                raise DataError(file, lineno, None, f"expected 3 tab-separated fields, got {len(parts)}")
            qid, doc_id, raw_score = (p.strip() for p in parts)
            try:
                score = int(raw_score)
            except ValueError:
                raise DataError(file, lineno, "score", f"score {raw_score!r} is not an integer") from None
            if qid not in queries:
                raise DataError(file, lineno, "query-id", f"unknown query id {qid!r} (not in queries)")
            if doc_id not in corpus:
                raise DataError(file, lineno, "corpus-id", f"unknown document id {doc_id!r} (not in corpus)")
            judged = qrels.setdefault(qid, {})
            if doc_id in judged and judged[doc_id] != score:
                raise DataError(
                    file, lineno, "score", f"({qid}, {doc_id}) judged again with {score} (earlier {judged[doc_id]})"
                )
            judged[doc_id] = score
    return qrels


def load_beir(folder: str | os.PathLike, split: str = "train") -> BeirData:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {root}")
    corpus = _read_texts(_find(root, "corpus"), with_title=True)
    queries = _read_texts(_find(root, "queries"), with_title=False)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise FileNotFoundError(f"no qrels for split {split!r}: {qrels_path} (available: {', '.join(have) or 'none'})")
    return BeirData(corpus=corpus, queries=queries, qrels=read_qrels(qrels_path, corpus, queries))


def split_qrels_by_query(
    qrels: dict[str, dict[str, int]], dev_fraction: float = 0.2, seed: int = 0
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Split judgements into (train, dev) by query id: a query's judgements all go to one side.

    Deterministic for a given (set of query ids, fraction, seed), whatever the dict order;
    ``round(dev_fraction * n_queries)`` queries go to dev."""
    if not 0.0 < dev_fraction < 1.0:
        raise SplitError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    qids = sorted(qrels)
    random.Random(seed).shuffle(qids)
    dev_ids = set(qids[: round(dev_fraction * len(qids))])
    train = {q: dict(d) for q, d in qrels.items() if q not in dev_ids}
    dev = {q: dict(d) for q, d in qrels.items() if q in dev_ids}
    return train, dev
