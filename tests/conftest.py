"""Shared test fixtures: offline Hugging Face, the real data folder, one Ray per session."""

import os
from pathlib import Path

import pytest

# Model hubs are unreachable in CI: everything loads from local folders or packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANGLE_RAY_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; set ANGLE_RAY_DATA_DIR")
    return SHARED_DATA
