"""QA hard examples: top-k accuracy, hard-row selection, QA file checks, the SciFact builder and
the whole evaluate -> train -> evaluate workflow through `angle-ray qa-hard` on real Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from angle_ray.config import load_config
from angle_ray.data.beir import load_beir, split_qrels_by_query
from angle_ray.data.errors import DataError
from angle_ray.data.qa import QARow, read_qa, write_qa
from angle_ray.models.backbone import ANGLE_RAY_FILE
from angle_ray.workflows.qa_hard import (
    accuracy,
    make_qa_from_beir,
    score_contexts,
    select_hard,
    split_rows,
    training_config,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sentences(data_dir) -> list[str]:
    with open(data_dir / "stsb" / "train.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    return [r["text1"] for r in rows[::10]]  # 20 real, mutually unrelated sentences


@pytest.fixture(scope="module")
def hand_set(sentences) -> list[QARow]:
    """Wrong contexts that are exact copies of the question outrank an unrelated gold, so the
    gold's rank is known: 0, 2, 4 and 5 (and 0 again for the duplicate-gold row)."""
    q = sentences
    return [
        QARow(q[0], [q[10], q[0], q[11]], gold=1),  # gold = the question itself: rank 0
        QARow(q[1], [q[1], q[12], q[1]], gold=1),  # two copies above an unrelated gold: rank 2
        QARow(q[2], [q[2]] * 4 + [q[13]], gold=4),  # rank 4
        QARow(q[3], [q[14]] + [q[3]] * 5, gold=0),  # rank 5
    ]


def test_top_k_accuracy_equals_the_hand_ranking(minilm_small, hand_set):
    scores = score_contexts(minilm_small, hand_set, show_progress=False)
    assert accuracy(hand_set, scores) == {"top1": 25.0, "top3": 50.0, "top5": 75.0}


def test_hard_rows_are_those_with_gold_outside_top_k_and_negatives_are_the_copies_above_it(
        minilm_small, hand_set):
    scores = score_contexts(minilm_small, hand_set, show_progress=False)
    idx, hard = select_hard(hand_set, scores, k=1, max_negatives=3)
    assert idx == [1, 2, 3]
    assert [h["negative"] for h in hard] == [[hand_set[1].question] * 2,
                                             [hand_set[2].question] * 3,
                                             [hand_set[3].question] * 3]
    assert [h["positive"] for h in hard] == [r.contexts[r.gold] for r in hand_set[1:]]
    assert select_hard(hand_set, scores, k=3)[0] == [2, 3]
    assert select_hard(hand_set, scores, k=5)[0] == [3]


def test_negatives_are_the_higher_ranked_wrong_contexts_hardest_first_ties_against_gold():
    rows = [QARow("q0", ["a", "b", "c", "d", "e"], gold=3), QARow("q1", ["x", "y", "z"], gold=0),
            QARow("q2", ["u", "v", "w"], gold=2)]
    scores = [np.array([0.2, 0.9, 0.5, 0.4, 0.7]),  # above the gold (0.4): b 0.9, e 0.7, c 0.5
              np.array([0.8, 0.1, 0.3]),  # gold first: not hard
              np.array([0.1, 0.6, 0.6])]  # v ties with the gold: counted above it
    idx, hard = select_hard(rows, scores, k=1, max_negatives=5)
    assert idx == [0, 2]
    assert hard[0] == {"query": "q0", "positive": "d", "negative": ["b", "e", "c"]}
    assert hard[1]["negative"] == ["v"]
    assert select_hard(rows, scores, k=1, max_negatives=2)[1][0]["negative"] == ["b", "e"]
    assert select_hard(rows, scores, k=2)[0] == [0]  # q2 has its gold second
    assert accuracy(rows, scores, ks=(1, 2, 4)) == {"top1": pytest.approx(100 / 3),
                                                     "top2": pytest.approx(200 / 3), "top4": 100.0}


def test_held_out_split_is_seeded_disjoint_and_sized_by_the_fraction():
    rows = [QARow(f"q{i}", ["a"], 0) for i in range(50)]
    train, held = split_rows(rows, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40
    assert {r.question for r in train}.isdisjoint(r.question for r in held)
    assert split_rows(rows, 0.2, seed=3) == (train, held)
    assert split_rows(rows, 0.2, seed=4)[1] != held
    assert split_rows(rows, 0.0, seed=3) == (rows, [])


# --- QA files -----------------------------------------------------------------------------


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"question": "what?", "contexts": ["one", "two"], "gold": 1}


@pytest.mark.parametrize("bad,field,reason", [
    ({**GOOD, "gold": 2}, "gold", "gold 2 is out of range for 2 contexts"),
    ({**GOOD, "gold": -1}, "gold", "out of range"),
    ({**GOOD, "gold": True}, "gold", "expected an integer"),
    ({**GOOD, "gold": "1"}, "gold", "expected an integer"),
    ({**GOOD, "contexts": []}, "contexts", "empty contexts list"),
    ({**GOOD, "contexts": ["one", "  "]}, "contexts", "item 1 is an empty"),
    ({**GOOD, "contexts": "one"}, "contexts", "expected a list of strings"),
    ({"question": "what?", "contexts": ["one"]}, "gold", "missing column 'gold'"),
    ({**GOOD, "question": ""}, "question", "empty question"),
    ({**GOOD, "id": 7}, "id", r"unexpected column 'id'.*\{'id': ''\}"),
])
def test_bad_qa_row_names_file_line_and_field(tmp_path, bad, field, reason):
    path = _jsonl(tmp_path / "qa.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError, match=rf"qa\.jsonl line 3, field '{field}': .*{reason}"):
        read_qa(path)


def test_bad_parquet_qa_row_names_its_0_based_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD, {**GOOD, "gold": 5}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    with pytest.raises(DataError, match=r"qa\.parquet row 1 \(0-based\), field 'gold': gold 5"):
        read_qa(tmp_path / "qa.parquet")


def test_qa_columns_can_be_renamed_or_dropped_and_rows_round_trip(tmp_path):
    path = _jsonl(tmp_path / "qa.jsonl", [{"q": "what?", "ctx": ["one", "two"], "answer": 0, "id": 3}])
    rows = read_qa(path, {"q": "question", "ctx": "contexts", "answer": "gold", "id": ""})
    assert [(r.question, r.contexts, r.gold) for r in rows] == [("what?", ["one", "two"], 0)]
    again = read_qa(write_qa(rows, tmp_path / "out.jsonl"))
    assert [r.to_json() for r in again] == [r.to_json() for r in rows]


# --- the SciFact builder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scifact_qa(data_dir) -> list[QARow]:
    return make_qa_from_beir(data_dir / "scifact", n_candidates=20, show_progress=False)


def test_scifact_qa_rows_leave_out_dev_queries_and_hold_the_gold_among_bm25_candidates(
        data_dir, scifact_qa):
    data = load_beir(data_dir / "scifact")
    train, dev = split_qrels_by_query(data.qrels, 0.2, 0)
    qids = [r.source.rsplit(" query ", 1)[1] for r in scifact_qa]
    assert len(qids) == len(train) and set(qids) == set(train) and not set(qids) & set(dev)
    for qid, row in zip(qids, scifact_qa):
        assert row.question == data.queries[qid]
        relevant = [d for d, s in train[qid].items() if s > 0]
        assert len(row.contexts) == 20 and len(set(row.contexts)) == 20
        assert row.contexts[row.gold] == data.corpus[relevant[0]]
        others = {data.corpus[d] for d in relevant[1:]}
        assert not others & set(row.contexts)  # another right answer is never a wrong one
    golds = [r.gold for r in scifact_qa]
    assert len(set(golds)) > 10  # shuffled: the gold's position says nothing
    again = make_qa_from_beir(data_dir / "scifact", n_candidates=20, show_progress=False)
    assert [r.to_json() for r in again] == [r.to_json() for r in scifact_qa]


def test_training_config_swaps_in_the_hard_examples_and_switches_on_the_chosen_loss(tmp_path):
    cfg = load_config(REPO / "jobs" / "configs" / "qa_hard.yaml",
                      [f"train.storage_path={tmp_path}", "loss.margin=0.2"])
    cln = training_config(cfg, tmp_path / "hard.jsonl", "cln", num_negatives=4)
    assert [(d.path, d.format, d.num_negatives) for d in cln.data] == [
        (str(tmp_path / "hard.jsonl"), "C", 4)]
    assert (cln.loss.cln_w, cln.loss.margin_w) == (1.0, 0.0)
    margin = training_config(cfg, tmp_path / "hard.jsonl", "margin", num_negatives=4)
    assert (margin.loss.cln_w, margin.loss.margin_w, margin.loss.margin) == (0.0, 1.0, 0.2)
    assert Path(margin.train.storage_path) == tmp_path / "qa_hard"
    assert margin.train.name == "train_margin"
    assert training_config(cfg, tmp_path / "h.jsonl", "cln", 4, tag="1a2b").train.name == "train_cln_1a2b"
    with pytest.raises(ValueError, match="'ce'"):
        training_config(cfg, tmp_path / "hard.jsonl", "ce", num_negatives=4)


# --- end to end ---------------------------------------------------------------------------


def test_qa_hard_command_stops_on_a_bad_qa_file_before_loading_a_model(tmp_path, capsys):
    from angle_ray.cli import main

    path = _jsonl(tmp_path / "qa.jsonl", [GOOD, {**GOOD, "contexts": []}])
    rc = main(["qa-hard", "--config", str(REPO / "jobs" / "configs" / "qa_hard.yaml"), "--qa", str(path),
               f"train.storage_path={tmp_path}"])
    assert rc == 2
    assert "qa.jsonl line 2, field 'contexts': empty contexts list" in capsys.readouterr().err
    assert not (tmp_path / "qa_hard" / "hard_examples.jsonl").exists()


@pytest.mark.slow
def test_qa_hard_command_trains_on_hard_rows_and_reports_before_and_after(
        ray_local, data_dir, tmp_path, capsys):
    from angle_ray.cli import main

    rc = main(["qa-hard", "--config", str(REPO / "jobs" / "configs" / "qa_hard.yaml"),
               "--from-beir", str(data_dir / "scifact"), "--candidates", "8", "--max-questions", "32",
               "--top-k", "1", "--loss", "margin", "--eval-fraction", "0.25",
               f"train.storage_path={tmp_path}", "model.max_length=64", "train.batch_size=8",
               "train.max_steps=4", "train.lr=1e-4", "train.log_every=2", "loss.margin=0.3",
               "train.cpus_per_worker=0.5"])
    assert rc == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "qa_hard"
    result = json.loads((run_dir / "qa_hard_margin.json").read_text())
    n_hard = result["sets"]["hard examples"]
    assert result["sets"] == {"train part": 24, "hard examples": n_hard, "held-out": 8}
    assert 0 < n_hard < 24
    hard = [json.loads(line) for line in (run_dir / "hard_examples.jsonl").open()]
    assert len(hard) == n_hard and all(1 <= len(h["negative"]) <= 3 for h in hard)
    for name in ("train part", "hard examples", "held-out"):
        for when in ("before", "after"):
            assert f"| {name} | {result['sets'][name]} | {when} |" in out
    assert (run_dir / "qa_hard_margin.md").read_text().strip() in out
    assert result["before"]["hard examples"]["top1"] == 0.0  # by definition of hard at k=1
    # training moved the model: some trained rows now have their gold first
    assert result["after"]["hard examples"]["top1"] > 0.0
    assert len(result["train_loss"]) == 2 and result["train_loss"][1] < result["train_loss"][0]
    assert Path(result["model_dir"]).parent.name.startswith("train_margin_")
    assert (Path(result["model_dir"]) / ANGLE_RAY_FILE).is_file()
    assert len(read_qa(run_dir / "qa.jsonl")) == 32
