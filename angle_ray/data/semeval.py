"""Read SemEval STS 2012-2016 test folders.

A folder (e.g. ``STS12-en-test/``) holds sub-datasets, each a pair of files:
``STS.input.<name>.txt`` (two tab-separated sentences per line) and ``STS.gs.<name>.txt``
(one gold score 0-5 per line). An empty gold line means the pair has no gold score: it is
skipped and counted (``pairs.skipped``, ``pairs.skipped_lines``).

    subsets = read_sts_folder("STS12-en-test")
    subsets["MSRpar"][0]          # ("sentence one", "sentence two", 4.2)
    subsets["MSRpar"].skipped     # pairs without a gold score
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from angle_ray.data.errors import DataError

logger = logging.getLogger(__name__)

INPUT_PREFIX = "STS.input."
GOLD_PREFIX = "STS.gs."
SUFFIX = ".txt"
GOLD_RANGE = (0.0, 5.0)


class StsPairs(list):
    """A list of (sentence1, sentence2, gold) plus how many pairs had no gold score."""

    def __init__(self, pairs=(), skipped_lines: list[int] | None = None) -> None:
        super().__init__(pairs)
        self.skipped_lines: list[int] = list(skipped_lines or [])

    @property
    def skipped(self) -> int:
        return len(self.skipped_lines)


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(str(path), line, None, "not valid UTF-8") from e
    # split on \n only (not str.splitlines, which also breaks on form feeds and the like
    # inside sentences); a final newline does not start another line
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_sts_pairs(input_file: str | os.PathLike, gold_file: str | os.PathLike) -> StsPairs:
    """One sub-dataset: the pairs that have a gold score, in file order."""
    input_path, gold_path = Path(input_file), Path(gold_file)
    inputs = _read_lines(input_path)
    golds = _read_lines(gold_path)
    if len(inputs) != len(golds):
        shorter, longer = (input_path, gold_path) if len(inputs) < len(golds) else (gold_path, input_path)
        raise DataError(
            str(longer),
            min(len(inputs), len(golds)) + 1,
            None,
            f"{input_path.name} has {len(inputs)} lines but {gold_path.name} has {len(golds)}; "
            f"{shorter.name} ends before this line",
        )
    pairs = StsPairs()
    for lineno, (line, gold) in enumerate(zip(inputs, golds), start=1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(
                str(input_path),
                lineno,
                None,
                f"expected two sentences separated by one tab, found {len(parts) - 1} tabs",
            )
        for i, sentence in enumerate(parts, start=1):
            if not sentence.strip():
                raise DataError(str(input_path), lineno, f"sentence{i}", "empty sentence")
        gold = gold.strip()
        if gold == "":
            pairs.skipped_lines.append(lineno)
            continue
        try:
            score = float(gold)
        except ValueError:
            raise DataError(str(gold_path), lineno, None, f"gold score {gold!r} is not a number") from None
        if not math.isfinite(score) or not GOLD_RANGE[0] <= score <= GOLD_RANGE[1]:
            raise DataError(str(gold_path), lineno, None, f"gold score {gold!r} is outside [0, 5]")
        pairs.append((parts[0], parts[1], score))
    return pairs


def read_sts_folder(folder: str | os.PathLike) -> dict[str, StsPairs]:
    """Every sub-dataset of a SemEval STS folder, by name (sorted); each value is a list of
    (sentence1, sentence2, gold) with ``.skipped`` pairs that had an empty gold line."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"SemEval STS folder not found: {root}")
    inputs = sorted(p for p in root.iterdir() if p.name.startswith(INPUT_PREFIX) and p.name.endswith(SUFFIX))
    if not inputs:
        raise DataError(str(root), None, None, f"no {INPUT_PREFIX}<name>{SUFFIX} files in the folder")
    subsets: dict[str, StsPairs] = {}
    for input_path in inputs:
        name = input_path.name[len(INPUT_PREFIX) : -len(SUFFIX)]
        gold_path = root / f"{GOLD_PREFIX}{name}{SUFFIX}"
        if not gold_path.is_file():
            raise DataError(str(gold_path), None, None, f"missing gold file for {input_path.name}")
        subsets[name] = pairs = read_sts_pairs(input_path, gold_path)
        if pairs.skipped:
            logger.info("%s/%s: %d pair(s) without a gold score skipped", root.name, name, pairs.skipped)
    return subsets
