"""Corpus files as Ray Data datasets: read lazily, validate in the stream, tokenise per epoch.

    rows  = normalised_corpus(ds_cfg, fmt)           # read_corpus (one task per file) + normalise
    check = validate_corpus(ds_cfg, fmt, rows)       # a pass on the driver: counts, errors
    train = tokenized_epochs(rows, ds_cfg, model_cfg, fmt, epochs=3, seed=42)

Nothing here collects the corpus on the driver: rows flow through Ray tasks in blocks, and the
driver only sees counts (a small local corpus is checked block by block in the driver itself).
Each row keeps its source ("file:line") so a bad row raised inside a Ray task still names the
file, the line and the field in the error the user sees.

Training rows leave the stream as token ids (Ray Data cannot carry strings to torch): one
variable-length int32 array per text role (`text1_ids`, `query_ids`, `negative_0_ids`, ...;
the roles and column names come from `angle_ray.data.roles`), a 64-bit content hash per text
(`text1_hash`, ...) so duplicates in a global batch are never used as negatives, and `label`
for Format A. Batching and padding happen in the worker (`angle_ray.data.collate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from angle_ray.config import DatasetConfig, ModelConfig
from angle_ray.data.errors import DataError
from angle_ray.data.formats import BadRowReport, RowNormaliser, sample_record
from angle_ray.data.readers import iter_rows, list_files
from angle_ray.data.roles import LABEL, hash_column, ids_column, ragged, record_texts, roles

logger = logging.getLogger(__name__)

BLOCK_ROWS = 1024
# CPUs Ray reserves per read / normalise / tokenise task. Below one, so the data tasks still
# fit beside training workers that hold most of a small node's CPUs (a stream whose tasks
# cannot be scheduled stalls training without an error).
DATA_TASK_CPUS = 0.25
# Corpora up to this size on local disk are checked in the driver process, block by block, by
# the same reader and normaliser the stream's tasks run: milliseconds instead of a Ray Data pass
# (~10 s of executor and worker-process start on 2 cores). Larger ones get the Ray Data pass.
IN_PROCESS_CHECK_BYTES = 32 * 2**20


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _error_json(err: DataError) -> str:
    return json.dumps([err.file, err.row, err.field, err.reason, err.unit])


def _read_file_blocks(path: str):
    """Read task body: blocks of (source, raw JSON row, read error) for one file."""
    sources: list[str] = []
    raws: list[str] = []
    errors: list[str] = []

    def flush():
        table = pa.table({"_source": sources[:], "_raw": raws[:], "_error": errors[:]})
        sources.clear(), raws.clear(), errors.clear()
        return table

    def on_bad_row(err: DataError):
        sources.append(f"{err.file}:{err.row}")
        raws.append("")
        errors.append(_error_json(err))

    for row_no, row in iter_rows(path, on_bad_row=on_bad_row):
        sources.append(f"{path}:{row_no}")
        raws.append(json.dumps(row, default=_jsonable))
        errors.append("")
        if len(sources) >= BLOCK_ROWS:
            yield flush()
    if sources:
        yield flush()


def read_corpus(ds_cfg: DatasetConfig):
    """A lazy Ray Dataset of raw rows: columns `_source`, `_raw` (JSON), `_error`."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    files = list_files(ds_cfg.path)

    class CorpusFiles(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(lambda p=p: _read_file_blocks(p),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                       input_files=(p,)),
                         per_task_row_limit=per_task_row_limit)
                for p in files
            ]

    return ray.data.read_datasource(CorpusFiles(), num_cpus=DATA_TASK_CPUS)


def _split_source(source: str) -> tuple[str, int]:
    file, _, row = source.rpartition(":")
    return file, int(row) if row.lstrip("-").isdigit() else row


def normalise_batch(batch: dict, ds_cfg: DatasetConfig, fmt: str) -> dict:
    """Validate and normalise raw rows; a bad row is marked (`_bad`, the DataError's fields).

    Marking instead of raising keeps the typed error: Ray turns an exception raised inside a
    task into a string traceback. The driver's validation pass raises it (policy 'error') or
    counts it (policy 'skip'); the tokeniser never trains on a marked row.
    """
    normalise = RowNormaliser(ds_cfg.model_copy(update={"format": fmt}))
    records, bad = [], []
    for source, raw, read_error in zip(batch["_source"], batch["_raw"], batch["_error"]):
        try:
            if read_error:
                raise DataError(*json.loads(read_error))
            file, row_no = _split_source(source)
            records.append(json.dumps(normalise(json.loads(raw), file, row_no)))
            bad.append("")
        except DataError as err:
            records.append("")
            bad.append(_error_json(err))
    return {"_source": batch["_source"], "_record": np.array(records, dtype=object),
            "_bad": np.array(bad, dtype=object)}


def normalised_corpus(ds_cfg: DatasetConfig, fmt: str):
    return read_corpus(ds_cfg).map_batches(
        normalise_batch, fn_kwargs={"ds_cfg": ds_cfg, "fmt": fmt}, batch_format="numpy",
        batch_size=BLOCK_ROWS, num_cpus=DATA_TASK_CPUS)


@dataclass
class CorpusCheck:
    """What the validation pass saw: usable rows, and the skipped ones (policy 'skip')."""

    path: str
    rows: int = 0
    skipped: BadRowReport = field(default_factory=BadRowReport)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows"
        if self.skipped.count:
            text += "\n" + self.skipped.summary(self.path)
        return text


def _local_bytes(files: list[str]) -> int:
    """Bytes on disk of the corpus files (a datasets folder counts every file under it)."""
    paths = [c for f in map(Path, files) for c in (f.rglob("*") if f.is_dir() else [f])]
    return sum(p.stat().st_size for p in paths if p.is_file())


def _bad_marks(ds_cfg: DatasetConfig, fmt: str, normalised, in_process: bool | None):
    """Each row's `_bad` mark ("" for a good row), in file order."""
    files = list_files(ds_cfg.path)
    if in_process is None:
        in_process = _local_bytes(files) <= IN_PROCESS_CHECK_BYTES
    if in_process:
        for path in files:
            for table in _read_file_blocks(path):
                yield from normalise_batch(table.to_pydict(), ds_cfg, fmt)["_bad"]
        return
    for batch in normalised.select_columns(["_bad"]).iter_batches(batch_format="numpy",
                                                                  batch_size=4096):
        yield from batch["_bad"]


def validate_corpus(ds_cfg: DatasetConfig, fmt: str, normalised,
                    in_process: bool | None = None) -> CorpusCheck:
    """One pass over the normalised rows: counts them and collects skip reports.

    With the default policy the first bad row raises its DataError here, on the driver, before
    any training worker starts. A small local corpus is read in this process
    (IN_PROCESS_CHECK_BYTES), a larger one by a Ray Data pass over `normalised`;
    `in_process` forces one way.
    """
    check = CorpusCheck(path=ds_cfg.path)
    for msg in _bad_marks(ds_cfg, fmt, normalised, in_process):
        if msg and ds_cfg.on_bad_rows == "error":
            raise DataError(*json.loads(msg))
        if msg:
            check.skipped.add(DataError(*json.loads(msg)))
        else:
            check.rows += 1
    if check.skipped.count:
        logger.warning(check.skipped.summary(ds_cfg.path))
    if check.rows == 0:
        raise DataError(ds_cfg.path, None, None, "no usable rows")
    return check


def text_hash(text: str) -> int:
    """Stable signed 64-bit content hash (same on every worker and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little",
                          signed=True)


@lru_cache(maxsize=4)
def _tokenizer(model_cfg_json: str):
    try:
        from angle_ray.models.backbone import load_tokenizer
    except (AttributeError, ImportError) as err:
        if "partially initialized module" not in str(err):
            raise
        # A cancelled task (e.g. when a training worker died and its stream was torn down)
        # can interrupt this process's first `import torch`, leaving a half-built module that
        # no later import repairs. Exit the process so Ray retries the task in a fresh one.
        logger.error("half-initialised import in this Ray worker (%s); restarting it", err)
        os._exit(1)
    return load_tokenizer(ModelConfig.model_validate_json(model_cfg_json))


def tokenize_batch(batch: dict, model_cfg_json: str, fmt: str, num_negatives: int, seed: int,
                   epoch: int, max_length: int, on_bad_rows: str = "error") -> dict:
    """Sample list fields for this epoch, then tokenise every role (no padding)."""
    tok = _tokenizer(model_cfg_json)
    names = roles(fmt, num_negatives)
    texts: dict[str, list[str]] = {r: [] for r in names}
    labels: list[float] = []
    for source, rec_json, bad in zip(batch["_source"], batch["_record"], batch["_bad"]):
        if bad and on_bad_rows == "error":
            raise DataError(*json.loads(bad))
        if bad:  # counted and reported by the driver's validation pass
            continue
        rec = sample_record(json.loads(rec_json), seed, epoch, source, num_negatives)
        for role, text in zip(names, record_texts(rec, fmt, num_negatives)):
            texts[role].append(text)
        if fmt == "A":
            labels.append(float(rec[LABEL]))
    out: dict[str, np.ndarray] = {}
    for role, items in texts.items():
        enc = tok(items, truncation=True, max_length=max_length, padding=False,
                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        out[ids_column(role)] = ragged(enc)
        out[hash_column(role)] = np.array([text_hash(t) for t in items], dtype=np.int64)
    if fmt == "A":
        out[LABEL] = np.array(labels, dtype=np.float32)
    return out


def tokenized_epochs(normalised, ds_cfg: DatasetConfig, model_cfg: ModelConfig, fmt: str,
                     epochs: int, seed: int):
    """`epochs` passes over the corpus, each with its own block order and list-field sampling,
    chained into one stream so a worker iterates it once for the whole run."""
    passes = []
    for epoch in range(epochs):
        passes.append(
            normalised.randomize_block_order(seed=seed + epoch).map_batches(
                tokenize_batch, batch_format="numpy", batch_size=BLOCK_ROWS, num_cpus=DATA_TASK_CPUS,
                fn_kwargs={"model_cfg_json": model_cfg.model_dump_json(), "fmt": fmt,
                           "num_negatives": ds_cfg.num_negatives, "seed": seed, "epoch": epoch,
                           "max_length": model_cfg.max_length,
                           "on_bad_rows": ds_cfg.on_bad_rows}))
    return passes[0] if len(passes) == 1 else passes[0].union(*passes[1:])
