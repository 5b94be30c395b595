"""`angle-ray mine` end to end on real SciFact, and its output read back as Format C training data."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml

from angle_ray.cli import main
from angle_ray.config import DatasetConfig, MiningConfig
from angle_ray.data.beir import load_beir
from angle_ray.data.formats import read_records, sample_record
from angle_ray.mining.bm25 import bm25_candidates
from angle_ray.mining.static import mine_static, output_format

DROP_IDS = {"query_id": "", "positive_id": "", "negative_ids": ""}


def job(tmp_path, mining: dict | None, name: str = "job.yaml") -> str:
    raw = {"train": {"name": "mine-test"}}
    if mining is not None:
        raw["mining"] = mining
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_cli_bm25_on_scifact_trains_as_format_c(tmp_path, data_dir, capsys):
    config = job(tmp_path, {"beir": str(data_dir / "scifact"), "window": [3, 50], "k": 4})
    out = tmp_path / "negatives.jsonl"
    assert main(["mine", "--config", config, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "647 queries" in printed and "734 rows" in printed and "dropped false negatives" in printed

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 734
    qrels = load_beir(data_dir / "scifact").qrels
    for row in rows:
        assert len(row["negative"]) == len(row["negative_ids"]) == 4
        assert not set(row["negative_ids"]) & set(qrels[row["query_id"]])

    cfg = DatasetConfig(path=str(out), format="C", num_negatives=4, column_rename_mapping=DROP_IDS)
    records = list(read_records(cfg))
    assert len(records) == 734
    assert set(records[0]) == {"query", "positive", "negative", "_source"}
    assert records[0]["negative"] == rows[0]["negative"]
    sampled = sample_record(records[0], seed=0, epoch=0, key="r0", num_negatives=4)
    assert sorted(sampled["negative"]) == sorted(rows[0]["negative"])


def test_cli_minilm_on_a_small_scifact_writes_parquet(tmp_path, judged_scifact, capsys):
    config = job(tmp_path, {"beir": str(judged_scifact), "window": [2, 30], "k": 3, "pick": "top"})
    out = tmp_path / "negatives.parquet"
    rc = main(["mine", "--config", config, "--output", str(out), "--model", "all-MiniLM-L6-v2",
               "mining.max_length=32"])
    assert rc == 0
    assert "all-MiniLM-L6-v2" in capsys.readouterr().out
    rows = pq.read_table(out).to_pylist()
    qrels = load_beir(judged_scifact).qrels
    assert len({r["query_id"] for r in rows}) == 48  # 60 judged queries minus the 20% holdout
    for row in rows:
        assert len(row["negative"]) == 3
        assert not set(row["negative_ids"]) & set(qrels[row["query_id"]])
    cfg = DatasetConfig(path=str(out), format="C", num_negatives=3, column_rename_mapping=DROP_IDS)
    assert len(list(read_records(cfg))) == len(rows)


def test_cli_without_mining_section_exits_2_naming_the_file(tmp_path, capsys):
    config = job(tmp_path, None, name="no_mining.yaml")
    assert main(["mine", "--config", config, "--output", str(tmp_path / "n.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no_mining.yaml" in err and "mining:" in err
    assert not (tmp_path / "n.jsonl").exists()


def test_cli_config_errors_exit_2(tmp_path, data_dir, capsys):
    bad_key = job(tmp_path, {"beir": str(data_dir / "scifact"), "kk": 3}, name="typo.yaml")
    assert main(["mine", "--config", bad_key, "--output", str(tmp_path / "n.jsonl")]) == 2
    assert "mining.kk" in capsys.readouterr().err

    missing = job(tmp_path, {"beir": str(tmp_path / "nowhere")}, name="missing.yaml")
    assert main(["mine", "--config", missing, "--output", str(tmp_path / "n.jsonl")]) == 2
    assert "nowhere" in capsys.readouterr().err

    none = job(tmp_path, {"beir": str(data_dir / "scifact"), "warm_start": "none"}, name="none.yaml")
    assert main(["mine", "--config", none, "--output", str(tmp_path / "n.jsonl")]) == 2
    assert "warm_start" in capsys.readouterr().err
    assert not (tmp_path / "n.jsonl").exists()


def test_mine_static_is_reproducible_and_follows_the_seed(data_dir, scifact_task):
    cfg = MiningConfig(beir=str(data_dir / "scifact"), window=(3, 50), k=4, pick="random")
    rows_a, manifest = mine_static(cfg, show_progress=False)
    # a second BM25 pass of its own, then selection only: the seed is a selection setting
    bm25 = (bm25_candidates(scifact_task, top=50), "bm25")
    rows_b, _ = mine_static(cfg, show_progress=False, task=scifact_task, candidates=bm25)
    rows_c, _ = mine_static(cfg.model_copy(update={"seed": 1}), show_progress=False, task=scifact_task,
                            candidates=bm25)
    assert rows_a == rows_b
    assert rows_a != rows_c
    assert manifest["source"] == "bm25" and manifest["queries"] == 647 and manifest["docs"] == 5183
    assert manifest["stats"]["negatives"] == 647 * 4
    assert manifest["mining"]["window"] == [3, 50]
    json.dumps(manifest)  # publishable as is


def test_output_format_from_the_suffix():
    assert output_format("a/negatives.parquet", "jsonl") == "parquet"
    assert output_format("negatives.JSONL", "parquet") == "jsonl"
    assert output_format("negatives.out", "parquet") == "parquet"



def test_manifest_records_the_negatives_difficulty(tmp_path, mini_scifact):
    from angle_ray.mining.publish import publish_version, read_version
    from angle_ray.mining.select import select_negatives
    from angle_ray.mining.task import load_mining_task

    cfg = MiningConfig(beir=str(mini_scifact), window=(3, 30), k=2)
    task = load_mining_task(cfg)
    _, manifest = mine_static(cfg, show_progress=False, task=task)
    cands = bm25_candidates(task, top=30)
    _, stats = select_negatives(cands, task.positives, cfg, n_docs=len(task.doc_ids), seed=cfg.seed)
    expected = stats.as_dict()
    for key in ("mean_rank", "mean_margin", "random_fill_fraction"):
        assert manifest["stats"][key] == expected[key]
    assert 3 <= manifest["stats"]["mean_rank"] <= 30
    folder = publish_version(tmp_path / "negatives", 0, [{"q": 1}], manifest)
    assert read_version(folder)[1]["stats"] == manifest["stats"]  # survives the JSON round trip


def test_warm_start_from_the_model_name_publishes_v0_mined_by_that_model(tmp_path, judged_scifact):
    """mining.warm_start=<model.name_or_path> (bench/scifact_ance.py's static-model arm)."""
    from angle_ray.config import config_from_dict
    from angle_ray.mining.publish import list_versions, read_version
    from angle_ray.mining.task import load_mining_task
    from angle_ray.mining.training_setup import warm_start

    job = config_from_dict({"mining": {"beir": str(judged_scifact), "k": 2, "window": [3, 30],
                                       "max_length": 24, "warm_start": "all-MiniLM-L6-v2"}})
    warm_start(job, load_mining_task(job.mining), tmp_path / "negatives")
    (step, folder), = list_versions(tmp_path / "negatives")
    rows, manifest = read_version(folder)
    assert step == 0 and manifest["source"] == "all-MiniLM-L6-v2" and manifest["kind"] == "static"
    assert len({r["query_id"] for r in rows}) == 48  # 60 judged queries minus the 20% holdout
    assert 3 <= manifest["stats"]["mean_rank"] <= 30
    assert -2.0 < manifest["stats"]["mean_margin"] < 2.0  # cosine units, not BM25's
