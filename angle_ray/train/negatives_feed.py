"""Hard negatives for the training loop, from the newest published negatives version.

    feed = open_negatives_feed(plan.negatives, job.model)    # None when the job does not mine
    feed.advance(step)                                        # poll / switch / wait if too stale
    tokens = feed.attach(tokens)                              # Format B batch -> Format C batch

The mined stream carries (query, positive) pairs; `attach` adds each query's k negatives from
the version the worker trains with, returning a Format C batch. Before any version exists (no
warm start) batches stay Format B (in-batch negatives only).

Never blocking: every `poll_every` steps rank 0 looks for a newer version and every rank loads
it in a background thread (read + tokenise); all ranks switch together at a later poll once
every rank has it (the batch layout must match across ranks for the all-gather). Training
waits only when `max_staleness` is set and the version in use is older than that many steps.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from angle_ray.config import MiningConfig, ModelConfig
from angle_ray.data.collate import TokenBatch
from angle_ray.data.roles import NEGATIVE, QUERY, ragged
from angle_ray.data.stream import text_hash
from angle_ray.mining.publish import latest_version, read_version
from angle_ray.models.backbone import load_tokenizer
from angle_ray.models.embedder import apply_prompt
from angle_ray.train.gather import collective_device
from angle_ray.train.plan import NegativesPlan

logger = logging.getLogger(__name__)

READY, LOADING, FAILED = 1, 0, -1


@dataclass
class Version:
    step: int
    negatives: dict[int, tuple[list[np.ndarray], list[int]]]  # query hash -> (token ids, hashes)
    refresh_s: float
    random_fill: float  # share of its negatives filled at random (no candidate left)


def load_version(path: Path, step: int, tokenizer, mining: MiningConfig,
                 max_length: int) -> Version:
    """Read a published version and tokenise every negative once (prompts as in training)."""
    rows, manifest = read_version(path)
    by_query: dict[int, list[str]] = {}
    queries = apply_prompt([row[QUERY] for row in rows], mining.query_prompt)
    for query, row in zip(queries, rows):
        by_query.setdefault(text_hash(query), apply_prompt(row[NEGATIVE], mining.doc_prompt))
    texts = sorted({t for negs in by_query.values() for t in negs})
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    tokens = {t: np.asarray(i, dtype=np.int32) for t, i in zip(texts, ids)}
    negatives = {}
    for key, negs in by_query.items():
        if not negs:
            raise ValueError(f"{path}: a query has no negatives (expected {mining.k})")
        picked = [negs[j % len(negs)] for j in range(mining.k)]
        negatives[key] = ([tokens[t] for t in picked], [text_hash(t) for t in picked])
    return Version(step=step, negatives=negatives,
                   refresh_s=float(manifest.get("seconds", {}).get("total_s", 0.0)),
                   random_fill=float(manifest.get("stats", {}).get("random_fill_fraction") or 0.0))


def _collective(value: int, op: str) -> int:
    """`value` agreed across ranks: rank 0's (broadcast) or the minimum (all_reduce)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=collective_device())
    if op == "broadcast":
        dist.broadcast(t, src=0)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


class NegativesFeed:
    """The negatives version in use, the one loading, and what attach() adds to a batch."""

    def __init__(self, neg_dir: str | Path, mining: MiningConfig, tokenizer, max_length: int):
        self.dir = Path(neg_dir)
        self.m = mining
        self.tok = tokenizer
        self.max_length = max_length
        self.current: Version | None = None
        self.pending: tuple[int, Future] | None = None
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="negatives")
        self.wait_s = 0.0
        self.used: list[int] = []

    # --- which version
    def prime(self) -> None:
        """Start with the newest version on disk (e.g. the warm start), loaded before step 1."""
        self.poll(0, force=True)
        if self.pending is not None:
            self.pending[1].exception()  # wait for the load (a failure is handled below)
            self._maybe_switch(0)

    def poll(self, step: int, force: bool = False) -> None:
        if not force and step % self.m.poll_every:
            return
        if self.pending is not None:
            self._maybe_switch(step)
        newest = _collective(self._newest_on_disk(), "broadcast")
        have = max(self.current.step if self.current else -1,
                   self.pending[0] if self.pending else -1)
        if newest > have and self.pending is None:
            self.pending = (newest, self.loader.submit(
                load_version, self.dir / f"v{newest}", newest, self.tok, self.m, self.max_length))

    def _newest_on_disk(self) -> int:
        latest = latest_version(self.dir)
        return latest[0] if latest else -1

    def _maybe_switch(self, step: int) -> None:
        want, future = self.pending
        state = LOADING if not future.done() else (FAILED if future.exception() else READY)
        agreed = _collective(state, "min")
        if agreed == LOADING:
            return
        self.pending = None
        if agreed == FAILED:  # e.g. pruned before this rank read it: wait for the next one
            logger.warning("negatives v%d could not be loaded on every rank: %s", want,
                           future.exception())
            return
        self.current = future.result()
        self.used.append(want)
        if not dist.is_initialized() or dist.get_rank() == 0:  # one line per run, not per rank
            print(f"[angle-ray] step {step}: training with negatives v{want}", flush=True)

    def staleness(self, step: int) -> int:
        return step - (self.current.step if self.current else 0)

    def wait_if_stale(self, step: int) -> None:
        """Block only past `max_staleness`: poll until a fresh enough version is in use."""
        bound = self.m.max_staleness
        if bound is None or self.staleness(step) <= bound:
            return
        started = time.perf_counter()
        print(f"[angle-ray] step {step}: negatives are {self.staleness(step)} steps old "
              f"(bound {bound}); waiting for a refresh", flush=True)
        while self.staleness(step) > bound:
            if time.perf_counter() - started > self.m.wait_timeout_s:
                raise TimeoutError(
                    f"no negatives version newer than step {step - bound} appeared in {self.dir} "
                    f"within mining.wait_timeout_s={self.m.wait_timeout_s}; check the refresher's "
                    "log lines ([angle-ray] refresh ...) or raise mining.max_staleness")
            time.sleep(0.5)
            self.poll(step, force=True)
        self.wait_s += time.perf_counter() - started

    def advance(self, step: int) -> None:
        """Before `step`: look for / switch to a newer version, wait only past the bound."""
        self.poll(step)
        self.wait_if_stale(step)

    # --- what a batch gets
    def attach(self, batch: TokenBatch) -> TokenBatch:
        """The Format B `batch` as Format C with each query's k negatives, or as is while no
        version is loaded. A query the version does not know is an error (KeyError)."""
        if self.current is None:
            return batch
        table = self.current.negatives
        rows = []
        for h in batch.hashes(QUERY):
            if int(h) not in table:
                raise KeyError(f"negatives v{self.current.step} in {self.dir} have no entry for a "
                               "training query: the mined stream and the version disagree")
            rows.append(table[int(h)])
        k = self.m.k
        return batch.with_negatives(
            [ragged(toks[j] for toks, _ in rows) for j in range(k)],
            [np.array([hashes[j] for _, hashes in rows], dtype=np.int64) for j in range(k)])

    def metrics(self, step: int) -> dict:
        return {"neg/version": self.current.step if self.current else -1,
                "neg/staleness": self.staleness(step), "neg/wait_s": self.wait_s,
                "neg/versions_used": len(self.used),
                "neg/refresh_s": self.current.refresh_s if self.current else 0.0,
                "neg/random_fill": self.current.random_fill if self.current else 0.0}


def open_negatives_feed(plan: NegativesPlan | None, model_cfg: ModelConfig) -> NegativesFeed | None:
    """The feed for the job's published negatives, primed with the newest version on disk."""
    if plan is None:
        return None
    feed = NegativesFeed(plan.dir, plan.mining, load_tokenizer(model_cfg), model_cfg.max_length)
    feed.prime()
    return feed
