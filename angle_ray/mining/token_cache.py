"""Token ids of the mining corpus and queries: tokenised once per job, reused by every refresh.

    cache = mining_tokens(job, task, neg_dir)     # <neg_dir>/.tokens/tokens-<key>.parquet
    cache.table        # pyarrow: i (int64), input_ids (list<int32>); docs first, then queries
    cache.built        # True when this call tokenised, False when the file on disk was reused

The ids are what the model's tokenizer gives for each text with its mining prompt applied, at
``mining.max_length`` (else ``model.max_length``), truncated and not padded: the encoder pool
pads each batch to its own longest row. The file name carries a hash of everything that decides
the ids: the tokenizer (its files when it is a local folder, else its name), max_length, the
prompts, and the texts (count + sha256). A changed key builds a new file (older ones are
removed); an equal key reuses the file, also after a refresher restart. The file is written
aside and renamed, so a reader sees a complete file or none; a file that does not read back as
expected (torn, wrong rows) is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from angle_ray.config import JobConfig
from angle_ray.mining.encoder_pool import IDS_TYPE
from angle_ray.mining.task import MiningTask
from angle_ray.models.backbone import load_tokenizer
from angle_ray.models.default_model import resolve_model_path
from angle_ray.models.embedder import apply_prompt

logger = logging.getLogger(__name__)

CACHE_DIR = ".tokens"  # inside the job's negatives folder
# files that decide how a Hugging Face tokenizer splits text (fast or slow, BPE or WordPiece)
_TOKENIZER_FILE = re.compile(r"^(tokenizer.*|vocab\..*|merges\.txt|special_tokens_map\.json|"
                             r"added_tokens\.json|.*\.model)$")


@dataclass
class TokenCache:
    path: Path
    table: pa.Table  # i (int64), input_ids (list<int32>)
    built: bool  # tokenised by this call (False: read back from path)
    seconds: float

    @property
    def input_ids(self) -> pa.ChunkedArray:
        return self.table.column("input_ids")

    def lengths(self) -> np.ndarray:
        """Tokens per row."""
        return pc.list_value_length(self.input_ids).to_numpy(zero_copy_only=False)


def tokenizer_fingerprint(name_or_path: str) -> str:
    """sha256 over a local tokenizer folder's files (names + bytes); ``name:<id>`` for a hub id
    or a folder without tokenizer files."""
    folder = Path(resolve_model_path(name_or_path))
    files = sorted(p for p in folder.iterdir() if p.is_file() and _TOKENIZER_FILE.match(p.name)) \
        if folder.is_dir() else []
    if not files:
        return f"name:{name_or_path}"
    return "sha256:" + files_sha256(folder, files)


def files_sha256(root: Path, files: list[Path]) -> str:
    """sha256 over ``files`` (paths relative to ``root`` + bytes, in the given order)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(fingerprint: str, max_length: int, prompts: dict[str, str | None], texts: list[str]) -> str:
    """A short hash of what decides the token ids."""
    text_hash = hashlib.sha256()
    for text in texts:
        text_hash.update(text.encode("utf-8") + b"\0")  # \0: "ab","c" differs from "a","bc"
    spec = {"tokenizer": fingerprint, "max_length": max_length, "prompts": prompts,
            "texts": len(texts), "text_sha256": text_hash.hexdigest()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def tokenize_texts(tokenizer, texts: list[str], max_length: int, chunk: int = 2048) -> pa.Array:
    """The tokenizer's own ids, truncated at ``max_length``, unpadded, as list<int32>."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):  # bounded memory for big corpora
        enc = tokenizer(texts[start : start + chunk], truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=False)
        ids.extend(enc["input_ids"])
    return pa.array(ids, type=IDS_TYPE)


def _read(path: Path, rows: int) -> pa.Table | None:
    """The cached table, or None when it is missing or not what this key must hold."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        if path.exists():
            logger.warning("token cache %s unreadable (%s); rebuilding it", path, err)
        return None
    ok = (table.num_rows == rows and table.schema.names == ["i", "input_ids"]
          and table.schema.field("input_ids").type == IDS_TYPE
          and np.array_equal(table.column("i").to_numpy(), np.arange(rows)))
    if not ok:
        logger.warning("token cache %s does not hold %d rows of (i, input_ids); rebuilding it", path, rows)
    return table.combine_chunks() if ok else None


def _write(path: Path, table: pa.Table) -> None:
    """Write aside, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for other in path.parent.glob("tokens-*.parquet"):  # keys no longer in use
        if other != path:
            other.unlink(missing_ok=True)


def load_or_build(cache_dir: Path, tokenizer, fingerprint: str, texts: list[str], max_length: int,
                  prompts: dict[str, str | None]) -> TokenCache:
    """The token ids of ``texts`` (prompts already applied), from ``cache_dir`` when the key matches."""
    started = time.perf_counter()
    path = Path(cache_dir) / f"tokens-{cache_key(fingerprint, max_length, prompts, texts)}.parquet"
    table = _read(path, len(texts))
    if table is not None:
        return TokenCache(path, table, built=False, seconds=time.perf_counter() - started)
    ids = tokenize_texts(tokenizer, texts, max_length)
    table = pa.table({"i": pa.array(np.arange(len(texts), dtype=np.int64)), "input_ids": ids})
    _write(path, table)
    return TokenCache(path, table, built=True, seconds=time.perf_counter() - started)


def mining_tokens(job: JobConfig, task: MiningTask, neg_dir: Path) -> TokenCache:
    """The job's corpus then training queries, with the mining prompts, as cached token ids."""
    m = job.mining
    max_length = m.max_length or job.model.max_length
    texts = apply_prompt(task.doc_texts, m.doc_prompt) + apply_prompt(task.query_texts, m.query_prompt)
    cache = load_or_build(Path(neg_dir) / CACHE_DIR, load_tokenizer(job.model),
                          tokenizer_fingerprint(job.model.name_or_path), texts, max_length,
                          {"doc": m.doc_prompt, "query": m.query_prompt})
    verb = "tokenised" if cache.built else "reused"
    print(f"[angle-ray] refresh: token cache {verb} ({len(texts)} texts, max_length {max_length}, "
          f"{cache.seconds:.1f} s) {cache.path}", flush=True)
    return cache
