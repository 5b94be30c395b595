"""Where the data of a job lives: the `{data_dir}` placeholder and relative paths.

Job files name corpora like `{data_dir}/stsb/train.jsonl`. `{data_dir}` is
`$ANGLE_RAY_DATA_DIR` when set, else the project's sibling folder `../shared/data`. Local paths
are made absolute on the driver, because Ray workers do not share its working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    env = os.environ.get("ANGLE_RAY_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    for candidate in (Path.cwd() / ".." / "shared" / "data", PROJECT_ROOT.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return (PROJECT_ROOT.parent / "shared" / "data").resolve()


def is_remote(path: str) -> bool:
    return "://" in path


def expand_path(path: str) -> str:
    """Fill `{data_dir}`, expand `~`, make local paths absolute; a missing path says what to set."""
    filled = path.replace("{data_dir}", str(default_data_dir()))
    if is_remote(filled):
        return filled
    resolved = Path(filled).expanduser().resolve()
    if not resolved.exists():
        hint = (" Set ANGLE_RAY_DATA_DIR to the folder holding the project's data "
                "(stsb/, sick_r/, nli/, scifact/)." if "{data_dir}" in path else "")
        raise FileNotFoundError(f"data path not found: {resolved} (from {path!r}).{hint}")
    return str(resolved)
