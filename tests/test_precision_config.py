"""fp16 without a loss scaler is refused by the config, naming the keys; the combinations that
have one (DeepSpeed on GPU) or need none (bf16, fp32) load."""

import pytest

from angle_ray.config import ConfigError, load_config


def test_fp16_with_ddp_on_gpu_is_refused_naming_the_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.dtype=fp16", "train.strategy=ddp", "train.use_gpu=true"])
    message = str(err.value)
    assert "model.dtype=fp16" in message and "train.strategy=ddp" in message
    assert "loss scaler" in message and "bf16" in message


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_fp16_without_a_gpu_is_refused_naming_the_keys(strategy):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.dtype=fp16", f"train.strategy={strategy}"])
    message = str(err.value)
    assert "model.dtype=fp16" in message and "train.use_gpu=true" in message
    assert "loss scaler" in message


def test_fp16_refusal_in_a_job_file_names_the_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model:\n  dtype: fp16\ntrain:\n  strategy: ddp\n  use_gpu: true\n")
    with pytest.raises(ConfigError, match=str(job)):
        load_config(job)


def test_deepspeed_on_gpu_keeps_fp16_its_dynamic_loss_scaler_covers_it():
    cfg = load_config(None, ["model.dtype=fp16", "train.strategy=deepspeed", "train.use_gpu=true"])
    assert cfg.model.dtype == "fp16"


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
@pytest.mark.parametrize("use_gpu", [False, True])
def test_bf16_and_fp32_need_no_scaler_anywhere(dtype, strategy, use_gpu):
    cfg = load_config(None, [f"model.dtype={dtype}", f"train.strategy={strategy}",
                             f"train.use_gpu={str(use_gpu).lower()}"])
    assert (cfg.model.dtype, cfg.train.strategy, cfg.train.use_gpu) == (dtype, strategy, use_gpu)
