"""Mined negatives as training rows (Format C with a list of negatives, plus ids).

    rows = negative_rows(task, negatives)
    rows[0] = {"query_id": "1", "query": "...", "positive_id": "31715818", "positive": "...",
               "negative": ["...", ...k texts], "negative_ids": ["...", ...k ids]}

One row per (query, positive) pair, so a query with several positives trains on each; the ids
let a reader trace a negative back to the corpus (drop them for training with
``column_rename_mapping: {query_id: "", positive_id: "", negative_ids: ""}``).
"""

from __future__ import annotations

from angle_ray.mining.task import MiningTask


def negative_rows(task: MiningTask, negatives: list[list[int]]) -> list[dict]:
    if len(negatives) != len(task.query_ids):
        raise ValueError(f"negative_rows: {len(negatives)} negative lists for {len(task.query_ids)} queries")
    rows = []
    for qi, di in task.pairs():
        neg = negatives[qi]
        rows.append({
            "query_id": task.query_ids[qi],
            "query": task.query_texts[qi],
            "positive_id": task.doc_ids[di],
            "positive": task.doc_texts[di],
            "negative": [task.doc_texts[j] for j in neg],
            "negative_ids": [task.doc_ids[j] for j in neg],
        })
    return rows
