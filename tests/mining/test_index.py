"""FAISS index kinds on real MiniLM embeddings of a SciFact slice, against exact flat search."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from angle_ray.config import MiningConfig
from angle_ray.mining.index import (
    build_index,
    dense_candidates,
    positive_scores,
    resolve_index_kind,
)


def mcfg(**kw) -> MiningConfig:
    return MiningConfig(beir="unused", faiss_gpu=False, **kw)


def test_auto_kind_switches_to_ivf_at_200k_docs():
    assert resolve_index_kind("auto", 5183) == "flat"
    assert resolve_index_kind("auto", 199_999) == "flat"
    assert resolve_index_kind("auto", 200_000) == "ivf"
    assert resolve_index_kind("hnsw", 10) == "hnsw"
    with pytest.raises(ValueError, match="mining.index"):
        resolve_index_kind("lsh", 10)


@pytest.fixture(scope="module")
def flat(slice_embeddings, scifact_slice):
    q, d = slice_embeddings
    return dense_candidates(q, d, scifact_slice.positives, mcfg(index="flat"), top=20)


def test_flat_is_exact_cosine(slice_embeddings, scifact_slice, flat):
    q, d = slice_embeddings
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    sims = qn @ dn.T
    np.testing.assert_allclose(flat.scores, -np.sort(-sims, axis=1)[:, :20], atol=1e-5)
    assert (flat.idx[:, 0] == sims.argmax(axis=1)).mean() > 0.99  # ties aside
    want = [min(sims[qi, p]) for qi, p in enumerate(scifact_slice.positives)]
    np.testing.assert_allclose(flat.pos_scores, want, atol=1e-5)
    assert set(flat.seconds) >= {"index_s", "search_s"}


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_sharded_flat_equals_flat(slice_embeddings, scifact_slice, flat, shards):
    q, d = slice_embeddings
    sharded = dense_candidates(q, d, scifact_slice.positives, mcfg(index="flat", shards=shards), top=20)
    np.testing.assert_allclose(sharded.scores, flat.scores, atol=1e-6)
    # the same documents; ids may swap only between exactly tied scores
    same = sharded.idx == flat.idx
    assert same.all() or np.allclose(sharded.scores[~same], flat.scores[~same], atol=1e-6)
    assert (sharded.idx[:, 0] == flat.idx[:, 0]).all()


@pytest.mark.parametrize(("kind", "shards", "max_miss"), [("ivf", 1, 0.05), ("hnsw", 1, 0.02), ("ivf", 2, 0.05)])
def test_approximate_kinds_agree_on_top1(slice_embeddings, scifact_slice, flat, kind, shards, max_miss):
    q, d = slice_embeddings
    approx = dense_candidates(q, d, scifact_slice.positives, mcfg(index=kind, shards=shards), top=20)
    miss = float((approx.idx[:, 0] != flat.idx[:, 0]).mean())
    print(f"{kind} shards={shards}: top-1 miss rate {miss:.3f} over {len(q)} queries")
    assert miss <= max_miss
    assert (approx.idx >= 0).all()
    assert np.all(np.diff(approx.scores, axis=1) <= 1e-6)  # best first
    np.testing.assert_allclose(approx.pos_scores, flat.pos_scores)  # exact whatever the index


def test_build_index_leaves_the_input_alone_and_counts_docs(slice_embeddings):
    _, d = slice_embeddings
    before = d.copy()
    index = build_index(d, mcfg(index="flat", shards=3))
    assert index.ntotal == len(d)
    np.testing.assert_array_equal(d, before)


def test_fewer_docs_than_top_pads_with_minus_one():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5, 8)).astype(np.float32)
    q = rng.normal(size=(3, 8)).astype(np.float32)
    c = dense_candidates(q, d, [[0], [1], [2, 3]], mcfg(index="flat", shards=2), top=8)
    assert c.idx.shape == (3, 8)
    assert (c.idx[:, :5] >= 0).all() and (c.idx[:, 5:] == -1).all()
    assert np.isneginf(c.scores[:, 5:]).all()
    assert sorted(c.idx[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_positive_scores_takes_the_weakest_positive():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    d = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    assert positive_scores(q, d, [[0, 2]])[0] == pytest.approx(np.sqrt(0.5))
    assert np.isnan(positive_scores(q, d, [[]])[0])


# Its own Ray in a subprocess (the session's Ray has no GPU; ray.init runs once per process),
# with one declared GPU: Ray schedules and assigns it though the machine has none.
GPUS_HELD_SCRIPT = textwrap.dedent("""
    import ray
    from angle_ray.eval.faiss_import import import_faiss
    from angle_ray.mining.index import gpus_held

    def two_gpu_node():  # GPU mock: faiss-gpu on a node with 2 GPUs, which faiss-cpu cannot show
        faiss = import_faiss()
        faiss.get_num_gpus, faiss.GpuMultipleClonerOptions = (lambda: 2), object

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self, faiss_gpu):
            if faiss_gpu:
                two_gpu_node()

        def held(self):
            return gpus_held()

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False)
    first = Probe.options(num_gpus=1).remote(False)
    cpu_build = ray.get(first.held.remote())
    ray.kill(first)  # frees the one GPU for the next
    on_gpu, on_cpu = Probe.options(num_gpus=1).remote(True), Probe.remote(True)
    held = ray.get(on_gpu.held.remote()), ray.get(on_cpu.held.remote())
    two_gpu_node()
    print("HELD", *held, gpus_held(), cpu_build)
""")


@pytest.mark.slow  # starts its own Ray (~15 s on 2 cores)
def test_faiss_uses_only_the_gpus_a_ray_actor_holds():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new Ray, not the session's
    proc = subprocess.run([sys.executable, "-c", GPUS_HELD_SCRIPT], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=120, check=False)
    held = [line for line in proc.stdout.splitlines() if line.startswith("HELD")]
    assert held, proc.stdout + proc.stderr
    # the GPU actor holds 1, the zero-GPU actor none of the node's 2, the driver all FAISS sees,
    # and a GPU actor whose FAISS is the CPU build none
    assert held[0].split()[1:] == ["1", "0", "2", "0"]
