"""bench/gpu_check.py: its formulas by hand, the GPU peak table, and its table on a machine
without a GPU (every row printed; the GPU rows say why they are unrun; the CPU rows measure).

bench/ is no package, so the script is loaded from its path.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.bench.conftest import bench_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"

# (part, device) of every row, in order: the table's contract
EXPECTED_ROWS = [("a", "cuda fp32"), ("a", "cuda bf16"), ("a", "cpu fp32"), ("a", "cuda/cpu"),
                 ("b", "cuda bf16"), ("b", "cuda bf16"),
                 ("c", "cuda"), ("c", "cpu"), ("c", "cuda/cpu"),
                 ("d", "cuda bf16"), ("ref", "cuda bf16")]
GPU_ROWS = {i for i, (_, device) in enumerate(EXPECTED_ROWS)
            if device.startswith("cuda") and device != "cuda/cpu"}  # ratio rows say what they lack


@pytest.fixture(scope="module")
def gpu_check():
    with bench_script("gpu_check") as module:
        yield module


def test_qwen2_05b_shape_parameters_and_flops_by_hand(gpu_check):
    from transformers import AutoModel, Qwen2Config

    shape = gpu_check.QWEN_SHAPES["qwen2-0.5b"]
    # per layer: q, o 896x896; k, v 896x128 (2 KV heads x 64); gate, up, down 896x4864
    n_base = 24 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864)
    assert gpu_check.decoder_linear_params(shape) == n_base == 357_826_560
    with torch.device("meta"):  # shapes only, no 2 GB of weights
        model = AutoModel.from_config(Qwen2Config(**shape))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear == n_base
    # + embeddings 151936 x 896, q/k/v biases, two norms per layer and the final norm
    assert sum(p.numel() for p in model.parameters()) == (
        n_base + 151936 * 896 + 24 * (896 + 2 * 128) + 24 * 2 * 896 + 896) == 494_032_768
    n_lora = 24 * 8 * ((896 + 896) + (896 + 128))  # r=8 on q_proj and v_proj: A r x in, B out x r
    flops = gpu_check.lora_flops_per_token(n_base, n_lora, 24, 1024, 896)
    assert flops == 4 * n_base + 6 * n_lora + 12 * 24 * 1024 * 896 == 1_698_791_424


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0), ("Tesla T4", None), ("NVIDIA L40", None),
])
def test_dense_bf16_peak_from_the_gpu_name(gpu_check, name, peak):
    assert gpu_check.peak_bf16_tflops(name)[0] == peak


def _rows(json_path: Path) -> list[dict]:
    return json.loads(json_path.read_text())["rows"]


def test_every_row_is_printed_even_when_no_part_runs(gpu_check, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert gpu_check.main(["--parts", "none", "--json", str(out)]) == 0
    rows = _rows(out)
    assert [(r["part"], r["device"]) for r in rows] == EXPECTED_ROWS
    assert all(r["result"].startswith("unrun: ") for r in rows)
    printed = capsys.readouterr().out
    assert printed.count("unrun: ") == len(EXPECTED_ROWS)


def test_unrun_reasons_name_what_is_missing(gpu_check, monkeypatch):
    args = gpu_check.parse_args([])
    no_gpu = {"cuda": False}
    assert gpu_check._why_unrun("b", True, args, no_gpu).startswith("no CUDA GPU")
    assert gpu_check._why_unrun("a", True, gpu_check.parse_args(["--cpu-only"]), no_gpu) == "--cpu-only"
    monkeypatch.setitem(gpu_check.NEEDS, "c", ["no_such_module_for_gpu_check"])
    reason = gpu_check._why_unrun("c", False, args, no_gpu)
    assert "missing Python packages no_such_module_for_gpu_check" in reason


@pytest.mark.slow  # three Python processes: MiniLM steps, FAISS (~1-2 min on 2 busy cores)
def test_cpu_only_run_measures_the_cpu_rows_and_marks_the_gpu_rows_unrun(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu-only", "--tiny",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(out)
    assert [(r["part"], r["device"]) for r in rows] == EXPECTED_ROWS
    for i, row in enumerate(rows):
        if i in GPU_ROWS:
            assert row["result"] == "unrun: --cpu-only", row
    results = {(r["part"], r["device"]): r["result"] for r in rows}
    assert re.fullmatch(r"\d+\.\d\d steps/s \(\d+ pairs/s, \d+ threads\)", results["a", "cpu fp32"])
    assert re.search(r"search [\d.]+ s \([\d,]+ queries/s\)", results["c", "cpu"])
    assert results["a", "cuda/cpu"].startswith("unrun: needs both")
    assert results["c", "cuda/cpu"].startswith("unrun: needs the GPU row")
    assert "part  check" in done.stdout  # the printed table


@pytest.mark.slow  # DeepSpeed ZeRO-3 on CPU in a subprocess (~30 s)
def test_lora_worker_counts_adapters_and_flops_on_a_tiny_decoder(gpu_check):
    """The part-b worker, on CPU with the tiny shape: the code path the GPU run takes."""
    params = {"device": "cpu", "shape": "tiny", "stage": 3, "steps": 2, "warmup": 1,
              "batch": 2, "seq": 16}
    result = gpu_check.run_worker("qwen_lora", params, cuda=False)
    assert "failed" not in result, result
    h, kv, layers = 64, 2 * 16, 2
    assert result["n_lora"] == layers * 8 * ((h + h) + (h + kv))  # r=8 on q and v
    assert result["n_base"] == layers * (2 * h * h + 2 * h * kv + 3 * h * 128)
    assert result["flops_per_token"] == gpu_check.lora_flops_per_token(
        result["n_base"], result["n_lora"], layers, 16, h)
    assert result["tokens_per_s"] > 0 and result["peak_gib"] is None
    # every weight, counted before ZeRO-3 partitions them into empty placeholders
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * 128 + 2 * h  # q,k,v biased
    assert result["n_params"] == 512 * h + layers * per_layer + h + result["n_lora"]


def test_a_result_line_is_read_from_a_worker_that_timed_out(gpu_check):
    """TimeoutExpired carries stdout as bytes: a worker that printed and then hung still counts."""
    out = b"DeepSpeed info\n" + gpu_check.RESULT_TAG.encode() + b'{"tflops": 600.5}\nexiting\n'
    assert gpu_check._result_line(out) == {"tflops": 600.5}
    assert gpu_check._result_line(out.decode()) == {"tflops": 600.5}
    assert gpu_check._result_line(None) is None and gpu_check._result_line("no result") is None
