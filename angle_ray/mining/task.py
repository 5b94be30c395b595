"""What to mine for: the corpus, the training queries and their known positives.

    task = load_mining_task(cfg.mining)     # SciFact train split minus the held-out dev queries
    task.pairs()[:2]                        # [(0, 123), (1, 4077)]  (query index, doc index)

The held-out queries are cut with the same ``split_qrels_by_query(fraction, seed)`` that
``eval.retrieval_dev`` uses, so a mined (and then trained) query is never a dev query. Texts are
raw: prompts belong to the encoder, not to the task.
"""

from __future__ import annotations

from dataclasses import dataclass

from angle_ray.config import MiningConfig
from angle_ray.data.beir import load_beir, split_qrels_by_query
from angle_ray.data.location import expand_path
from angle_ray.errors import UserError


class NoPositivesError(UserError):
    """The mining split has no query with a positive judgement left to mine for."""


@dataclass
class MiningTask:
    doc_ids: list[str]
    doc_texts: list[str]  # BEIR corpus text, "title text"
    query_ids: list[str]
    query_texts: list[str]
    positives: list[list[int]]  # per query: indices into doc_ids with qrel score > 0

    def pairs(self) -> list[tuple[int, int]]:
        """(query index, doc index), one per positive, in query order then qrels order."""
        return [(qi, d) for qi, docs in enumerate(self.positives) for d in docs]


def load_mining_task(cfg: MiningConfig) -> MiningTask:
    """Read ``cfg.beir`` and keep the judged queries of ``cfg.split`` outside the holdout."""
    data = load_beir(expand_path(cfg.beir), split=cfg.split)
    qrels = data.qrels
    if cfg.holdout_fraction > 0:
        qrels, _dev = split_qrels_by_query(qrels, cfg.holdout_fraction, cfg.holdout_seed)
    doc_ids = list(data.corpus)
    doc_pos = {d: i for i, d in enumerate(doc_ids)}
    query_ids: list[str] = []
    positives: list[list[int]] = []
    for qid in sorted(qrels):  # sorted: the same task whatever order the qrels file lists queries in
        pos = [doc_pos[d] for d, score in qrels[qid].items() if score > 0]
        if pos:  # a query judged only non-relevant has nothing to contrast against
            query_ids.append(qid)
            positives.append(pos)
    if not query_ids:
        raise NoPositivesError(
            f"mining.beir={cfg.beir!r}: no query of split {cfg.split!r} (qrels/{cfg.split}.tsv) has a "
            f"positive judgement (score > 0) outside the holdout (mining.holdout_fraction="
            f"{cfg.holdout_fraction:g}); use a split with positive judgements or a smaller holdout")
    return MiningTask(doc_ids=doc_ids, doc_texts=[data.corpus[d] for d in doc_ids], query_ids=query_ids,
                      query_texts=[data.queries[q] for q in query_ids], positives=positives)
