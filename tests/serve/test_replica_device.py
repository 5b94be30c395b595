"""A serve replica without reserved GPUs runs on CPU even where CUDA shows (built in-process)."""

from __future__ import annotations

import torch

from angle_ray.serve.deployment import EmbeddingReplica, ServeSettings


def test_replica_without_gpus_stays_on_cpu_where_cuda_shows(monkeypatch):
    # GPU mock (no GPU here): Ray 2.60 shows a zero-GPU replica every GPU of the node
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    settings = ServeSettings(model="all-MiniLM-L6-v2", gpus_per_replica=0.0)
    replica = EmbeddingReplica.func_or_class(vars(settings), key_digest=None)
    assert replica.model.device.type == "cpu"
    vectors, tokens = replica._encode(["a plane is taking off"])
    assert vectors.shape == (1, 384) and tokens[0] > 0
