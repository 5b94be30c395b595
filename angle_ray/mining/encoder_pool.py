"""Encode a corpus with an elastic pool of encoder actors (Ray Data `ActorPoolStrategy`).

    emb = encode_with_pool(model_dir, texts, job.model, mining.pool, max_length=256)
    emb = encode_tokens_with_pool(model_dir, cache.input_ids, job.model, mining.pool)  # token ids

Each actor loads the model once and embeds batches of texts; Ray Data starts `min_actors`,
grows the pool up to `max_actors` while there is work and free CPUs/GPUs, and shrinks it when
they go. An actor that dies mid-refresh is restarted by Ray Data and its unfinished batches
are retried (Ray Data gives pool actors `max_restarts=-1`, `max_task_retries=-1`), so a refresh
survives a lost actor or node. Embeddings come back L2-normalised, in input order.

Rows are texts (a `text` column, tokenised in the actor) or token ids (an `input_ids` column,
e.g. the refresher's token cache; padded in the actor to the batch's longest row). With
`pool.sort_by_length` the rows go to the pool longest first (tokens; characters for texts), so
each batch pads little; the `i` column puts the embeddings back in input order.
`pool.precision`: fp32 runs the model's own `model.dtype`; bf16 runs under autocast
(`models/precision.py`, fp32 with a notice where the device has no native bf16); int8
quantises most Linear layers dynamically (`torch.ao.quantization.quantize_dynamic`, see
`int8_layers`) and runs on CPU only: the config refuses it with `gpus_per_actor > 0`, and an
int8 actor never moves its model to a GPU.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from angle_ray.config import ModelConfig, PoolConfig
from angle_ray.models.backbone import EmbeddingModel
from angle_ray.models.device import actor_device
from angle_ray.models.embedder import encode
from angle_ray.models.loader import ModelLoadError, load_model
from angle_ray.models.precision import autocast, notify_once, resolve_dtype

IDS_TYPE = pa.list_(pa.int32())  # token ids: the token cache and the pool's input_ids column


def resolve_prompt(model: EmbeddingModel, prompt: str | None = None, prompt_name: str | None = None,
                   use_default: bool = False) -> str | None:
    """The prompt template every text gets: `prompt` as given, else the model's saved prompt
    `prompt_name`, else (with `use_default`, as sentence-transformers does) the model's default
    prompt; None for no prompt. An unknown name is a ModelLoadError listing the saved ones."""
    if prompt is not None:
        return prompt
    name = prompt_name or (model.default_prompt_name if use_default else None)
    if name is None:
        return None
    if name not in model.prompts:
        raise ModelLoadError(f"prompt name {name!r}: the model has prompts {sorted(model.prompts)}")
    return model.prompts[name]


def int8_layers(model: nn.Module) -> list[str]:
    """The Linear layers int8 quantises: all but the down-projections (in > out features, e.g.
    BERT's FFN output, Qwen2's down_proj), whose post-activation inputs carry outliers that a
    per-tensor int8 activation scale clips (on a SciFact slice, quantising them too took
    MiniLM's top-10 overlap with fp32 from about 0.90 to 0.85)."""
    return [name for name, layer in model.named_modules()
            if isinstance(layer, nn.Linear) and layer.in_features <= layer.out_features]


def requested_precision(precision: str, model_dtype: str) -> str:
    """What a pool's ``precision`` asks for: ``fp32`` means the model's own ``model.dtype``
    (a device without it may still fall back to fp32, see ``apply_precision``)."""
    return model_dtype if precision == "fp32" else precision


def apply_precision(model: EmbeddingModel, precision: str) -> tuple[EmbeddingModel, str]:
    """(the model to run, the autocast dtype to run it under) for a pool's ``precision``.

    int8: PyTorch dynamic quantisation (weights int8 per output channel, activations quantised
    per batch) of ``int8_layers``, on CPU; the model is changed in place."""
    if precision == "int8":
        spec = {name: per_channel_dynamic_qconfig for name in int8_layers(model)}
        with warnings.catch_warnings():  # torch.ao points at torchao, which is no dependency here
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model.cpu(), spec, dtype=torch.qint8, inplace=True)
        return model, "fp32"  # the quantised Linear layers take and return fp32
    dtype, notice = resolve_dtype(requested_precision(precision, model.cfg.dtype), model.device)
    notify_once(notice)
    return model, dtype


def pad_token_ids(rows, pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (input_ids, attention_mask), [rows, longest row], padded on ``side``
    (left for causal LMs, as their tokenizers pad)."""
    longest = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for k, row in enumerate(rows):
        span = slice(longest - len(row), longest) if side == "left" else slice(0, len(row))
        ids[k, span] = torch.from_numpy(np.array(row, dtype=np.int64))  # a copy: Arrow rows are read-only
        mask[k, span] = 1
    return ids, mask


class TextEncoder:
    """One pool actor: loads the model once, embeds a batch of texts or token ids per call.

    ``model_ref`` is a checkpoint's angle-ray folder (loaded as saved) or the job's starting model
    (built with the job's ``model:`` settings, ``model_cfg_json``, exactly as training built it).
    ``precision``: ``PoolConfig.precision`` (see the module doc). ``gpus``: the GPUs the actor
    reserved (``PoolConfig.gpus_per_actor``); with none it runs on CPU (``actor_device``)."""

    def __init__(self, model_ref: str, model_cfg_json: str | None, max_length: int | None, threads: int,
                 prompt: str | None = None, prompt_name: str | None = None, default_prompt: bool = False,
                 precision: str = "fp32", gpus: float = 0.0):
        torch.set_num_threads(threads)
        # no job settings (angle-ray embed): the model folder's own pooling / max_length
        cfg = ModelConfig.model_validate_json(model_cfg_json) if model_cfg_json else None
        self.model = load_model(model_ref, max_length=max_length, base=cfg).eval()
        if precision != "int8":  # int8 runs on CPU only
            self.model = self.model.to(actor_device(gpus))
        self.model, self.dtype = apply_precision(self.model, precision)
        self.prompt = resolve_prompt(self.model, prompt, prompt_name, default_prompt)

    def __call__(self, batch: dict) -> dict:
        """`text` or `input_ids` in, `emb` out; every other column (row ids, shard numbers)
        passes through."""
        emb = self.embed_ids(batch["input_ids"]) if "input_ids" in batch else encode(
            self.model, list(batch["text"]), batch_size=len(batch["text"]), normalize=True,
            prompt=self.prompt, dtype=self.dtype, show_progress=False)
        return {**{k: v for k, v in batch.items() if k not in ("text", "input_ids")}, "emb": emb}

    def embed_ids(self, rows) -> np.ndarray:
        """L2-normalised embeddings of already tokenised rows (prompts already applied)."""
        tokenizer = self.model.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids, mask = pad_token_ids(rows, pad_id, tokenizer.padding_side)
        device = self.model.device
        with torch.inference_mode(), autocast(device, self.dtype):
            emb = self.model(input_ids=ids.to(device), attention_mask=mask.to(device))
        return F.normalize(emb.float(), p=2, dim=-1).cpu().numpy()


def encode_dataset(ds, model_ref: str, pool: PoolConfig, model_cfg: ModelConfig | None = None,
                   max_length: int | None = None, prompt: str | None = None,
                   prompt_name: str | None = None, default_prompt: bool = False):
    """`ds` (a Ray Dataset with a `text` or an `input_ids` column) with it replaced by `emb`,
    encoded lazily on an actor pool of `pool.min_actors`..`pool.max_actors` `TextEncoder`s in
    `pool.precision`; other columns kept. Prompts as `resolve_prompt` picks them (by default
    none: mining applies the job's own before tokenising); token ids get no prompt."""
    from ray.data import ActorPoolStrategy  # Ray Data only when a pool runs (see encode_with_pool)

    return ds.map_batches(
        TextEncoder,
        fn_constructor_kwargs={"model_ref": model_ref,
                               "model_cfg_json": model_cfg.model_dump_json() if model_cfg else None,
                               "max_length": max_length, "threads": max(1, int(pool.cpus_per_actor)),
                               "prompt": prompt, "prompt_name": prompt_name,
                               "default_prompt": default_prompt, "precision": pool.precision,
                               "gpus": pool.gpus_per_actor},
        batch_size=pool.batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_cpus=pool.cpus_per_actor,
        **({"num_gpus": pool.gpus_per_actor} if pool.gpus_per_actor else {}))


@dataclass
class PoolRun:
    embeddings: np.ndarray  # [N, H] float32, L2-normalised, input order
    seconds: float
    texts_per_s: float


def length_order(lengths: np.ndarray) -> np.ndarray:
    """Row order, longest first (stable: equal lengths keep their input order)."""
    return np.argsort(-np.asarray(lengths), kind="stable")


def encode_with_pool(model_ref: str, texts: list[str], model_cfg: ModelConfig, pool: PoolConfig,
                     max_length: int | None = None, desc: str = "encode") -> PoolRun:
    """Embed `texts` on an actor pool of `pool.min_actors`..`pool.max_actors` encoders
    (`pool.sort_by_length`: ordered by characters, a stand-in for tokens)."""
    table = pa.table({"i": np.arange(len(texts), dtype=np.int64), "text": pa.array(texts, pa.string())})
    if pool.sort_by_length:
        table = table.take(length_order([len(t) for t in texts]))
    return _run_pool(table, model_ref, model_cfg, pool, max_length, desc)


def encode_tokens_with_pool(model_ref: str, token_ids, model_cfg: ModelConfig, pool: PoolConfig,
                            max_length: int | None = None, desc: str = "encode") -> PoolRun:
    """Embed rows of token ids (a pyarrow list array, e.g. `TokenCache.input_ids`, or lists of
    ints) on the pool; `pool.sort_by_length` orders them by token count."""
    ids = token_ids if isinstance(token_ids, (pa.Array, pa.ChunkedArray)) else pa.array(token_ids, IDS_TYPE)
    table = pa.table({"i": np.arange(len(ids), dtype=np.int64), "input_ids": ids})
    if pool.sort_by_length:
        lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
        table = table.take(length_order(lengths))
    return _run_pool(table, model_ref, model_cfg, pool, max_length, desc)


def _run_pool(table: pa.Table, model_ref: str, model_cfg: ModelConfig, pool: PoolConfig,
              max_length: int | None, desc: str) -> PoolRun:
    """Encode the rows of `table` (`i` + `text` or `input_ids`), in its row order, on the pool;
    embeddings come back by `i`."""
    import ray.data  # Ray Data only when a pool runs: importing this module stays light

    start = time.perf_counter()
    n = table.num_rows
    # several blocks per actor so the pool has work to spread and to retry in small pieces
    blocks = max(1, min(math.ceil(n / pool.batch_size), 4 * pool.max_actors))
    # from_items cuts contiguous blocks here (ray.put, no Ray task; from_arrow runs a metadata
    # task per block): with training holding most CPUs, a 1-CPU read, metadata or repartition
    # task would wait for them and stall the refresh until training ends
    ds = ray.data.from_items(table.to_pylist(), override_num_blocks=blocks)
    encoded = encode_dataset(ds, model_ref, pool, model_cfg, max_length)
    out: np.ndarray | None = None
    seen = 0
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        if out is None:
            out = np.zeros((n, batch["emb"].shape[1]), dtype=np.float32)
        out[batch["i"]] = batch["emb"]
        seen += len(batch["i"])
    if seen != n:  # Ray Data retries lost batches; a gap here would be a silent bad index
        raise RuntimeError(f"{desc}: the encoder pool returned {seen} of {n} embeddings")
    seconds = time.perf_counter() - start
    return PoolRun(embeddings=out if out is not None else np.zeros((0, 0), np.float32),
                   seconds=seconds, texts_per_s=n / max(seconds, 1e-9))
