"""The dev pass during training encodes in the precision the engine trains in (real MiniLM, real
STS-B validation pairs, the real DDP engine in one process)."""

import json

import pytest
import torch

from angle_ray.config import ModelConfig, TrainConfig
from angle_ray.eval.sts import sts_spearman
from angle_ray.models.backbone import build_model
from angle_ray.models.precision import bf16_supported
from angle_ray.train.dev_eval import DevEvaluator
from angle_ray.train.engine import make_engine
from angle_ray.train.plan import StsDev

CPU = torch.device("cpu")


@pytest.mark.skipif(not bf16_supported(CPU), reason="encode() runs fp32 on a CPU without native bf16")
def test_dev_metric_is_computed_in_the_engines_precision(data_dir):
    with open(data_dir / "stsb" / "validation.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(400), f)]
    dev = StsDev([r["text1"] for r in rows], [r["text2"] for r in rows], [r["label"] for r in rows])
    for dtype, other in (("bf16", "fp32"), ("fp32", "bf16")):
        model = build_model(ModelConfig(max_length=48, dtype=dtype))
        engine = make_engine(model, TrainConfig(strategy="ddp"), 1, CPU, bf16_ok=True)
        assert engine.precision.dtype == dtype
        got = DevEvaluator(dev, batch_size=64).run(engine, rank=0)["dev_metric"]
        assert model.training  # the dev pass puts the model back in training mode
        score = {d: sts_spearman(model, dev.text1, dev.text2, dev.gold, dtype=d, show_progress=False)
                 for d in (dtype, other)}
        assert score[dtype] != score[other]  # else this test could not tell them apart
        assert got == score[dtype], (dtype, got, score)
