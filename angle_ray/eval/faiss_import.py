"""Import FAISS, with a message that says which extra to install when it is missing.

    faiss = import_faiss()

FAISS is not a base dependency: it comes from the ``cpu`` extra (faiss-cpu) or the ``gpu``
extra (faiss-gpu, CUDA 12 runtime from PyPI). Both distributions install the same ``faiss``
module, so they must never sit side by side: whichever installed last overwrites the other's
files. ``import_faiss`` warns once when it finds both.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging

logger = logging.getLogger(__name__)

MISSING_FAISS = (
    "FAISS is not installed: angle-ray needs one build of it. On a CPU machine: "
    "pip install 'angle-ray[cpu]' (faiss-cpu); on NVIDIA GPU nodes: pip install "
    "'angle-ray[gpu]' (faiss-gpu). Install one, never both: they provide the same module."
)


def installed_faiss_builds() -> list[str]:
    """Names of the installed distributions that provide the ``faiss`` module."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "faiss-cpu" or name.startswith("faiss-gpu"):
            names.add(name)
    return sorted(names)


def import_faiss():
    """The ``faiss`` module; an ImportError naming the extras when no build is installed."""
    try:
        faiss = importlib.import_module("faiss")
    except ImportError as err:
        raise ImportError(MISSING_FAISS) from err
    _warn_if_both_builds()
    return faiss


@functools.cache
def _warn_if_both_builds() -> None:
    builds = installed_faiss_builds()
    if "faiss-cpu" in builds and len(builds) > 1:
        logger.warning("both %s are installed and overwrite each other's `faiss` module; "
                       "pip uninstall both, then install the one extra you want",
                       " and ".join(builds))
