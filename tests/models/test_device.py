"""Which device a model in a Ray actor runs on: CUDA only with GPUs reserved."""

from __future__ import annotations

import torch

from angle_ray.models.device import actor_device


def test_actor_device_needs_reserved_gpus(monkeypatch):
    # GPU mock (no GPU here): a node where CUDA is visible to every actor, as Ray 2.60 leaves it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert actor_device(0) == torch.device("cpu")
    assert actor_device(1) == torch.device("cuda")
    assert actor_device(0.5) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert actor_device(1) == torch.device("cpu")
