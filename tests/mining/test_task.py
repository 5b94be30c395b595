"""MiningTask on real SciFact: training queries minus the dev holdout, positives from qrels."""

from __future__ import annotations

import pytest

from angle_ray.config import MiningConfig
from angle_ray.data.beir import load_beir, split_qrels_by_query
from angle_ray.mining.task import load_mining_task


@pytest.fixture(scope="module")
def scifact(data_dir):
    return load_beir(data_dir / "scifact", split="train")


def test_mined_queries_are_the_train_side_of_the_dev_split(scifact_task, scifact):
    train, dev = split_qrels_by_query(scifact.qrels, dev_fraction=0.2, seed=0)
    mined = set(scifact_task.query_ids)
    assert mined.isdisjoint(dev)
    assert mined == set(train)
    assert len(mined) == 647 and len(dev) == 162  # 809 judged queries


def test_holdout_seed_and_fraction_follow_the_config(data_dir, scifact):
    cfg = MiningConfig(beir=str(data_dir / "scifact"), holdout_fraction=0.3, holdout_seed=7)
    task = load_mining_task(cfg)
    _, dev = split_qrels_by_query(scifact.qrels, dev_fraction=0.3, seed=7)
    assert set(task.query_ids).isdisjoint(dev)
    assert len(task.query_ids) + len(dev) == 809


def test_no_holdout_keeps_every_judged_query(data_dir):
    task = load_mining_task(MiningConfig(beir="{data_dir}/scifact", holdout_fraction=0))
    assert len(task.query_ids) == 809
    assert len(task.pairs()) == 919
    assert len(task.doc_ids) == 5183


def test_positives_and_texts_match_the_qrels(scifact_task, scifact):
    for qi, qid in enumerate(scifact_task.query_ids):
        assert scifact_task.query_texts[qi] == scifact.queries[qid]
        got = {scifact_task.doc_ids[d] for d in scifact_task.positives[qi]}
        assert got == {d for d, s in scifact.qrels[qid].items() if s > 0}
    assert scifact_task.doc_texts[5] == scifact.corpus[scifact_task.doc_ids[5]]


def test_pairs_one_per_positive_in_stable_order(scifact_task):
    pairs = scifact_task.pairs()
    assert len(pairs) == sum(len(p) for p in scifact_task.positives)
    assert pairs == sorted(pairs, key=lambda p: p[0])  # query order
    assert pairs == scifact_task.pairs()
    assert all(d in scifact_task.positives[q] for q, d in pairs)


def test_prompts_are_not_applied_to_the_task(data_dir):
    cfg = MiningConfig(beir=str(data_dir / "scifact"), query_prompt="query: {text}",
                       doc_prompt="passage: {text}")
    task = load_mining_task(cfg)
    assert not any(t.startswith("query: ") for t in task.query_texts)
    assert not any(t.startswith("passage: ") for t in task.doc_texts)


def test_missing_beir_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-beir"):
        load_mining_task(MiningConfig(beir=str(tmp_path / "no-such-beir")))
