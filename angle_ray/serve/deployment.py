"""The Ray Serve deployment: one replica = one loaded model answering HTTP JSON.

    app = build_app(ServeSettings(model="all-MiniLM-L6-v2", replicas=2), key_digest=None)
    serve.run(app, name="angle-ray", route_prefix="/")

Routes: `POST /v1/embeddings` (OpenAI shape), `GET /v1/models`, `GET /healthz` (no key needed),
`GET /stats` (request / batch counters of the replica that answers). Concurrent requests are
grouped by `@serve.batch`: a replica waits up to `batch_wait_s` for up to `max_batch_size`
requests and encodes all their texts in one call, in a worker thread so the event loop keeps
accepting (and queueing) requests meanwhile. A bad request is answered 4xx by `request.py`'s
rules and never reaches the batch.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from angle_ray.mining.encoder_pool import resolve_prompt
from angle_ray.models.device import actor_device
from angle_ray.models.embedder import apply_prompt, encode
from angle_ray.models.loader import load_model
from angle_ray.serve.request import (
    EmbeddingRequest,
    Limits,
    RequestError,
    check_api_key,
    embeddings_body,
    parse_request,
)

ENCODE_BATCH = 64  # texts per forward pass inside one served batch
STATS_WINDOW = 1000  # recent batch sizes kept for /stats


@dataclass(frozen=True)
class ServeSettings:
    """Everything a replica needs (plain values: it travels to the replica actors)."""

    model: str
    served_name: str | None = None  # the `model` clients send / see; default: the folder's name
    replicas: int = 1
    max_batch_size: int = 32  # requests per served batch
    batch_wait_s: float = 0.005
    max_texts: int = 256
    max_chars: int = 8192
    prompt: str | None = None  # e.g. "query: {text}", applied to every text
    prompt_name: str | None = None  # one of the model's saved prompts instead
    max_length: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    @property
    def name(self) -> str:
        return self.served_name or Path(self.model.rstrip("/")).name

    @property
    def limits(self) -> Limits:
        return Limits(max_texts=self.max_texts, max_chars=self.max_chars)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name="Embeddings")
class EmbeddingReplica:
    def __init__(self, settings: dict, key_digest: str | None) -> None:
        self.settings = ServeSettings(**settings)
        self.key_digest = key_digest
        torch.set_num_threads(max(1, int(self.settings.cpus_per_replica)))
        model = load_model(self.settings.model, max_length=self.settings.max_length)
        self.model = model.to(actor_device(self.settings.gpus_per_replica)).eval()
        # the explicit prompt, a saved one by name, else the model's default (as sentence-transformers)
        self.prompt = resolve_prompt(model, self.settings.prompt, self.settings.prompt_name, use_default=True)
        self.names = [self.settings.name, self.settings.model]
        self.embed_batch.set_max_batch_size(self.settings.max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(self.settings.batch_wait_s)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=STATS_WINDOW)
        self.counts = {"requests": 0, "rejected": 0, "batches": 0, "texts": 0}

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        vectors = encode(self.model, texts, batch_size=ENCODE_BATCH, prompt=self.prompt,
                         normalize=True, dtype=self.model.cfg.dtype, show_progress=False)
        ids = self.model.tokenizer(apply_prompt(texts, self.prompt), truncation=True, max_length=self.model.cfg.max_length)["input_ids"]
        return vectors, [len(x) for x in ids]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_batch(self, requests: list[list[str]]) -> list[tuple[np.ndarray, int]]:
        flat = [t for texts in requests for t in texts]
        self.batch_sizes.append(len(requests))
        self.counts["batches"] += 1
        self.counts["texts"] += len(flat)
        vectors, tokens = await asyncio.to_thread(self._encode, flat)
        out, start = [], 0
        for texts in requests:
            stop = start + len(texts)
            out.append((vectors[start:stop], sum(tokens[start:stop])))
            start = stop
        return out

    async def _embeddings(self, request: Request) -> dict:
        check_api_key(request.headers.get("authorization"), self.key_digest)
        body = await read_body(request, self.settings.limits.max_body_bytes)
        parsed: EmbeddingRequest = parse_request(body, self.settings.limits, self.names,
                                                 self.model.embedding_dim)
        vectors, tokens = await self.embed_batch(parsed.texts)
        return embeddings_body(parsed, vectors, tokens, self.settings.name)

    def stats(self) -> dict:
        sizes = list(self.batch_sizes)
        return {**self.counts, "batch_sizes": sizes, "max_batch_requests": max(sizes, default=0),
                "settings": asdict(self.settings)}

    async def __call__(self, request: Request) -> JSONResponse:
        path, method = request.url.path.rstrip("/") or "/", request.method
        self.counts["requests"] += 1
        try:
            if path == "/healthz":
                return JSONResponse({"status": "ok", "model": self.settings.name})
            if path == "/v1/embeddings" and method == "POST":
                return JSONResponse(await self._embeddings(request))
            if path in ("/v1/models", "/stats") and method == "GET":
                check_api_key(request.headers.get("authorization"), self.key_digest)
                return JSONResponse(self.stats() if path == "/stats" else self._models())
            known = path in ("/v1/embeddings", "/v1/models", "/stats")
            raise RequestError(405 if known else 404, f"{method} {path} is not served here; try "
                               "POST /v1/embeddings, GET /v1/models, GET /healthz", code="not_found")
        except RequestError as err:
            self.counts["rejected"] += 1
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            return JSONResponse(err.body(), status_code=err.status, headers=headers)

    def _models(self) -> dict:
        return {"object": "list", "data": [{"id": self.settings.name, "object": "model",
                                            "owned_by": "angle-ray"}]}


def build_app(settings: ServeSettings, key_digest: str | None):
    """The Serve application: `replicas` copies of the replica, each with its CPUs / GPUs."""
    actor = {"num_cpus": settings.cpus_per_replica}
    if settings.gpus_per_replica:
        actor["num_gpus"] = settings.gpus_per_replica
    return EmbeddingReplica.options(
        num_replicas=settings.replicas,
        # enough requests in flight per replica to fill a batch, and a second one queueing
        max_ongoing_requests=2 * settings.max_batch_size,
        ray_actor_options=actor,
    ).bind(asdict(settings), key_digest)
