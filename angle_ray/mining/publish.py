"""Versioned, atomic negatives folders: how the miner hands negatives to the train stream.

    neg_dir/v120/negatives.jsonl + manifest.json     a complete version (mined at step 120)
    neg_dir/.tmp-v160-<uuid>/                         being written; never read

``publish_version`` writes everything into a hidden temporary folder, fsyncs it, then renames
it to ``v<step>`` (one atomic rename on one filesystem), so a reader sees either no ``v<step>``
or a complete one. A version is complete when its folder is named ``v<int>`` and holds
``manifest.json``; ``list_versions`` ignores everything else.

Same step published twice (a restarted refresher re-mining the same checkpoint): the FIRST
complete version is kept and the new one is discarded. A version that readers may already have
picked up is never swapped under them, and re-mining one checkpoint gives the same negatives
anyway. A ``v<step>`` folder without a manifest (not made by this module) is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA_FILES = {"jsonl": "negatives.jsonl", "parquet": "negatives.parquet"}
_VERSION_RE = re.compile(r"^v(\d+)$")
_TMP_PREFIX = ".tmp-"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rows(path: Path, rows: list[dict], fmt: str) -> None:
    """Rows as JSON lines or one Parquet table (list columns stay lists)."""
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


def publish_version(neg_dir, step: int, rows: list[dict], manifest: dict, fmt: str = "jsonl") -> Path:
    """Write ``rows`` + manifest as ``neg_dir/v<step>`` atomically; returns the version folder.

    On any error the temporary folder is removed and the error re-raised (no partial version).
    If a complete ``v<step>`` already exists it is kept and returned (see the module doc)."""
    if fmt not in DATA_FILES:
        raise ValueError(f"negatives format {fmt!r} is not one of {sorted(DATA_FILES)}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    neg_dir = Path(neg_dir)
    neg_dir.mkdir(parents=True, exist_ok=True)
    final = neg_dir / f"v{step}"
    if (final / MANIFEST).is_file():
        logger.info("negatives %s already published; keeping it", final)
        return final
    tmp = neg_dir / f"{_TMP_PREFIX}v{step}-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        full_manifest = {**manifest, "step": step, "rows": len(rows), "format": fmt,
                         "data_file": DATA_FILES[fmt],
                         "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        manifest_text = json.dumps(full_manifest, indent=2, sort_keys=True)  # fails before any data
        data_path = tmp / DATA_FILES[fmt]
        write_rows(data_path, rows, fmt)
        (tmp / MANIFEST).write_text(manifest_text + "\n", encoding="utf-8")
        for path in (data_path, tmp / MANIFEST, tmp):
            _fsync_path(path)
        if final.exists() and not (final / MANIFEST).is_file():
            _remove_aside(final)  # junk under the version's name, not a version
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / MANIFEST).is_file():  # another publisher won the race: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
        _fsync_path(neg_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remove_aside(path: Path) -> None:
    """Rename first (one atomic step out of readers' sight), then delete."""
    aside = path.parent / f"{_TMP_PREFIX}rm-{path.name}-{uuid.uuid4().hex}"
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def list_versions(neg_dir) -> list[tuple[int, Path]]:
    """Complete versions ``(step, folder)`` sorted by step; temporary and other folders ignored."""
    neg_dir = Path(neg_dir)
    if not neg_dir.is_dir():
        return []
    found = []
    for child in neg_dir.iterdir():
        m = _VERSION_RE.match(child.name)
        if m and child.is_dir() and (child / MANIFEST).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_version(neg_dir) -> tuple[int, Path] | None:
    versions = list_versions(neg_dir)
    return versions[-1] if versions else None


def read_version(path) -> tuple[list[dict], dict]:
    """(rows, manifest) of one version folder."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete negatives version (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    fmt = manifest.get("format", "jsonl")
    if fmt not in DATA_FILES:
        raise ValueError(f"{manifest_path}: unknown format {fmt!r}")
    data_path = path / DATA_FILES[fmt]
    if fmt == "jsonl":
        with open(data_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(data_path).to_pylist()
    return rows, manifest


def prune_versions(neg_dir, keep: int) -> list[Path]:
    """Delete all complete versions but the newest ``keep``; returns the deleted folders."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    old = list_versions(neg_dir)[:-keep]
    for _step, path in old:
        _remove_aside(path)
    return [path for _step, path in old]


def clean_partial(neg_dir) -> int:
    """Remove leftover ``.tmp-*`` folders of a crashed publisher; returns how many.

    Call it when no publisher writes to ``neg_dir`` (e.g. when a refresher starts): it would
    also remove a live publisher's temporary folder, which then fails and leaves nothing."""
    neg_dir = Path(neg_dir)
    if not neg_dir.is_dir():
        return 0
    count = 0
    for child in neg_dir.iterdir():
        if child.name.startswith(_TMP_PREFIX):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            count += 1
    return count
