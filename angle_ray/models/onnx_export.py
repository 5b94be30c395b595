"""ONNX export of a model (encoder + pooling + normalisation) and an onnxruntime runner.

    folder = export_onnx(model, "out/onnx-model")               # + onnx/model_int8.onnx
    onnx_model = OnnxEmbedder("out/onnx-model")                 # variant="int8" for the int8 file
    vecs = onnx_model.encode(["A man plays a flute."])          # unit vectors, like Embedder's

The folder is the sentence-transformers export (the HF export when the pooling has no
sentence-transformers equivalent) plus ``onnx/``:

  onnx/model.onnx        fp32 graph, dynamic batch and sequence axes; inputs ``input_ids``,
                         ``attention_mask`` (int64); outputs ``last_hidden_state`` [B, T, H],
                         ``sentence_embedding`` [B, H] (pooled) and ``normalized_embedding``
                         (the same, L2-normalised)
  onnx/model_int8.onnx   the same graph with int8 weights (onnxruntime dynamic quantisation,
                         per-channel, MatMul only; per-tensor scales or an int8 word-embedding
                         table lost too much: cosine to fp32 fell to ~0.96 on STS-B sentences;
                         MiniLM: 91 -> 59 MB, its 47 MB embedding table stays fp32)
  onnx/angle_ray_onnx.json  pooling, max_length, embedding_dim, prompts, file names

``last_hidden_state`` and the file name ``onnx/model.onnx`` are what sentence-transformers' ONNX
backend (``SentenceTransformer(folder, backend="onnx")``, via optimum's
ORTModelForFeatureExtraction) reads; it pools in PyTorch with the folder's Pooling module.
The graph comes from ``torch.onnx.export(dynamo=True)``: the TorchScript exporter bakes the
example's shapes into transformers' attention-mask code (wrong vectors at other lengths).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoTokenizer

from angle_ray.errors import UserError
from angle_ray.models.backbone import EmbeddingModel
from angle_ray.models.embedder import apply_prompt, length_sorted_batches
from angle_ray.models.export import ST_POOLING_FLAGS, export_hf, export_sentence_transformers
from angle_ray.models.pooling import pool

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
META_FILE = "angle_ray_onnx.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("last_hidden_state", "sentence_embedding", "normalized_embedding")
VARIANTS = {"fp32": FP32_FILE, "int8": INT8_FILE}
OPSET = 18
# protobuf caps one file at 2 GiB: larger models keep their weights in a side file
_SINGLE_FILE_LIMIT = 1_800_000_000


class _PooledGraph(nn.Module):
    """What the ONNX graph computes: the backbone, then pooling, then L2 normalisation
    (the same steps as ``EmbeddingModel.forward``, keeping the token states as an output too)."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.model.cfg
        want_layers = cfg.pooling == "first_last_avg"
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if want_layers:
            kwargs["output_hidden_states"] = True
        if cfg.is_llm:
            kwargs["use_cache"] = False
        out = self.model.backbone(**kwargs)
        hidden = out.last_hidden_state.float()
        layers = tuple(h.float() for h in out.hidden_states) if want_layers else None
        pooled = pool(hidden, attention_mask, cfg.pooling, layers)
        return hidden, pooled, torch.nn.functional.normalize(pooled, p=2, dim=-1)


def _fp32_model(model: EmbeddingModel) -> EmbeddingModel:
    """The model to trace: LoRA merged, fp32 weights (CPU onnxruntime has few bf16 kernels)."""
    plain = model.merged()  # a copy when there is an adapter, else the model itself
    if all(p.dtype == torch.float32 for p in plain.parameters()):
        return plain
    return (copy.deepcopy(plain) if plain is model else plain).float()


def _example_batch(model: EmbeddingModel) -> tuple[Tensor, Tensor]:
    # two rows of different lengths: a dimension of size 1 would be specialised, not dynamic
    batch = model.tokenize(["An example sentence to trace the graph with.", "A short one."])
    return batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)


class OnnxUnavailable(UserError):
    """The optional ``onnx`` extra is not installed (the CLI prints it as `error: ...`)."""


def _require_onnx() -> None:
    """onnx, onnxscript and onnxruntime are the optional ``onnx`` extra: say so when missing."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxUnavailable(
            f"ONNX export needs {', '.join(missing)}: pip install 'angle-ray[onnx]'")


def write_onnx_graph(model: EmbeddingModel, path: str | Path) -> Path:
    """Trace ``model`` into one ONNX file (dynamic batch and sequence axes); returns its path."""
    _require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = _fp32_model(model)
    was_training = plain.training
    plain.eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: seq}
    big = sum(p.numel() for p in plain.parameters()) * 4 > _SINGLE_FILE_LIMIT
    try:
        with torch.no_grad():
            torch.onnx.export(
                _PooledGraph(plain).eval(), _example_batch(plain), str(path), dynamo=True,
                input_names=list(INPUTS), output_names=list(OUTPUTS), opset_version=OPSET,
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                external_data=big, verbose=False)
    finally:
        plain.train(was_training)
    return path


def quantize_onnx_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Dynamic int8 quantisation of the MatMul weights, one scale per output channel."""
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional extra: see above

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    side_file = fp32_path.with_name(fp32_path.name + ".data").exists()
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], use_external_data_format=side_file)
    return int8_path


def _write_model_folder(model: EmbeddingModel, out_dir: Path) -> bool:
    """The PyTorch folder the ONNX files sit in; True when it is a sentence-transformers one."""
    if model.cfg.pooling in ST_POOLING_FLAGS:
        export_sentence_transformers(model, out_dir)
        return True
    logger.warning("pooling %r has no sentence-transformers equivalent: %s is an angle-ray / HF "
                   "folder, which sentence-transformers' ONNX backend cannot load",
                   model.cfg.pooling, out_dir)
    export_hf(model, out_dir)
    return False


def export_onnx(model: EmbeddingModel, out_dir: str | Path, *, quantize_int8: bool = True) -> Path:
    """Write the model folder plus ``onnx/model.onnx`` (and ``onnx/model_int8.onnx`` when
    ``quantize_int8``) and ``onnx/angle_ray_onnx.json``; returns ``out_dir``."""
    out = Path(out_dir)
    st_loadable = _write_model_folder(model, out)
    fp32_path = write_onnx_graph(model, out / ONNX_DIR / FP32_FILE)
    files = {"fp32": FP32_FILE}
    if quantize_int8:
        quantize_onnx_int8(fp32_path, out / ONNX_DIR / INT8_FILE)
        files["int8"] = INT8_FILE
    meta = {
        "files": files,
        "inputs": list(INPUTS),
        "outputs": list(OUTPUTS),
        "pooling": model.cfg.pooling,
        "max_length": model.cfg.max_length,
        "embedding_dim": model.embedding_dim,
        "is_llm": model.cfg.is_llm,
        "prompts": dict(model.prompts),
        "default_prompt_name": model.default_prompt_name,
        "normalize": model.normalize,
        "sentence_transformers_onnx_backend": st_loadable,
        "opset": OPSET,
    }
    (out / ONNX_DIR / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_onnx_meta(folder: str | Path) -> dict:
    """``onnx/angle_ray_onnx.json`` of an ``export_onnx`` folder; a clear error when absent."""
    meta_file = Path(folder) / ONNX_DIR / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{folder} is not an ONNX export (no {ONNX_DIR}/{META_FILE}); write one with "
            "`angle-ray export --onnx` or angle_ray.models.onnx_export.export_onnx")
    return json.loads(meta_file.read_text())


class OnnxEmbedder:
    """Embed texts with an exported ONNX graph on onnxruntime (no PyTorch model needed).

        onnx_model = OnnxEmbedder("out/onnx-model", variant="int8")
        vecs = onnx_model.encode(["A man plays a flute.", "A plane takes off."])
        print(vecs.shape, vecs @ vecs.T)     # (2, 384), cosine matrix

    ``variant``: ``fp32`` or ``int8``; ``threads``: onnxruntime intra-op threads (None: its
    default, all cores). The tokenizer is the folder's own.
    """

    def __init__(self, folder: str | Path, variant: str = "fp32", threads: int | None = None) -> None:
        _require_onnx()
        import onnxruntime as ort  # optional extra: imported only when ONNX is used

        self.meta = read_onnx_meta(folder)
        if variant not in self.meta["files"]:
            raise ValueError(f"{folder}: no {variant!r} ONNX file; it has {sorted(self.meta['files'])}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        path = Path(folder) / ONNX_DIR / self.meta["files"][variant]
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    def encode(self, texts: list[str], batch_size: int = 64, normalize: bool = True,
               prompt_name: str | None = None) -> np.ndarray:
        """float32 [N, D] embeddings in input order (length-sorted batches, as ``encode``)."""
        texts = list(texts)
        if prompt_name is not None:
            prompts = self.meta.get("prompts") or {}
            if prompt_name not in prompts:
                raise ValueError(f"unknown prompt_name {prompt_name!r}; this model's prompts: "
                                 f"{', '.join(sorted(prompts)) or 'none'}")
            texts = apply_prompt(texts, prompts[prompt_name])
        output = "normalized_embedding" if normalize else "sentence_embedding"
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        for idx in length_sorted_batches(texts, batch_size):
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.meta["max_length"], return_tensors="np")
            feed = {name: enc[name].astype(np.int64) for name in self.input_names}
            out[idx] = self.session.run([output], feed)[0]
        return out
