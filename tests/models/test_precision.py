"""Mixed precision on CPU: bf16 detection, the fp32 fallback, and MiniLM under bf16 autocast
(embeddings close to fp32, matmuls really in bf16; ``encode`` in the resolved precision, a
fallback noted once per process). Training in bf16 against fp32: tests/train/test_engine.py."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from angle_ray.config import ModelConfig
from angle_ray.models import build_model, precision
from angle_ray.models.embedder import encode
from angle_ray.models.precision import (
    autocast,
    bf16_supported,
    cpu_bf16_flags,
    cpu_supports_bf16,
    notify_once,
    resolve_dtype,
)

X86_NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
X86_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_AMX = "flags\t\t: avx512f amx_tile amx_bf16 amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n"


def test_cpuinfo_flags_native_bf16_only():
    assert cpu_bf16_flags(X86_NO_BF16) == set()  # AVX-512 alone: bf16 emulated, not native
    assert cpu_bf16_flags(X86_AVX512_BF16) == {"avx512_bf16"}
    assert cpu_bf16_flags(X86_AMX) == {"amx_bf16"}
    assert cpu_bf16_flags(ARM_BF16) == {"bf16"}
    assert cpu_bf16_flags("model name\t: bf16 avx512_bf16 lookalike\n") == set()  # not a flags line


def test_cpu_supports_bf16_reads_the_cpuinfo_file(tmp_path):
    (tmp_path / "yes").write_text(X86_AVX512_BF16)
    (tmp_path / "no").write_text(X86_NO_BF16)
    assert cpu_supports_bf16(tmp_path / "yes")
    assert not cpu_supports_bf16(tmp_path / "no")
    assert not cpu_supports_bf16(tmp_path / "missing")  # e.g. macOS: fall back to fp32


def test_unsupported_bf16_falls_back_to_fp32_with_a_one_line_notice():
    dtype, notice = resolve_dtype("bf16", "cpu", bf16_ok=False)
    assert dtype == "fp32"
    assert "model.dtype=bf16" in notice and "fp32" in notice and "\n" not in notice
    dtype, notice = resolve_dtype("bf16", torch.device("cuda", 0), bf16_ok=False)
    assert dtype == "fp32" and "GPU" in notice


def test_supported_or_fp32_requests_stand():
    assert resolve_dtype("bf16", "cpu", bf16_ok=True) == ("bf16", None)
    assert resolve_dtype("fp32", "cpu") == ("fp32", None)
    assert resolve_dtype("fp16", "cuda", bf16_ok=False) == ("fp16", None)
    dtype, notice = resolve_dtype("fp16", "cpu")
    assert dtype == "fp32" and "CUDA only" in notice


def test_bad_requests_name_the_value():
    with pytest.raises(ValueError, match="'int8'"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="'mps'"):
        autocast("mps", "bf16")


def test_detection_on_this_machine_follows_its_cpu_flags():
    from angle_ray.models.precision import CPUINFO

    has_flag = CPUINFO.is_file() and bool(cpu_bf16_flags(CPUINFO.read_text()))
    assert bf16_supported("cpu") is has_flag
    assert resolve_dtype("bf16", "cpu")[0] == ("bf16" if has_flag else "fp32")


@pytest.fixture(scope="module")
def minilm_fp32():
    return build_model(ModelConfig(max_length=64)).eval()


def _forward_with_linear_dtype(model, batch, dtype):
    """Embeddings under `autocast(cpu, dtype)` and the dtype the first query projection produced."""
    seen = []
    layer = model.backbone.encoder.layer[0].attention.self.query
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        with torch.inference_mode(), autocast("cpu", dtype):
            emb = model(**batch)
    finally:
        handle.remove()
    return emb, seen[0]


def test_bf16_autocast_embeddings_match_fp32_and_matmuls_run_in_bf16(minilm_fp32, sts_sentences):
    batch = minilm_fp32.tokenize(sts_sentences)
    ref, ref_dtype = _forward_with_linear_dtype(minilm_fp32, batch, "fp32")
    low, low_dtype = _forward_with_linear_dtype(minilm_fp32, batch, "bf16")
    assert ref_dtype == torch.float32 and low_dtype == torch.bfloat16
    assert low.dtype == torch.float32  # pooling casts back: callers always get fp32 embeddings
    cos = F.cosine_similarity(ref, low, dim=-1)
    assert cos.min().item() > 0.99, cos
    assert not torch.equal(ref, low)  # really a different precision, not the same path
    # master weights untouched by autocast
    assert all(p.dtype == torch.float32 for p in minilm_fp32.parameters())


def test_notify_once_logs_each_notice_once_per_process(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_NOTICES_SHOWN", set())
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert notify_once("model.dtype=bf16: no bf16; running in fp32")
        assert not notify_once("model.dtype=bf16: no bf16; running in fp32")
        assert not notify_once(None)
    assert caplog.messages == ["model.dtype=bf16: no bf16; running in fp32"]


def test_encode_runs_bf16_under_autocast_or_falls_back_to_fp32_with_one_notice(
        minilm_fp32, sts_sentences, monkeypatch, caplog):
    ref = encode(minilm_fp32, sts_sentences, dtype="fp32", show_progress=False)
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    low = encode(minilm_fp32, sts_sentences, dtype="bf16", show_progress=False)
    assert low.dtype == np.float32 and not np.array_equal(low, ref)  # really bf16 matmuls
    cos = (low * ref).sum(-1) / np.linalg.norm(low, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.99, cos
    # a CPU without native bf16: fp32, the same numbers as an fp32 request, one notice
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    monkeypatch.setattr(precision, "_NOTICES_SHOWN", set())
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        again = [encode(minilm_fp32, sts_sentences, dtype="bf16", show_progress=False)
                 for _ in range(2)]
    assert all(np.array_equal(a, ref) for a in again)
    assert len(caplog.messages) == 1 and "running in fp32" in caplog.messages[0]
    with pytest.raises(ValueError, match="'int8'"):
        encode(minilm_fp32, sts_sentences, dtype="int8", show_progress=False)
