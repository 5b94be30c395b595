"""Encode a corpus with an elastic pool of encoder actors (Ray Data `ActorPoolStrategy`).

    emb = encode_with_pool(model_dir, texts, job.model, mining.pool, max_length=256)

Each actor loads the model once and embeds batches of texts; Ray Data starts `min_actors`,
grows the pool up to `max_actors` while there is work and free CPUs/GPUs, and shrinks it when
they go. An actor that dies mid-refresh is restarted by Ray Data and its unfinished batches
are retried (Ray Data gives pool actors `max_restarts=-1`, `max_task_retries=-1`), so a refresh
survives a lost actor or node. Embeddings come back L2-normalised, in input order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from angle_ray.config import ModelConfig, PoolConfig
from angle_ray.models.backbone import EmbeddingModel
from angle_ray.models.embedder import encode
from angle_ray.models.loader import ModelLoadError, load_model


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


class TextEncoder:
    """One pool actor: loads the model once, embeds a batch of texts per call.

    ``model_ref`` is a checkpoint's angle-ray folder (loaded as saved) or the job's starting model
    (built with the job's ``model:`` settings, ``model_cfg_json``, exactly as training built it)."""

    def __init__(self, model_ref: str, model_cfg_json: str | None, max_length: int | None, threads: int,
                 prompt: str | None = None, prompt_name: str | None = None, default_prompt: bool = False):
        torch.set_num_threads(threads)
        # no job settings (angle-ray embed): the model folder's own pooling / max_length
        cfg = ModelConfig.model_validate_json(model_cfg_json) if model_cfg_json else None
        self.model = load_model(model_ref, max_length=max_length, base=cfg).eval()
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        self.prompt = resolve_prompt(self.model, prompt, prompt_name, default_prompt)

    def __call__(self, batch: dict) -> dict:
        """`text` in, `emb` out; every other column (row ids, shard numbers) passes through."""
        emb = encode(self.model, list(batch["text"]), batch_size=len(batch["text"]), normalize=True,
                     prompt=self.prompt, dtype=self.model.cfg.dtype, show_progress=False)
        return {**{k: v for k, v in batch.items() if k != "text"}, "emb": emb}


def encode_dataset(ds, model_ref: str, pool: PoolConfig, model_cfg: ModelConfig | None = None,
                   max_length: int | None = None, prompt: str | None = None,
                   prompt_name: str | None = None, default_prompt: bool = False):
    """`ds` (a Ray Dataset with a `text` column) with `text` replaced by `emb`, encoded lazily on
    an actor pool of `pool.min_actors`..`pool.max_actors` `TextEncoder`s; other columns kept.
    Prompts as `resolve_prompt` picks them (by default none: mining passes the job's own)."""
    from ray.data import ActorPoolStrategy  # Ray Data only when a pool runs (see encode_with_pool)

    return ds.map_batches(
        TextEncoder,
        fn_constructor_kwargs={"model_ref": model_ref,
                               "model_cfg_json": model_cfg.model_dump_json() if model_cfg else None,
                               "max_length": max_length, "threads": max(1, int(pool.cpus_per_actor)),
                               "prompt": prompt, "prompt_name": prompt_name,
                               "default_prompt": default_prompt},
        batch_size=pool.batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_cpus=pool.cpus_per_actor,
        **({"num_gpus": pool.gpus_per_actor} if pool.gpus_per_actor else {}))


@dataclass
class PoolRun:
    embeddings: np.ndarray  # [N, H] float32, L2-normalised, input order
    seconds: float
    texts_per_s: float


def encode_with_pool(model_ref: str, texts: list[str], model_cfg: ModelConfig, pool: PoolConfig,
                     max_length: int | None = None, desc: str = "encode") -> PoolRun:
    """Embed `texts` on an actor pool of `pool.min_actors`..`pool.max_actors` encoders."""
    import ray.data  # Ray Data only when a pool runs: importing this module stays light

    start = time.perf_counter()
    n = len(texts)
    # several blocks per actor so the pool has work to spread and to retry in small pieces
    blocks = max(1, min(math.ceil(n / pool.batch_size), 4 * pool.max_actors))
    # from_items builds the blocks here (no Ray task): with training holding most CPUs, a
    # 1-CPU read or repartition task would wait for them and stall the refresh until the end
    ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)],
                             override_num_blocks=blocks)
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
