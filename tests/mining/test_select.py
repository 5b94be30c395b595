"""select_negatives: window, positives, false-negative filter, pick, seeding, fill."""

from __future__ import annotations

import numpy as np
import pytest

from angle_ray.config import MiningConfig
from angle_ray.mining.candidates import Candidates
from angle_ray.mining.index import dense_candidates
from angle_ray.mining.select import fn_threshold, select_negatives


def cfg(**kw) -> MiningConfig:
    base = {"beir": "unused", "fn_rel_margin": None, "window": (1, 100), "k": 2, "pick": "top"}
    return MiningConfig(**{**base, **kw})


def one_query(docs, scores, pos_score=1.0) -> Candidates:
    return Candidates(scores=np.array([scores], dtype=np.float32), idx=np.array([docs]),
                      pos_scores=np.array([pos_score]))


def test_window_is_one_based_inclusive_and_counts_positives():
    c = one_query([10, 11, 12, 13, 14, 15], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # ranks 2..4 hold docs 11, 12, 13; 12 is the query's positive
    neg, stats = select_negatives(c, [[12]], cfg(window=(2, 4), k=2), n_docs=100, seed=0)
    assert neg == [[11, 13]]
    assert stats.dropped_positive == 1 and stats.filled_random == 0


def test_relative_false_negative_filter():
    # positive scores 0.5; margin 0.75 -> drop score > 0.375 (exact in float32; equal is kept)
    c = one_query([1, 2, 3, 4, 5], [0.49, 0.4, 0.375, 0.30, 0.25], pos_score=0.5)
    neg, stats = select_negatives(c, [[0]], cfg(fn_rel_margin=0.75, k=3), n_docs=50, seed=0)
    assert neg == [[3, 4, 5]]
    assert stats.dropped_fn == 2


def test_relative_filter_with_a_negative_positive_score_stays_below_it():
    # p = -0.5, m = 0.9: threshold p - (1 - m)|p| = -0.55 (m * p = -0.45 would keep too much)
    assert fn_threshold(np.array([-0.5]), 0.9)[0] == pytest.approx(-0.55)
    c = one_query([1, 2, 3, 4], [-0.50, -0.54, -0.56, -0.60], pos_score=-0.5)
    neg, stats = select_negatives(c, [[0]], cfg(fn_rel_margin=0.9, k=2), n_docs=50, seed=0)
    assert neg == [[3, 4]] and stats.dropped_fn == 2


def test_nan_positive_score_disables_only_the_relative_filter():
    c = one_query([1, 2, 3], [0.9, 0.5, 0.1], pos_score=np.nan)
    neg, stats = select_negatives(c, [[0]], cfg(fn_rel_margin=0.9, fn_abs=0.8, k=2), n_docs=50, seed=0)
    assert neg == [[2, 3]] and stats.dropped_fn == 1


def test_absolute_false_negative_filter():
    c = one_query([1, 2, 3, 4], [0.95, 0.90, 0.85, 0.30])
    neg, stats = select_negatives(c, [[0]], cfg(fn_abs=0.88, k=2), n_docs=50, seed=0)
    assert neg == [[3, 4]] and stats.dropped_fn == 2


def test_both_filters_combine():
    # rel: p=1.0, m=0.7 -> drop > 0.7; abs: drop > 0.75 (looser); survivors 0.69 and below
    c = one_query([1, 2, 3, 4, 5], [0.9, 0.71, 0.69, 0.2, 0.1], pos_score=1.0)
    neg, stats = select_negatives(c, [[0]], cfg(fn_rel_margin=0.7, fn_abs=0.75, k=3), n_docs=50, seed=0)
    assert neg == [[3, 4, 5]] and stats.dropped_fn == 2


def test_random_pick_samples_survivors_reproducibly():
    docs = list(range(1, 21))
    c = Candidates(scores=np.tile(np.linspace(0.9, 0.1, 20), (30, 1)), idx=np.tile(docs, (30, 1)),
                   pos_scores=np.ones(30))
    positives = [[0]] * 30
    conf = cfg(pick="random", k=4, window=(1, 20))
    a, _ = select_negatives(c, positives, conf, n_docs=100, seed=3)
    b, _ = select_negatives(c, positives, conf, n_docs=100, seed=3)
    other, _ = select_negatives(c, positives, conf, n_docs=100, seed=4)
    assert a == b
    assert a != other
    assert len({tuple(x) for x in a}) > 1  # queries draw independently
    assert all(len(set(x)) == 4 and set(x) <= set(docs) for x in a)
    top, _ = select_negatives(c, positives, cfg(pick="top", k=4, window=(1, 20)), n_docs=100, seed=3)
    assert top == [[1, 2, 3, 4]] * 30


def test_fill_when_too_few_survive():
    # window holds 2 candidates: one positive, one survivor; k=4 -> 3 random fills
    c = one_query([7, 8, 9, -1], [0.9, 0.5, 0.4, -np.inf], pos_score=0.45)
    positives = [[8, 30, 31]]
    neg, stats = select_negatives(c, positives, cfg(fn_rel_margin=1.0, k=4), n_docs=40, seed=1)
    # 7 scores above the positive (0.9 > 0.45): a suspected false negative, not a fill either
    assert neg[0][0] == 9
    assert len(set(neg[0])) == 4
    assert not set(neg[0]) & {8, 30, 31, 7}
    assert stats.filled_random == 3 and stats.dropped_fn == 1 and stats.dropped_positive == 1
    again, _ = select_negatives(c, positives, cfg(fn_rel_margin=1.0, k=4), n_docs=40, seed=1)
    assert again == neg


def test_fill_in_a_tiny_corpus_takes_every_remaining_document():
    c = one_query([0, 1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6, 0.5], pos_score=0.1)
    neg, stats = select_negatives(c, [[0]], cfg(fn_rel_margin=0.5, k=4), n_docs=5, seed=0)
    assert sorted(neg[0]) == [1, 2, 3, 4]  # all suspects, but nothing else is left
    assert stats.filled_random == 4
    with pytest.raises(ValueError, match="k=5"):
        select_negatives(c, [[0]], cfg(k=5), n_docs=5, seed=0)


def _check_real(cands, positives, conf, n_docs):
    neg, stats = select_negatives(cands, positives, conf, n_docs=n_docs, seed=conf.seed)
    lo, hi = conf.window
    outside_window = 0
    for qi, picked in enumerate(neg):
        assert len(picked) == conf.k == len(set(picked))
        assert not set(picked) & set(positives[qi]), f"query {qi} got a positive as negative"
        in_window = set(cands.idx[qi, lo - 1 : hi].tolist())
        outside_window += sum(d not in in_window for d in picked)
    assert outside_window == stats.filled_random  # only fills come from outside [lo, hi]
    assert stats.queries == len(positives) and stats.negatives == conf.k * len(positives)
    return stats


@pytest.mark.parametrize("pick", ["top", "random"])
def test_scifact_bm25_negatives_never_positives_and_in_window(scifact_task, scifact_bm25, scifact_cfg, pick):
    conf = scifact_cfg.model_copy(update={"pick": pick})
    stats = _check_real(scifact_bm25, scifact_task.positives, conf, len(scifact_task.doc_ids))
    assert stats.dropped_positive > 0 and stats.dropped_fn > 0


def test_scifact_minilm_negatives_never_positives_and_in_window(scifact_slice, slice_embeddings,
                                                                scifact_cfg):
    q, d = slice_embeddings
    cands = dense_candidates(q, d, scifact_slice.positives, scifact_cfg, top=scifact_cfg.window[1])
    stats = _check_real(cands, scifact_slice.positives, scifact_cfg, len(scifact_slice.doc_ids))
    assert stats.dropped_positive > 0


def test_difficulty_means_by_hand():
    # window ranks 2..5 = docs 11 (0.8), 12 (positive), 13 (0.6), 14 (0.5); top-2 picks 11 and 13
    c = one_query([10, 11, 12, 13, 14, 15], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], pos_score=1.0)
    neg, stats = select_negatives(c, [[12]], cfg(window=(2, 5), k=2), n_docs=100, seed=0)
    assert neg == [[11, 13]]
    d = stats.as_dict()
    assert d["mean_rank"] == pytest.approx((2 + 4) / 2)
    assert d["mean_margin"] == pytest.approx(((1.0 - 0.8) + (1.0 - 0.6)) / 2)
    assert d["random_fill_fraction"] == 0.0
    assert not any(key.startswith("_") for key in d)


def test_difficulty_leaves_out_fills_and_unscored_positives():
    # query 0: one survivor (rank 2, score 0.5, positive 0.7) + 1 random fill; query 1: positive
    # not scored (NaN) -> its picks (ranks 1 and 3) count for the rank, not for the margin
    c = Candidates(scores=np.array([[0.9, 0.5, 0.4], [0.8, 0.7, 0.6]], dtype=np.float32),
                   idx=np.array([[1, 2, 3], [4, 5, 6]]), pos_scores=np.array([0.7, np.nan]))
    neg, stats = select_negatives(c, [[1, 3], [5]], cfg(k=2), n_docs=50, seed=0)
    assert neg[0][0] == 2 and neg[1] == [4, 6]
    d = stats.as_dict()
    assert d["mean_rank"] == pytest.approx((2 + 1 + 3) / 3)
    assert d["mean_margin"] == pytest.approx(0.7 - 0.5, abs=1e-6)
    assert d["random_fill_fraction"] == pytest.approx(1 / 4)


def test_difficulty_is_none_when_every_negative_is_a_fill():
    c = one_query([1, 2], [0.9, 0.8])
    _, stats = select_negatives(c, [[1, 2]], cfg(k=2), n_docs=30, seed=0)
    d = stats.as_dict()
    assert d["mean_rank"] is None and d["mean_margin"] is None and d["random_fill_fraction"] == 1.0


def test_difficulty_on_real_bm25_candidates_matches_a_recount(mini_scifact):
    from angle_ray.mining.bm25 import bm25_candidates
    from angle_ray.mining.task import load_mining_task

    conf = MiningConfig(beir=str(mini_scifact), window=(3, 30), k=2, fn_rel_margin=0.95)
    task = load_mining_task(conf)
    cands = bm25_candidates(task, top=30, show_progress=False)
    neg, stats = select_negatives(cands, task.positives, conf, n_docs=len(task.doc_ids), seed=0)
    ranks, margins = [], []
    for qi, picked in enumerate(neg):
        row = cands.idx[qi].tolist()
        for doc in picked:
            if doc in row[2:30]:  # taken from the window (else a random fill)
                j = row.index(doc)
                ranks.append(j + 1)
                if not np.isnan(cands.pos_scores[qi]):
                    margins.append(float(cands.pos_scores[qi]) - float(cands.scores[qi, j]))
    d = stats.as_dict()
    assert d["mean_rank"] == pytest.approx(np.mean(ranks)) and 3 <= d["mean_rank"] <= 30
    assert d["mean_margin"] == pytest.approx(np.mean(margins), rel=1e-5)
    assert d["mean_margin"] > 0  # the 0.95 filter keeps only negatives below their positive
    assert d["random_fill_fraction"] == pytest.approx(1 - len(ranks) / stats.negatives)
