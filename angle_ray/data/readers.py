"""Stream raw rows out of corpus files, one file at a time, never loading a whole file.

Supported inputs (``list_files`` expands a path into them):

- JSON Lines: ``.jsonl``, ``.jsonl.gz`` (one JSON object per line; blank lines are ignored)
- CSV / TSV: ``.csv``, ``.tsv`` (and ``.gz``): a header line, then one record per line; standard
  quoting (``"a, b"``, ``""`` for a quote) as written by pandas or the csv module. Every value is
  a string; list-valued fields need JSONL, Parquet or a datasets folder.
- Parquet: ``.parquet``, read in record batches.
- a ``datasets.Dataset.save_to_disk`` folder (memory-mapped Arrow, iterated in batches).

    for row_no, row in iter_rows("../shared/data/stsb/train.jsonl"):
        ...  # (1, {"text1": ..., "text2": ..., "label": 5.0}), ...

Row numbers: 1-based physical line for text files (the CSV header is line 1), 0-based row index
for Parquet and datasets folders (see ``row_unit``). A row that cannot be read (JSON that does
not parse or is not an object, a CSV record with the wrong number of fields, bytes that are not
UTF-8) raises ``DataError``; pass ``on_bad_row`` to receive those errors and keep reading instead.
Problems with a whole file (missing, unsupported, corrupt) always raise.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from angle_ray.data.errors import LINE, ROW, DataError

logger = logging.getLogger(__name__)

# suffix -> kind; the longest matching suffix wins (".jsonl.gz" before ".gz")
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".parquet": "parquet",
}
DATASETS_MARKERS = ("dataset_info.json", "state.json")
DATASET_DICT_MARKER = "dataset_dict.json"
BATCH_ROWS = 1024  # rows per Parquet / Arrow batch while streaming

OnBadRow = Callable[[DataError], None]


def _supported_list() -> str:
    return ", ".join(SUPPORTED_SUFFIXES) + ", or a datasets.save_to_disk folder"


def is_datasets_folder(path: str | os.PathLike) -> bool:
    """A folder written by ``datasets`` ``save_to_disk`` (a Dataset or a DatasetDict)."""
    p = Path(path)
    return p.is_dir() and any(
        (p / marker).is_file() for marker in (*DATASETS_MARKERS, DATASET_DICT_MARKER)
    )


def file_kind(path: str | os.PathLike) -> str | None:
    """'jsonl' | 'csv' | 'tsv' | 'parquet' | 'datasets', or None when not supported."""
    if is_datasets_folder(path):
        return "datasets"
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return SUPPORTED_SUFFIXES[suffix]
    return None


@lru_cache(maxsize=1024)
def row_unit(path: str) -> str:
    """How rows of this file are numbered: LINE (1-based line) or ROW (0-based index)."""
    return ROW if file_kind(path) in ("parquet", "datasets") else LINE


def list_files(path: str | os.PathLike) -> list[str]:
    """The readable inputs under ``path``: the file itself, the supported files of a folder
    (sorted by name, not recursive), or a datasets folder (returned as the folder itself).
    Folder entries that are hidden or start with ``_`` (``_SUCCESS``) are ignored; other
    unsupported files are ignored with a warning; a folder with nothing readable is an error."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data path not found: {p}")
    if p.is_file():
        if file_kind(p) is None:
            raise DataError(str(p), None, None, f"unsupported file type; supported: {_supported_list()}")
        return [str(p)]
    if is_datasets_folder(p):
        return [str(p)]
    found: list[str] = []
    ignored: list[str] = []
    for child in sorted(p.iterdir(), key=lambda c: c.name):
        if child.name.startswith((".", "_")):
            continue
        if child.is_dir():
            if is_datasets_folder(child):
                found.append(str(child))
            continue
        if file_kind(child) is None:
            ignored.append(child.name)
        else:
            found.append(str(child))
    if not found:
        listing = ", ".join(ignored) if ignored else "nothing"
        raise DataError(
            str(p), None, None, f"no readable data files (found {listing}); supported: {_supported_list()}"
        )
    if ignored:
        logger.warning("%s: ignoring unsupported files %s", p, ", ".join(ignored))
    return found


def iter_rows(path: str | os.PathLike, on_bad_row: OnBadRow | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(row_number, row)`` from ONE file or datasets folder, lazily.

    A row that cannot be read raises ``DataError`` (file, line, reason), or, when ``on_bad_row``
    is given, is handed to it and reading goes on with the next row."""
    path = str(path)
    kind = file_kind(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if kind == "jsonl":
        return _iter_jsonl(path, on_bad_row)
    if kind in ("csv", "tsv"):
        return _iter_delimited(path, "," if kind == "csv" else "\t", on_bad_row)
    if kind == "parquet":
        return _iter_parquet(path)
    if kind == "datasets":
        return _iter_datasets_folder(path)
    raise DataError(path, None, None, f"unsupported file type; supported: {_supported_list()}")


def _bad(err: DataError, on_bad_row: OnBadRow | None) -> None:
    if on_bad_row is None:
        raise err
    on_bad_row(err)


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    return f"a {type(obj).__name__}"


def _iter_jsonl(path: str, on_bad_row: OnBadRow | None) -> Iterator[tuple[int, dict]]:
    with _open_binary(path) as f:
        lines = iter(f)
        lineno = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(path, lineno + 1, None, f"cannot read the file: {e}") from e
            lineno += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _bad(DataError(path, lineno, None, f"not valid UTF-8 (byte {e.start} of the line)"), on_bad_row)
                continue
            if lineno == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                _bad(DataError(path, lineno, None, f"not valid JSON: {e.msg} (column {e.colno})"), on_bad_row)
                continue
            if not isinstance(obj, dict):
                _bad(DataError(path, lineno, None, f"expected a JSON object, got {_json_kind(obj)}"), on_bad_row)
                continue
            yield lineno, obj


def _iter_delimited(path: str, delimiter: str, on_bad_row: OnBadRow | None) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        kind = "TSV" if delimiter == "\t" else "CSV"
        try:
            header = next(reader)
        except StopIteration:
            return  # an empty file has no rows
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(path, 1, None, f"cannot read the header: {e}") from e
        names = [h.strip() for h in header]
        if not names or any(n == "" for n in names):
            raise DataError(path, 1, None, f"the header {header!r} has an empty column name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(path, 1, None, f"the header repeats column(s) {', '.join(dupes)}")
        consumed = reader.line_num
        while True:
            start = consumed + 1  # a quoted field may span lines: report where the record starts
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                consumed = reader.line_num
                _bad(DataError(path, start, None, f"malformed {kind} record: {e}"), on_bad_row)
                continue
            except UnicodeDecodeError as e:
                raise DataError(path, start, None, f"not valid UTF-8: {e}") from e
            consumed = reader.line_num
            if not fields:
                continue  # blank line
            if len(fields) != len(names):
                _bad(
                    DataError(
                        path,
                        start,
                        None,
                        f"expected {len(names)} fields (header: {', '.join(names)}), got {len(fields)}",
                    ),
                    on_bad_row,
                )
                continue
            yield start, dict(zip(names, fields))


def _iter_parquet(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
        raise DataError(path, None, None, f"not a readable Parquet file: {e}", ROW) from e
    index = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _iter_datasets_folder(path: str) -> Iterator[tuple[int, dict]]:
    p = Path(path)
    if (p / DATASET_DICT_MARKER).is_file():
        splits = sorted(c.name for c in p.iterdir() if c.is_dir())
        raise DataError(
            path,
            None,
            None,
            f"is a DatasetDict folder (splits: {', '.join(splits)}); point the path at one split, "
            f"e.g. {p / (splits[0] if splits else 'train')}",
            ROW,
        )
    from datasets import Dataset, load_from_disk

    ds = load_from_disk(path)
    if not isinstance(ds, Dataset):
        raise DataError(path, None, None, f"expected a datasets.Dataset folder, got {type(ds).__name__}", ROW)
    index = 0
    for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in table.to_pylist():
            yield index, row
            index += 1
