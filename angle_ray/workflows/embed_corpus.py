"""`angle-ray embed`: a corpus -> Parquet shards of (row, id, embedding), on a Ray Data actor pool.

    spec = EmbedSpec(model="runs/quickstart/model", input="/data/scifact", output="/out/scifact.parquet")
    report = embed_corpus(spec)      # /out/scifact.parquet/part-00000.parquet ... (+ _embed.json)

Input: a JSONL / CSV / TSV / Parquet file, a folder of them, a datasets folder, or a BEIR folder
(its corpus.jsonl(.gz): text = "title text", id = `_id`). Ids come from `id_field`, else the
global 0-based row number. A first streaming pass on the driver checks every row (the text field
present, a non-empty string; the id present) and counts rows; a bad row stops the run before any
actor starts, with its file, line and field.

Sharding is by row ranges: shard k holds rows [k*shard_rows, (k+1)*shard_rows) of one input file
(a file's last shard may be shorter), so a re-run cuts the input the same way. Each shard is
written by the driver as soon as all its rows are back from the pool, to a temporary name and
then renamed, so a `part-NNNNN.parquet` that exists is complete; a re-run skips those and encodes
only the rest. `_embed.json` records what the folder holds (model, input files with sizes and
times, fields, prompt, shards); a re-run with another model or changed input files is refused
rather than mixed in. The folder reads as one Parquet dataset (`pd.read_parquet(OUT)`): the
files starting with `_` or `.` are ignored by Parquet readers.

Encoding reuses mining's pool (`encode_dataset`: `TextEncoder` actors under Ray Data's
`ActorPoolStrategy(min_actors, max_actors)`); embeddings are L2-normalised float32. Each text
gets `prompt`, else the model's saved prompt `prompt_name`, else the model's default prompt
(sentence-transformers' `default_prompt_name`), else none. Only one
file's read task streams rows at a time per file, the driver holds at most the shards still in
flight, and every path is absolute, so the same call runs on a cluster (`ray job submit`,
GPU actors with `gpus_per_actor`) given a filesystem all nodes share. With `index`, a FAISS
index over all rows is written beside the shards (`_index.faiss`, FAISS id = row number) with
its id map (`_index_ids.parquet`: row, id).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from angle_ray.config import MiningConfig, PoolConfig
from angle_ray.data.errors import DataError
from angle_ray.data.readers import iter_rows, list_files, row_unit
from angle_ray.errors import UserError
from angle_ray.mining.encoder_pool import encode_dataset
from angle_ray.mining.index import build_index
from angle_ray.models.loader import ModelLoadError, locate
from angle_ray.train.driver import init_ray

MANIFEST = "_embed.json"
INDEX_FILE = "_index.faiss"
INDEX_IDS = "_index_ids.parquet"
BLOCK_ROWS = 1024  # rows per block out of a read task
# a read task reserves no CPU: one that needs even 0.25 waits forever behind a pool holding all
# of them (2 actors x 1 CPU on a 2-CPU node), and the pool waits for its rows; reading is light
READ_TASK_CPUS = 0
BEIR_CORPUS = ("corpus.jsonl", "corpus.jsonl.gz")


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str | None = None
    title: str | None = None  # BEIR: prepended to the text when not empty


@dataclass(frozen=True)
class EmbedSpec:
    model: str
    input: str
    output: str
    text_field: str = "text"
    id_field: str | None = None
    index: str | None = None  # flat | ivf | hnsw
    prompt: str | None = None  # a template with a {text} slot
    prompt_name: str | None = None  # one of the model's saved prompts
    max_length: int | None = None
    shard_rows: int = 10_000
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(cpus_per_actor=1.0))


@dataclass(frozen=True)
class Shard:
    number: int
    file: str
    start: int  # first data row of the file in this shard (0-based, counting rows not lines)
    stop: int
    first_row: int  # global row number of `start`

    @property
    def name(self) -> str:
        return f"part-{self.number:05d}.parquet"

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class EmbedReport:
    output: str
    rows: int
    shards: int
    skipped_shards: int  # complete from an earlier run
    encoded_rows: int
    seconds: float
    index: str | None = None

    @property
    def texts_per_s(self) -> float:
        return self.encoded_rows / max(self.seconds, 1e-9)


# ---------------------------------------------------------------- input: files, rows, shards

def input_files(path: str) -> tuple[list[str], Fields | None]:
    """The files to read (absolute) and, for a BEIR corpus, its fields (`_id`, title + text)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise UserError(f"--input {path}: no such file or folder ({p})")
    beir = [p / n for n in BEIR_CORPUS if (p / n).is_file()] if p.is_dir() else []
    if beir or p.name in BEIR_CORPUS:
        corpus = str(beir[0] if beir else p)
        first = next((row for _, row in iter_rows(corpus)), {})
        id_field = "_id" if "_id" in first else "id"  # BEIR files use either
        return [corpus], Fields(text="text", id=id_field, title="title")
    return list_files(p), None


def row_text(row: dict, file: str, row_no: int, fields: Fields) -> tuple[str | None, str]:
    """(id or None, text) of one row; a DataError naming file, line and field when unusable."""
    unit = row_unit(file)
    text = row.get(fields.text)
    if text is None:
        raise DataError(file, row_no, fields.text, f"missing (the row has {sorted(row)})", unit)
    if not isinstance(text, str):
        raise DataError(file, row_no, fields.text, f"expected a string, got {type(text).__name__}", unit)
    title = row.get(fields.title) if fields.title else None
    if isinstance(title, str) and title.strip():
        text = f"{title.strip()} {text}"
    if not text.strip():
        raise DataError(file, row_no, fields.text, "empty text", unit)
    if fields.id is None:
        return None, text
    value = row.get(fields.id)
    if value is None or isinstance(value, (bool, float, list, dict)) or not str(value).strip():
        raise DataError(file, row_no, fields.id, f"missing or invalid id {value!r}", unit)
    return str(value), text


def plan_shards(files: list[str], fields: Fields, shard_rows: int) -> list[Shard]:
    """Check every row (streaming) and cut each file into shards of `shard_rows` rows."""
    shards: list[Shard] = []
    first_row = 0
    for file in files:
        count = 0
        for row_no, row in iter_rows(file):
            row_text(row, file, row_no, fields)
            count += 1
        if count == 0:
            raise DataError(file, None, None, "no rows")
        for start in range(0, count, shard_rows):
            stop = min(count, start + shard_rows)
            shards.append(Shard(len(shards), file, start, stop, first_row + start))
        first_row += count
    return shards


def _shard_table(rows: list[int], ids: list[str], texts: list[str], shard: int) -> pa.Table:
    return pa.table({"shard": pa.array([shard] * len(rows), pa.int32()), "row": pa.array(rows, pa.int64()),
                     "id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})


def read_pending(file: str, shards: list[Shard], fields: Fields):
    """Read task body: blocks of (shard, row, id, text) for the pending shards of one file."""
    todo = sorted(shards, key=lambda s: s.start)
    rows, ids, texts, k, current = [], [], [], 0, todo[0]
    for data_row, (row_no, row) in enumerate(iter_rows(file)):
        while current is not None and data_row >= current.stop:
            if rows:
                yield _shard_table(rows, ids, texts, current.number)
                rows, ids, texts = [], [], []
            k += 1
            current = todo[k] if k < len(todo) else None
        if current is None:
            return
        if data_row < current.start:
            continue
        doc_id, text = row_text(row, file, row_no, fields)
        global_row = current.first_row + data_row - current.start
        rows.append(global_row)
        ids.append(doc_id if doc_id is not None else str(global_row))
        texts.append(text)
        if len(rows) >= BLOCK_ROWS:
            yield _shard_table(rows, ids, texts, current.number)
            rows, ids, texts = [], [], []
    if rows and current is not None:
        yield _shard_table(rows, ids, texts, current.number)


class PendingShards(Datasource):
    """One read task per input file, streaming only the rows of its shards still to do."""

    def __init__(self, shards: list[Shard], fields: Fields):
        self.by_file: dict[str, list[Shard]] = defaultdict(list)
        for shard in shards:
            self.by_file[shard.file].append(shard)
        self.fields = fields

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        def task(file, shards):
            return ReadTask(lambda: read_pending(file, shards, self.fields),
                            BlockMetadata(num_rows=sum(s.rows for s in shards), size_bytes=None,
                                          exec_stats=None, input_files=(file,)),
                            per_task_row_limit=per_task_row_limit)
        return [task(file, shards) for file, shards in self.by_file.items()]


# ---------------------------------------------------------------- output: manifest, shards, index

def _file_stamp(file: str) -> dict:
    st = os.stat(file)
    return {"path": file, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def manifest_for(spec: EmbedSpec, files: list[str], fields: Fields) -> dict:
    """What makes a shard's embeddings what they are; a re-run must agree on all of it."""
    return {"model": spec.model, "max_length": spec.max_length, "prompt": spec.prompt,
            "prompt_name": spec.prompt_name,
            "fields": asdict(fields), "shard_rows": spec.shard_rows,
            "inputs": [_file_stamp(f) for f in files]}


def _write_atomic(path: Path, write) -> None:
    """`write(tmp_path)`, then rename over `path`: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def open_output(out: Path, manifest: dict) -> list[Shard] | None:
    """Create `out` or check that it holds this run's shards; the recorded plan when it does."""
    out.mkdir(parents=True, exist_ok=True)
    file = out / MANIFEST
    if not file.is_file():
        if any(out.glob("part-*.parquet")):
            raise UserError(f"--output {out} holds Parquet parts but no {MANIFEST}; use an empty folder")
        return None
    saved = json.loads(file.read_text())
    differs = [key for key in manifest if saved.get("plan", {}).get(key) != manifest[key]]
    if differs:
        raise UserError(f"--output {out} holds embeddings made with other settings or inputs "
                        f"(differs in: {', '.join(differs)}); use a new --output or delete that folder")
    return [Shard(**s) for s in saved["shards"]]


def save_manifest(out: Path, manifest: dict, shards: list[Shard]) -> None:
    body = {"plan": manifest, "rows": sum(s.rows for s in shards), "shards": [asdict(s) for s in shards]}
    _write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(body, indent=2) + "\n"))


def shard_done(out: Path, shard: Shard) -> bool:
    """A part file with all its rows (one that cannot be read, e.g. copied in half, is redone)."""
    path = out / shard.name
    try:
        return path.is_file() and pq.read_metadata(path).num_rows == shard.rows
    except (OSError, pa.ArrowException):
        return False


def write_shard(out: Path, shard: Shard, batches: list[dict]) -> None:
    """One complete shard, rows in input order, written atomically."""
    rows = np.concatenate([b["row"] for b in batches])
    order = np.argsort(rows, kind="stable")
    ids = np.concatenate([b["id"] for b in batches])[order]
    emb = np.concatenate([b["emb"] for b in batches])[order].astype(np.float32)
    if len(rows) != shard.rows or not np.array_equal(rows[order], np.arange(shard.first_row,
                                                                            shard.first_row + shard.rows)):
        raise RuntimeError(f"{shard.name}: the encoder pool returned rows that do not match the shard")
    table = pa.table({"row": pa.array(rows[order], pa.int64()), "id": pa.array(ids.tolist(), pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])})
    _write_atomic(out / shard.name, lambda tmp: pq.write_table(table, tmp))


def collect_shards(encoded, out: Path, pending: list[Shard], total: int, done_rows: int) -> int:
    """Consume the pool's output, writing each shard when its last row arrives; rows encoded."""
    by_number = {s.number: s for s in pending}
    parts: dict[int, list[dict]] = defaultdict(list)
    got: dict[int, int] = defaultdict(int)
    written, start = 0, time.perf_counter()
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        for number in np.unique(batch["shard"]):
            mask = batch["shard"] == number
            parts[number].append({k: batch[k][mask] for k in ("row", "id", "emb")})
            got[number] += int(mask.sum())
            shard = by_number[int(number)]
            if got[number] == shard.rows:
                write_shard(out, shard, parts.pop(number))
                written += shard.rows
                rate = written / max(time.perf_counter() - start, 1e-9)
                print(f"[embed] {shard.name}: {shard.rows} rows  ({done_rows + written}/{total} rows, "
                      f"{rate:.1f} texts/s)", flush=True)
    missing = [by_number[n].name for n in by_number if got[n] != by_number[n].rows]
    if missing:  # Ray Data retries lost batches; a gap here would be a silent hole in the output
        raise RuntimeError(f"the encoder pool did not return every row of {', '.join(missing)}")
    return written


def read_embeddings(out: Path, shards: list[Shard]) -> tuple[np.ndarray, list[str]]:
    tables = [pq.read_table(out / s.name, columns=["id", "embedding"]) for s in shards]
    table = pa.concat_tables(tables)
    dim = table.schema.field("embedding").type.list_size
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return emb, table.column("id").to_pylist()


def write_index(out: Path, shards: list[Shard], kind: str) -> str:
    """A CPU FAISS index over every row (FAISS id = row number) and its id map, beside the shards."""
    import faiss  # heavy, only when an index is asked for

    emb, ids = read_embeddings(out, shards)
    cfg = MiningConfig(beir=str(out), index=kind, faiss_gpu=False)  # the index settings of mining
    index = build_index(emb, cfg)
    _write_atomic(out / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    id_map = pa.table({"row": pa.array(np.arange(len(ids)), pa.int64()), "id": pa.array(ids, pa.string())})
    _write_atomic(out / INDEX_IDS, lambda tmp: pq.write_table(id_map, tmp))
    return str(out / INDEX_FILE)


# ---------------------------------------------------------------- the run

def check_spec(spec: EmbedSpec) -> None:
    """What can be checked before reading anything: options and the model's location."""
    if spec.index not in (None, "flat", "ivf", "hnsw"):
        raise UserError(f"--index {spec.index!r} is not one of flat, ivf, hnsw")
    if spec.prompt is not None and spec.prompt_name is not None:
        raise UserError("give --prompt or --prompt-name, not both")
    if spec.prompt is not None and "{text}" not in spec.prompt:
        raise UserError(f"--prompt {spec.prompt!r} has no '{{text}}' slot")
    locate(spec.model)  # a missing model folder stops here, not inside every pool actor


def plan_run(spec: EmbedSpec, out: Path) -> tuple[list[Shard], Fields]:
    files, beir_fields = input_files(spec.input)
    fields = beir_fields or Fields(text=spec.text_field, id=spec.id_field)
    if beir_fields and spec.id_field:
        fields = Fields(text=beir_fields.text, id=spec.id_field, title=beir_fields.title)
    manifest = manifest_for(spec, files, fields)
    shards = open_output(out, manifest) or plan_shards(files, fields, spec.shard_rows)
    save_manifest(out, manifest, shards)
    return shards, fields


def encode_pending(spec: EmbedSpec, out: Path, shards: list[Shard], pending: list[Shard],
                   fields: Fields) -> int:
    """Run the pool over the pending shards; an actor that cannot load the model is a user error."""
    init_ray()
    ds = ray.data.read_datasource(PendingShards(pending, fields), num_cpus=READ_TASK_CPUS)
    # the actors pick the prompt: --prompt, --prompt-name, else the model's default prompt
    encoded = encode_dataset(ds, spec.model, spec.pool, max_length=spec.max_length, prompt=spec.prompt,
                             prompt_name=spec.prompt_name, default_prompt=True)
    total = sum(s.rows for s in shards)
    try:
        return collect_shards(encoded, out, pending, total, total - sum(s.rows for s in pending))
    except ray.exceptions.RayActorError as err:
        cause = str(err).rpartition(f"{ModelLoadError.__name__}: ")[2]
        if cause == str(err):
            raise
        raise ModelLoadError(cause.strip().splitlines()[0]) from None


def embed_corpus(spec: EmbedSpec) -> EmbedReport:
    """Embed `spec.input` into `spec.output` (resuming a partial run); see the module docstring."""
    check_spec(spec)
    out = Path(spec.output).expanduser().resolve()
    start = time.perf_counter()
    shards, fields = plan_run(spec, out)
    pending = [s for s in shards if not shard_done(out, s)]
    total = sum(s.rows for s in shards)
    print(f"[embed] {spec.input}: {total} rows in {len(shards)} shards; {len(shards) - len(pending)} "
          f"already done in {out}", flush=True)
    encoded_rows = encode_pending(spec, out, shards, pending, fields) if pending else 0
    index = None
    if spec.index:  # rebuilt on every run that asks for one: cheap next to encoding
        index = write_index(out, shards, spec.index)
        print(f"[embed] {spec.index} index over {total} rows: {index}", flush=True)
    return EmbedReport(output=str(out), rows=total, shards=len(shards),
                       skipped_shards=len(shards) - len(pending), encoded_rows=encoded_rows,
                       seconds=time.perf_counter() - start, index=index)


# ---------------------------------------------------------------- command line

def add_embed_args(p) -> None:
    """The options of `angle-ray embed` (an argparse parser)."""
    p.add_argument("--model", required=True, help="angle-ray / sentence-transformers / HF model folder or id")
    p.add_argument("--input", required=True,
                   help="JSONL / CSV / TSV / Parquet file, a folder of them, or a BEIR folder (corpus.jsonl)")
    p.add_argument("--output", required=True,
                   help="output folder (e.g. OUT.parquet) of part-NNNNN.parquet shards: row, id, embedding")
    p.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    p.add_argument("--id-field", default=None, help="field holding the id (default: the row number; BEIR: _id)")
    p.add_argument("--index", choices=["flat", "ivf", "hnsw"], default=None,
                   help="also write a FAISS index (_index.faiss) and its id map beside the shards")
    p.add_argument("--prompt", default=None, help="prompt template with a {text} slot, e.g. 'passage: {text}'")
    p.add_argument("--prompt-name", default=None, help="one of the model's saved prompts, e.g. document")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encode call (default 64)")
    p.add_argument("--shard-rows", type=int, default=10_000, help="rows per output shard (default 10000)")
    p.add_argument("--min-actors", type=int, default=1, help="encoder actors to start with (default 1)")
    p.add_argument("--max-actors", type=int, default=2, help="encoder actors at most (default 2)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per encoder actor (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per encoder actor (default 0)")


def spec_from_args(args) -> EmbedSpec:
    try:
        pool = PoolConfig(min_actors=args.min_actors, max_actors=args.max_actors,
                          cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                          batch_size=args.batch_size)
    except ValueError as err:  # pydantic: bounds of the pool options
        raise UserError(f"encoder pool options: {err}") from None
    if args.shard_rows < 1 or (args.max_length is not None and args.max_length < 1):
        raise UserError("--shard-rows and --max-length must be >= 1")
    return EmbedSpec(model=args.model, input=args.input, output=args.output, text_field=args.text_field,
                     id_field=args.id_field, index=args.index, prompt=args.prompt,
                     prompt_name=args.prompt_name, max_length=args.max_length,
                     shard_rows=args.shard_rows, pool=pool)


def run_embed(args) -> int:
    """`angle-ray embed`: user errors propagate as UserError (the CLI prints `error: ...`, exit 2)."""
    spec = spec_from_args(args)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per shard instead
    report = embed_corpus(spec)
    print(f"[embed] done: {report.rows} rows in {report.shards} shards at {report.output} "
          f"({report.encoded_rows} encoded now, {report.skipped_shards} shards kept from before; "
          f"{report.seconds:.1f} s, {report.texts_per_s:.1f} texts/s)", flush=True)
    return 0
