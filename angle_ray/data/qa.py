"""QA rows (a question, its candidate contexts, the index of the gold one): read, check, write.

    {"question": "...", "contexts": ["...", "...", "..."], "gold": 1}     one JSONL line / Parquet row

    rows = read_qa("qa.jsonl", column_rename_mapping={"query": "question", "id": ""})
    write_qa(rows, "qa.jsonl")

Reading goes through the project's row readers (JSONL, Parquet, CSV/TSV, datasets folders,
a folder of files) and a bad row is a ``DataError`` naming the file, the line (0-based row for
Parquet) and the field: gold out of range, an empty contexts list, a missing or unexpected column.
``column_rename_mapping`` works as for training data (``""`` drops a column). QA rows built
from a BEIR folder: ``angle_ray.workflows.qa_hard.make_qa_from_beir``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from angle_ray.data.errors import DataError
from angle_ray.data.formats import rename_columns
from angle_ray.data.readers import iter_rows, list_files, row_unit

QA_COLUMNS = ("question", "contexts", "gold")


@dataclass
class QARow:
    question: str
    contexts: list[str]
    gold: int  # index into contexts
    source: str = ""  # "file:line" (or where a built row came from), for messages

    def to_json(self) -> dict:
        return {"question": self.question, "contexts": self.contexts, "gold": self.gold}


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_qa_row(row, file: str, row_no: int, mapping: dict[str, str] | None = None) -> QARow:
    """One raw row -> ``QARow``, or ``DataError(file, row_no, field, reason)``."""
    unit = row_unit(str(file))

    def fail(field_name: str | None, reason: str):
        raise DataError(str(file), row_no, field_name, reason, unit)

    if not isinstance(row, dict):
        fail(None, f"expected a mapping of column -> value, got {type(row).__name__}")
    try:
        renamed, origin = rename_columns(row, mapping or {})
    except ValueError as e:
        fail(None, str(e))
    for name in QA_COLUMNS:
        if name not in renamed:
            fail(name, f"missing column {name!r} (a QA row has {', '.join(QA_COLUMNS)}; the row has "
                       f"{', '.join(renamed) or 'none'}); map another name with column_rename_mapping, "
                       f"e.g. {{'<source column>': {name!r}}}")
    for name in renamed:
        if name not in QA_COLUMNS:
            fail(name, f"unexpected column {name!r} (a QA row has exactly {', '.join(QA_COLUMNS)}); "
                       f"drop it with column_rename_mapping {{{origin[name]!r}: ''}}")

    question = renamed["question"]
    if not isinstance(question, str):
        fail("question", f"expected a string, got a {type(question).__name__} ({_describe(question)})")
    if not question.strip():
        fail("question", "empty question")
    contexts = renamed["contexts"]
    if not isinstance(contexts, (list, tuple)):
        fail("contexts", f"expected a list of strings, got a {type(contexts).__name__} "
                         f"({_describe(contexts)})")
    if len(contexts) == 0:
        fail("contexts", "empty contexts list; a QA row needs the gold context among its candidates")
    for i, text in enumerate(contexts):
        if not isinstance(text, str):
            fail("contexts", f"item {i} is a {type(text).__name__} ({_describe(text)}); expected a string")
        if not text.strip():
            fail("contexts", f"item {i} is an empty or whitespace-only text")
    gold = renamed["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int):
        fail("gold", f"expected an integer index into contexts, got {_describe(gold)}")
    if not 0 <= gold < len(contexts):
        fail("gold", f"gold {gold} is out of range for {len(contexts)} contexts "
                     f"(0-based index, 0..{len(contexts) - 1})")
    return QARow(question, list(contexts), gold, f"{file}:{row_no}")


def read_qa(path: str | os.PathLike, column_rename_mapping: dict[str, str] | None = None) -> list[QARow]:
    """Every QA row of a file or folder, checked; the first bad row raises its ``DataError``."""
    rows: list[QARow] = []
    for file in list_files(path):
        for row_no, row in iter_rows(file):
            rows.append(check_qa_row(row, file, row_no, column_rename_mapping))
    if not rows:
        raise DataError(str(path), None, None, "no QA rows; the data is empty")
    return rows


def write_qa(rows: list[QARow], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    return path
