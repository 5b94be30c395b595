"""Validate raw rows and normalise them into the three training formats.

- Format A (scored pairs):      {"text1", "text2", "label"}  label scaled to [0, 1]
- Format B (query, positive):   {"query", "positive"}
- Format C (with negatives):    {"query", "positive", "negative"}

Any text field may be a string or a non-empty list of strings (e.g. several paraphrases, or
mined negatives); lists are kept by the normaliser and reduced to one item (``num_negatives``
items for ``negative``) by ``sample_record``, reproducibly per (seed, epoch, row).

    cfg = DatasetConfig(path="../shared/data/stsb/train.jsonl", label_range=(0, 5))
    reader = RecordReader(cfg)
    for record in reader:          # {"text1", "text2", "label", "_source": "file:line"}
        ...
    reader.report                  # BadRowReport (when on_bad_rows="skip")

Column renames: ``column_rename_mapping={"text": "query"}`` renames the source column ``text``
to ``query``; mapping a column to ``""`` drops it (``{"id": ""}``). Numbers written as strings
(every CSV value is a string) are accepted as labels; booleans are not.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from angle_ray.config import DatasetConfig
from angle_ray.data.errors import DataError, format_location
from angle_ray.data.readers import iter_rows, list_files, row_unit

logger = logging.getLogger(__name__)

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "A": ("text1", "text2", "label"),
    "B": ("query", "positive"),
    "C": ("query", "positive", "negative"),
}
# most specific first: a row with query/positive/negative is C even though it also holds B
_DETECT_ORDER = ("C", "B", "A")
_TEXT_FIELDS = {"A": ("text1", "text2"), "B": ("query", "positive"), "C": ("query", "positive", "negative")}


def detect_format(columns: Iterable[str]) -> str:
    """'A' | 'B' | 'C' from a row's column names (after renames).

    The most specific format whose columns are all present wins; extra columns are reported
    later by the normaliser, which names them."""
    names = list(columns)
    for fmt in _DETECT_ORDER:
        if set(FORMAT_COLUMNS[fmt]) <= set(names):
            return fmt
    expected = "; ".join(f"{f}: {', '.join(c)}" for f, c in FORMAT_COLUMNS.items())
    raise ValueError(
        f"cannot tell the format from columns [{', '.join(map(str, names))}]; expected the columns of "
        f"one format ({expected}); map other names with column_rename_mapping, e.g. "
        "{'sentence1': 'text1'}"
    )


def rename_columns(row: dict, mapping: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """Apply a rename mapping (``""`` drops a column). Returns (renamed row, new name -> source
    name). Raises ValueError when two source columns end up with the same name."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for src, value in row.items():
        dst = mapping.get(src, src)
        if dst == "":
            continue
        if dst in out:
            raise ValueError(
                f"columns {origin[dst]!r} and {src!r} both become {dst!r} after column_rename_mapping"
            )
        out[dst] = value
        origin[dst] = src
    return out, origin


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class RowNormaliser:
    """Turn one raw row into a canonical record, or raise ``DataError`` naming file, row, field.

    Built from a ``DatasetConfig``. With ``format: auto`` and no ``fmt`` given, the format is
    detected from the first row seen and then enforced on every later row; a distributed reader
    should call ``resolve_format`` once on the driver and pass the result as ``fmt`` so every
    worker agrees."""

    def __init__(self, cfg: DatasetConfig, fmt: str | None = None) -> None:
        if fmt is not None and fmt not in FORMAT_COLUMNS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMAT_COLUMNS)}")
        self.cfg = cfg
        self.format: str | None = fmt or (None if cfg.format == "auto" else cfg.format)
        self._mapping = dict(cfg.column_rename_mapping)

    def __call__(self, row: dict, file: str, row_no: int) -> dict:
        unit = row_unit(str(file))

        def fail(field_name: str | None, reason: str, origin: dict[str, str] | None = None):
            if field_name is not None and origin and origin.get(field_name, field_name) != field_name:
                reason += f" (source column {origin[field_name]!r})"
            raise DataError(str(file), row_no, field_name, reason, unit)

        if not isinstance(row, dict):
            fail(None, f"expected a mapping of column -> value, got {type(row).__name__}")
        try:
            renamed, origin = rename_columns(row, self._mapping)
        except ValueError as e:
            fail(None, str(e))
        if self.format is None:
            try:
                self.format = detect_format(renamed)
            except ValueError as e:
                fail(None, str(e))
        fmt = self.format
        expected = FORMAT_COLUMNS[fmt]
        for name in expected:
            if name not in renamed:
                have = ", ".join(renamed) or "none"
                fail(
                    name,
                    f"missing column {name!r} (Format {fmt} needs {', '.join(expected)}; the row has "
                    f"{have}); map a differently named column with column_rename_mapping, "
                    f"e.g. {{'<source column>': {name!r}}}",
                )
        for name in renamed:
            if name not in expected:
                src = origin[name]
                fail(
                    name,
                    f"unexpected column {name!r} (Format {fmt} has exactly {', '.join(expected)}); "
                    f"rename it with column_rename_mapping {{{src!r}: '<column>'}} or drop it with "
                    f"{{{src!r}: ''}}",
                    origin,
                )

        record: dict[str, Any] = {}
        if fmt == "A":
            prompt = self.cfg.text_prompt
            for name in ("text1", "text2"):
                record[name] = _check_text(renamed[name], prompt, lambda r, n=name: fail(n, r, origin))
            record["label"] = self._label(renamed["label"], lambda r: fail("label", r, origin))
        else:
            for name in _TEXT_FIELDS[fmt]:
                prompt = self.cfg.query_prompt if name == "query" else self.cfg.doc_prompt
                record[name] = _check_text(renamed[name], prompt, lambda r, n=name: fail(n, r, origin))
        return record

    def _label(self, value: Any, fail) -> float:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            fail(f"label {value!r} is a boolean; expected a number")
        if value is None:
            fail("missing label (null)")
        if isinstance(value, numbers.Real):
            try:
                y = float(value)
            except OverflowError:
                fail(f"label {_describe(value)} is too large")
        elif isinstance(value, str):
            try:
                y = float(value.strip())
            except ValueError:
                fail(f"label {_describe(value)} is not a number")
        else:
            fail(f"label {_describe(value)} is a {type(value).__name__}; expected a number")
        if math.isnan(y):
            fail("NaN label")
        if math.isinf(y):
            fail(f"infinite label ({value!r})")
        lr = self.cfg.label_range
        if lr is None:
            if not 0.0 <= y <= 1.0:
                fail(
                    f"label {y:g} is outside [0, 1] and no label_range is set; set label_range "
                    "to the scale of the labels (e.g. [0, 5] for STS-B, [1, 5] for SICK-R) so they "
                    "are scaled to [0, 1]"
                )
            return y
        low, high = float(lr[0]), float(lr[1])
        if not low <= y <= high:
            fail(f"label {y:g} is outside label_range [{low:g}, {high:g}]")
        return (y - low) / (high - low)


def _check_text(value: Any, prompt: str | None, fail) -> str | list[str]:
    """A non-blank string or a non-empty list of them, with the prompt applied to every item."""
    if isinstance(value, str):
        if not value.strip():
            fail("empty text" if value == "" else "whitespace-only text")
        return _apply_prompt(prompt, value)
    if value is None:
        fail("missing text (null)")
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            fail("empty list; a list field needs at least one text")
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                fail(f"item {i} of the list is a {type(item).__name__} ({_describe(item)}); expected a string")
            if not item.strip():
                fail(f"item {i} of the list is an empty or whitespace-only text")
            items.append(_apply_prompt(prompt, item))
        return items
    fail(f"expected a string or a list of strings, got a {type(value).__name__} ({_describe(value)})")
    raise AssertionError("unreachable")


def _apply_prompt(prompt: str | None, text: str) -> str:
    # str.replace, not str.format: prompts may contain other braces
    return text if prompt is None else prompt.replace("{text}", text)


def prompts_used(cfg: DatasetConfig, fmt: str) -> dict[str, str]:
    """The prompts this corpus applies in format ``fmt``, by the names an exported model keeps:
    ``text`` (Format A's ``text_prompt``), ``query`` and ``document`` (B/C's query / doc prompts)."""
    named = {"text": cfg.text_prompt} if fmt == "A" else {"query": cfg.query_prompt,
                                                          "document": cfg.doc_prompt}
    return {name: prompt for name, prompt in named.items() if prompt is not None}


# ---------------------------------------------------------------- list sampling


def _rng(seed: int, epoch: int, key: str, field_name: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x1f{epoch}\x1f{key}\x1f{field_name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def sample_record(record: dict, seed: int, epoch: int, key: str, num_negatives: int = 1) -> dict:
    """Replace every list field by one item (``negative``: a list of ``num_negatives`` items,
    without replacement while the list is long enough), chosen from (seed, epoch, key, field)
    through SHA-256, so the same inputs give the same pick in any process. A string
    ``negative`` becomes a one-item list, repeated to ``num_negatives`` so every sampled record
    of a dataset has the same number of negatives. Keys starting with ``_`` pass through."""
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    out = dict(record)
    for name, value in record.items():
        if name.startswith("_"):
            continue
        if name == "negative":
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            out[name] = _pick_negatives(items, num_negatives, _rng(seed, epoch, key, name))
        elif isinstance(value, (list, tuple)):
            out[name] = _rng(seed, epoch, key, name).choice(list(value))
    return out


def _pick_negatives(items: list, k: int, rng: random.Random) -> list:
    if len(items) >= k:
        return rng.sample(items, k)
    picked = rng.sample(items, len(items))  # all of them once, then repeats
    return picked + [rng.choice(items) for _ in range(k - len(items))]


# ---------------------------------------------------------------- reading a corpus


@dataclass
class BadRowReport:
    """Rows skipped under ``on_bad_rows: skip``: how many, and where the first ones were."""

    count: int = 0
    first: list[tuple[str, int | None, str]] = field(default_factory=list)  # (file, row, reason)
    MAX_EXAMPLES: ClassVar[int] = 20

    def add(self, err: DataError) -> None:
        self.count += 1
        if len(self.first) < self.MAX_EXAMPLES:
            reason = err.reason if err.field is None else f"field {err.field!r}: {err.reason}"
            self.first.append((err.file, err.row, reason))

    def merge(self, other: BadRowReport) -> None:
        self.count += other.count
        room = self.MAX_EXAMPLES - len(self.first)
        self.first.extend(other.first[: max(room, 0)])

    def clear(self) -> None:
        self.count = 0
        self.first.clear()

    def summary(self, source: str) -> str:
        lines = [f"{source}: skipped {self.count} bad row(s) (on_bad_rows=skip)"]
        for file, row, reason in self.first:
            lines.append(f"  {format_location(file, row, row_unit(file))}: {reason}")
        if self.count > len(self.first):
            lines.append(f"  ... and {self.count - len(self.first)} more")
        return "\n".join(lines)


def resolve_format(cfg: DatasetConfig, files: list[str] | None = None, max_rows: int = 100) -> str:
    """The dataset's format: ``cfg.format`` unless it is 'auto', else detected from the columns
    of the first row (after renames). With on_bad_rows=skip, rows whose columns fit no format
    are passed over (up to ``max_rows``) - they are reported as bad when the data is read."""
    if cfg.format != "auto":
        return cfg.format
    skip = cfg.on_bad_rows == "skip"
    seen = 0
    first_error: DataError | None = None
    for file in files if files is not None else list_files(cfg.path):
        unit = row_unit(file)
        for row_no, row in iter_rows(file, on_bad_row=(lambda e: None) if skip else None):
            seen += 1
            try:
                renamed, _ = rename_columns(row, cfg.column_rename_mapping)
                return detect_format(renamed)
            except ValueError as e:
                err = DataError(file, row_no, None, str(e), unit)
                if not skip:
                    raise err from None
                first_error = first_error or err
            if seen >= max_rows:
                break
        if seen >= max_rows:
            break
    if first_error is not None:
        raise first_error
    raise DataError(cfg.path, None, None, "no rows to detect the format from; the data is empty")


class RecordReader:
    """Iterate all files of ``cfg.path`` as normalised records, each with ``_source`` =
    ``"file:row"``. ``on_bad_rows: error`` raises the first bad row's ``DataError``;
    ``skip`` skips bad rows, counts them in ``self.report`` and logs a warning at the end.
    Reading data with no usable row at all is an error either way."""

    def __init__(self, cfg: DatasetConfig, report: BadRowReport | None = None) -> None:
        self.cfg = cfg
        self.files = list_files(cfg.path)
        self.report = report if report is not None else BadRowReport()

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        skip = cfg.on_bad_rows == "skip"
        self.report.clear()
        normalise = RowNormaliser(cfg, resolve_format(cfg, self.files))
        on_bad_row = self.report.add if skip else None
        good = 0
        for file in self.files:
            for row_no, row in iter_rows(file, on_bad_row=on_bad_row):
                try:
                    record = normalise(row, file, row_no)
                except DataError as err:
                    if not skip:
                        raise
                    self.report.add(err)
                    continue
                record["_source"] = f"{file}:{row_no}"
                good += 1
                yield record
        if self.report.count:
            logger.warning(self.report.summary(cfg.path))
        if good == 0:
            raise DataError(
                cfg.path,
                None,
                None,
                f"no usable rows ({self.report.count} bad row(s) skipped)"
                if self.report.count
                else "no rows: the data is empty",
            )


def read_records(cfg: DatasetConfig, report: BadRowReport | None = None) -> Iterator[dict]:
    """``iter(RecordReader(cfg, report))``; pass a ``BadRowReport`` to see skipped rows."""
    return iter(RecordReader(cfg, report))
