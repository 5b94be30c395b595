"""Peak memory of angle-ray's Ray Data training stream: a 10k-row corpus against a 200k-row one.

    source .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/stream_memory.py                           # 10k vs 200k rows, a few minutes
    python bench/stream_memory.py --small 2000 --large 20000   # smoke run

Both corpora are real STS-B train rows (Format A, labels 0-5) repeated until the size is
reached and written as JSONL to a temp folder. Each size runs in a fresh Python process with its
own embedded Ray, through the same code a training job uses:

  driver   : `angle_ray.train.driver.plan_streams` on jobs/configs/quickstart.yaml with the
             corpus as its data (normalised_corpus + validate_corpus, the streaming validation
             pass on the driver, then tokenized_epochs for one epoch);
  consumer : one Ray actor (1 CPU, like a Ray Train worker) gets `streaming_split(1)` of the
             tokenised dataset and iterates it exactly as a worker's `Streams` does
             (iter_batches of batch_size * group_by_length rows, prefetch 2, local shuffle
             buffer, `length_grouped_batches`, `pad`) until the corpus is exhausted.

Measured (sampled every `--sample-every` s; RSS peaks also from getrusage):
  driver RSS     peak RSS of the driver process (the number the design says must not grow
                 with the corpus: the driver only ever sees counts);
  consumer RSS   peak RSS of the consuming actor (what a training worker pays for its data);
  Ray procs RSS  peak of the summed RSS of every Ray process this run started (raylet, GCS,
                 Ray Data task workers, the actor...); shared pages, the object store's
                 included, are counted once per process that maps them, so this over-counts;
  object store   peak Plasma bytes in use (Ray's own store stats; private API, 'n/a' if absent),
                 overall and split by phase (the driver's validation pass, then the training
                 stream), and the bytes spilled to disk.
Also timed: the driver's validation pass, the consumer's wait for its first training batch, and
the whole consuming pass.

The ratio line divides the large corpus by the small one (target for the driver: <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = "/work/shared/data/stsb/train.jsonl"
MiB = 1024 * 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=DEFAULT_SOURCE, help="real Format A rows to repeat")
    p.add_argument("--small", type=int, default=10_000, help="rows of the small corpus")
    p.add_argument("--large", type=int, default=200_000, help="rows of the large corpus")
    p.add_argument("--sample-every", type=float, default=0.5, help="seconds between samples")
    p.add_argument("--config", default=str(REPO / "jobs" / "configs" / "quickstart.yaml"),
                   help="job config whose model/train settings shape the stream")
    p.add_argument("--files", type=int, default=1,
                   help="split each corpus into this many JSONL files (angle-ray reads one file "
                        "per Ray Data read task)")
    p.add_argument("--store-limit-mib", type=float, default=None,
                   help="cap Ray Data's object store budget (DataContext resource_limits) to see "
                        "which stages stream within a budget and which must hold the corpus")
    p.add_argument("--keep", action="store_true", help="keep the temp folder with the corpora")
    # internal: one measurement in a fresh process
    p.add_argument("--child", metavar="CORPUS", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_corpus(source: str, rows: int, dst: Path, files: int = 1) -> Path:
    """`rows` lines of `source`, repeated from the top as often as needed, as one JSONL file
    (`dst`.jsonl) or, with `files` > 1, a folder `dst` of that many JSONL parts."""
    lines = [ln if ln.endswith("\n") else ln + "\n"
             for ln in Path(source).read_text(encoding="utf-8").splitlines(True) if ln.strip()]
    if not lines:
        raise SystemExit(f"{source} has no rows")
    corpus = [lines[i % len(lines)] for i in range(rows)]
    if files <= 1:
        out = dst.with_suffix(".jsonl")
        out.write_text("".join(corpus), encoding="utf-8")
        return out
    dst.mkdir(parents=True, exist_ok=True)
    per = -(-rows // files)
    for k in range(files):
        (dst / f"part-{k:04d}.jsonl").write_text("".join(corpus[k * per:(k + 1) * per]),
                                                 encoding="utf-8")
    return dst


# ---------------------------------------------------------------- sampling

def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Sampler:
    """Background thread: peak RSS of this process, of its descendants, and object store use."""

    def __init__(self, every: float, ray_procs: bool = False, store: bool = False):
        import psutil

        self.every = every
        self.me = psutil.Process()
        self.ray_procs = ray_procs
        self.store = store
        self.peak = {"rss": 0, "ray_procs_rss": 0, "max_ray_proc_rss": 0, "store_used": None,
                     "spilled": None}
        self._state = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        return dict(self.peak)

    def _run(self):
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self):
        import psutil

        pk = self.peak
        pk["rss"] = max(pk["rss"], self.me.memory_info().rss)
        if self.ray_procs:
            total, biggest = 0, 0
            for child in self.me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                biggest = max(biggest, rss)
            pk["ray_procs_rss"] = max(pk["ray_procs_rss"], total)
            pk["max_ray_proc_rss"] = max(pk["max_ray_proc_rss"], biggest)
        if self.store:
            stats = self._store_stats()
            if stats is not None:
                pk["store_used"] = max(pk["store_used"] or 0, stats.object_store_bytes_used)
                pk["spilled"] = max(pk["spilled"] or 0, stats.spilled_bytes_total)

    def _store_stats(self):
        try:
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            if self._state is None:
                import ray

                self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
            return get_memory_info_reply(self._state, timeout_seconds=10).store_stats
        except Exception:  # noqa: BLE001 - private API: report n/a, do not fail the bench
            self.store = False
            return None


# ---------------------------------------------------------------- one measurement (child)

def consume_actor_class():
    import ray

    @ray.remote(num_cpus=1)
    class Consumer:
        """Iterates a stream split the way a Ray Train worker's `Streams` does."""

        def consume(self, split, train, stream, pad_id: int, left_pad: bool,
                    every: float) -> dict:
            """`train`: the job's TrainConfig; `stream`: the driver's StreamPlan."""
            from angle_ray.data.collate import length_grouped_batches, pad

            sampler = Sampler(every).start()
            start_rss = sampler.me.memory_info().rss
            t0 = time.perf_counter()
            buffer = train.shuffle_buffer or None
            batches = split.iter_batches(batch_size=train.batch_size * train.group_by_length,
                                         batch_format="numpy", prefetch_batches=2,
                                         local_shuffle_buffer_size=buffer,
                                         local_shuffle_seed=42 if buffer else None)
            rows = n_batches = 0
            first_batch_s = None
            for tokens in length_grouped_batches(batches, stream.fmt, stream.num_negatives,
                                                 train.batch_size, 42,
                                                 group=train.group_by_length > 1):
                rows += pad(tokens, pad_id, left_pad).size
                n_batches += 1
                if first_batch_s is None:
                    first_batch_s = time.perf_counter() - t0
            peak = sampler.stop()
            return {"rows": rows, "batches": n_batches, "seconds": time.perf_counter() - t0,
                    "first_batch_s": first_batch_s,
                    "start_rss": start_rss, "peak_rss": peak["rss"]}

    return Consumer


def measure(corpus: str, args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sampler = Sampler(args.sample_every).start()
    import ray
    import ray.data

    from angle_ray.config import load_config
    from angle_ray.models.backbone import load_tokenizer
    from angle_ray.train import driver

    cfg = load_config(args.config, [f"data.0.path={corpus}", "eval.dev=null", "train.epochs=1",
                                    "train.max_steps=null", "train.num_workers=1"])
    cfg = driver.with_expanded_paths(cfg)
    driver.init_ray()
    ctx = ray.data.DataContext.get_current()  # as run_training sets it
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    if args.store_limit_mib:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=args.store_limit_mib * MiB)
    sampler.ray_procs = sampler.store = True
    after_init_rss = sampler.me.memory_info().rss

    t0 = time.perf_counter()
    datasets, streams, _ = driver.plan_streams(cfg)
    validate_s = time.perf_counter() - t0
    sampler.sample()
    store_validate = sampler.peak["store_used"]
    sampler.peak["store_used"] = None  # from here on: the training stream
    tok = load_tokenizer(cfg.model)
    split = datasets["train_0"].streaming_split(1, equal=True)[0]
    consumer = consume_actor_class().remote()
    t1 = time.perf_counter()
    got = ray.get(consumer.consume.remote(split, cfg.train, streams[0], tok.pad_token_id,
                                          tok.padding_side == "left", args.sample_every))
    consume_s = time.perf_counter() - t1
    peak = sampler.stop()
    ray.shutdown()
    return {
        "corpus_rows": streams[0].rows,
        "consumed_rows": got["rows"],
        "driver_peak_rss": max(peak["rss"], ru_maxrss_bytes()),
        "driver_rss_after_ray_init": after_init_rss,
        "consumer_peak_rss": got["peak_rss"],
        "consumer_start_rss": got["start_rss"],
        "ray_procs_peak_rss": peak["ray_procs_rss"],
        "max_ray_proc_rss": peak["max_ray_proc_rss"],
        "object_store_peak": max(peak["store_used"] or 0, store_validate or 0)
        if peak["store_used"] is not None or store_validate is not None else None,
        "object_store_peak_validate": store_validate,
        "object_store_peak_stream": peak["store_used"],
        "spilled": peak["spilled"],
        "validate_s": validate_s,
        "consume_s": consume_s,
        "first_batch_s": got["first_batch_s"],
    }


# ---------------------------------------------------------------- parent: both sizes, table

def run_child(corpus: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(corpus),
           "--sample-every", str(args.sample_every), "--config", args.config]
    if args.store_limit_mib:
        cmd += ["--store-limit-mib", str(args.store_limit_mib)]
    print(f"[bench] measuring {corpus.name} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        sys.exit(f"measurement of {corpus} failed (exit {proc.returncode})")
    return json.loads(lines[-1])


def _mib(v) -> str:
    return "n/a" if v is None else f"{v / MiB:.0f}"


def _ratio(a, b) -> str:
    return "n/a" if not a or not b else f"{b / a:.2f}x"


ROWS = [
    ("driver peak RSS (MiB)", "driver_peak_rss"),
    ("consumer peak RSS (MiB)", "consumer_peak_rss"),
    ("max Ray process RSS (MiB)", "max_ray_proc_rss"),
    ("all Ray procs RSS (MiB)*", "ray_procs_peak_rss"),
    ("object store peak (MiB)", "object_store_peak"),
    ("  during validation pass", "object_store_peak_validate"),
    ("  during training stream", "object_store_peak_stream"),
    ("spilled (MiB)", "spilled"),
]


def print_table(small: dict, large: dict) -> None:
    a, b = f"{small['corpus_rows']} rows", f"{large['corpus_rows']} rows"
    head = f"{'':<28} {a:>12} {b:>12} {'ratio':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for label, key in ROWS:
        print(f"{label:<28} {_mib(small[key]):>12} {_mib(large[key]):>12} "
              f"{_ratio(small[key], large[key]):>8}")
    for label, key in [("validation pass (s)", "validate_s"),
                       ("first training batch (s)", "first_batch_s"),
                       ("consume pass (s)", "consume_s")]:
        print(f"{label:<28} {small[key]:>12.1f} {large[key]:>12.1f} "
              f"{_ratio(small[key], large[key]):>8}")
    print("* summed RSS over processes; shared pages (object store) counted once per process")
    r = large["driver_peak_rss"] / small["driver_peak_rss"]
    print(f"\ndriver peak RSS ratio {b} / {a}: {r:.2f}x (target <= 1.3) -> "
          f"{'ok' if r <= 1.3 else 'OVER TARGET'}")
    c = large["consumer_peak_rss"] / small["consumer_peak_rss"]
    print(f"consumer (worker) peak RSS ratio: {c:.2f}x; object store peak ratio: "
          f"{_ratio(small['object_store_peak'], large['object_store_peak'])}")


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args)), flush=True)
        return None
    tmp = Path(tempfile.mkdtemp(prefix="angle-ray-streammem-"))
    try:
        small_path = write_corpus(args.source, args.small, tmp / f"corpus_{args.small}", args.files)
        large_path = write_corpus(args.source, args.large, tmp / f"corpus_{args.large}", args.files)
        print(f"[bench] corpora of {args.small} and {args.large} rows (STS-B train repeated, "
              f"{args.files} file(s) each) in {tmp}", flush=True)
        small = run_child(small_path, args)
        large = run_child(large_path, args)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    for res in (small, large):
        if res["consumed_rows"] < res["corpus_rows"] - 1024:
            print(f"warning: consumed {res['consumed_rows']} of {res['corpus_rows']} rows")
    print_table(small, large)
    print("\n" + json.dumps({"small": small, "large": large}))
    return small, large


if __name__ == "__main__":
    main()
