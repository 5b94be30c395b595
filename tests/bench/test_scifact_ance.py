"""bench/scifact_ance.py without training: the mean/std aggregation by hand, each arm's config
overrides (validated, seeds applied, arms equal but for the negatives), the negatives-difficulty
table from hand-written manifests, the dev curve read from metrics.csv, the plot writer, and the
--zero-shot-lengths mode end to end on a small real SciFact slice with real MiniLM.

bench/ is no package, so the script is loaded from its path.
"""

import csv
import json
import math
from pathlib import Path

import pytest

from angle_ray.config import load_config
from angle_ray.data.beir import load_beir, split_qrels_by_query
from angle_ray.eval.retrieval import evaluate_retrieval
from angle_ray.mining.publish import publish_version
from angle_ray.mining.static import capped_length
from angle_ray.models.precision import resolve_dtype
from angle_ray.train.driver import run_dir_of
from tests.bench.conftest import bench_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "scifact_ance.py"
CONFIG = str(REPO / "jobs" / "configs" / "scifact_ance.yaml")


@pytest.fixture(scope="module")
def bench():
    with bench_script("scifact_ance") as module:
        yield module


def test_mean_and_sample_std_by_hand(bench):
    mean, std = bench.mean_std([1.0, 2.0, 3.0, 4.0])
    # deviations -1.5 -0.5 0.5 1.5 -> squares sum 5, / (n - 1) = 5/3
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert bench.mean_std([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        bench.mean_std([])


def test_summarize_and_table_by_hand(bench):
    per_seed = {"0": {"ndcg@10": 60.0, "mrr@10": 50.0, "recall@100": 90.0, "train_s": 100.0},
                "1": {"ndcg@10": 62.0, "mrr@10": 50.0, "recall@100": 91.0, "train_s": 110.0},
                "2": {"ndcg@10": 64.0, "mrr@10": 53.0, "recall@100": 92.0, "train_s": 120.0}}
    s = bench.summarize(per_seed)
    assert s["ndcg@10"] == pytest.approx((62.0, 2.0))
    assert s["mrr@10"] == pytest.approx((51.0, math.sqrt(3.0)))  # deviations -1 -1 2: 6/2
    assert s["recall@100"] == pytest.approx((91.0, 1.0))
    assert s["train_s"] == pytest.approx((110.0, 10.0))
    table = bench.results_table({"bm25": s}, {"bm25": 3})
    assert "| bm25 | 3 | 62.00 ± 2.00 | 51.00 ± 1.73 | 91.00 ± 1.00 | 110 ± 10 |" in table


TRAINED = ("ibn", "bm25", "static-model", "ance-bm25", "ance-model")


def test_every_trained_arm_validates_with_its_seed_and_negatives(bench, tmp_path):
    assert set(bench.ARMS) == {"zero-shot", *TRAINED}
    model = load_config(CONFIG).model.name_or_path
    cfgs = {}
    for arm in TRAINED:
        cfg = load_config(CONFIG, bench.arm_overrides(arm, 2, 60, 20, 10, tmp_path, model))
        assert cfg.train.seed == 2 and cfg.mining.seed == 2
        assert cfg.train.max_steps == 60 and cfg.train.eval_every == 10
        assert cfg.train.checkpoint_every == 20 and cfg.mining.keep_versions == 60 // 20 + 2
        assert run_dir_of(cfg) == tmp_path / "seed2" / arm
        assert cfg.eval.retrieval_dev is not None and not cfg.export.sentence_transformers
        cfgs[arm] = cfg
    warm = {arm: (c.mining.warm_start, c.mining.refresh_every) for arm, c in cfgs.items()}
    assert warm == {"ibn": ("none", None), "bm25": ("bm25", None),
                    "static-model": (model, None), "ance-bm25": ("bm25", 20),
                    "ance-model": (model, 20)}
    assert model == "all-MiniLM-L6-v2"

    def rest(cfg):  # everything but the run's name and where the negatives come from
        d = cfg.model_dump(mode="json")
        d["train"].pop("name")
        d["mining"].pop("warm_start")
        d["mining"].pop("refresh_every")
        return d

    assert all(rest(c) == rest(cfgs["ibn"]) for c in cfgs.values())
    with pytest.raises(ValueError, match="zero-shot"):
        bench.arm_overrides("zero-shot", 0, 60, 20, 10, tmp_path, model)


def test_parse_args_defaults_and_errors(bench, capsys):
    args = bench.parse_args([])
    assert args.seeds == [0, 1, 2] and args.arms == list(bench.ARMS)
    assert args.refresh_every == 25 and args.eval_every == args.steps // 2 == 50
    assert args.eval_max_length is None  # the job's own last dev evaluation is the table's
    assert bench.parse_args(["--eval-every", "5", "--seeds", "3,4"]).seeds == [3, 4]
    for bad in (["--arms", "ibn,ance"], ["--docs", "10"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    assert "ance" in capsys.readouterr().err


def test_check_fresh_names_an_existing_run_folder(bench, tmp_path):
    bench.check_fresh(tmp_path, ["zero-shot", "bm25"], [0, 1])  # nothing there yet
    (tmp_path / "seed1" / "bm25").mkdir(parents=True)
    with pytest.raises(SystemExit, match="seed1/bm25"):
        bench.check_fresh(tmp_path, ["zero-shot", "bm25"], [0, 1])



def test_resume_reuses_a_finished_run_only_with_the_same_settings(bench, tmp_path):
    args = bench.parse_args(["--config", CONFIG, "--seeds", "0", "--arms", "bm25", "--resume",
                             "--out", str(tmp_path)])
    base = load_config(CONFIG)
    settings = bench.run_settings("bm25", 0, args, tmp_path, base)
    run_dir = tmp_path / "seed0" / "bm25"
    run_dir.mkdir(parents=True)
    assert bench.saved_result(run_dir, settings) is None  # a folder without figures: unfinished
    result = {"ndcg@10": 70.0, "mrr@10": 65.0, "recall@100": 94.0, "train_s": 600.0,
              "run_s": 700.0}
    (run_dir / bench.RESULT_FILE).write_text(json.dumps({"settings": settings, "result": result}))
    # reused as saved: no config is loaded and nothing trains (dev is not even needed)
    saved = bench.saved_result(run_dir, settings)
    assert saved == result
    assert bench.run_arm_seed(args, "bm25", 0, settings, saved, None, tmp_path, 1.0) == result
    other = bench.parse_args(["--config", CONFIG, "--steps", "60", "--resume", "--out",
                              str(tmp_path)])
    assert bench.saved_result(run_dir, bench.run_settings("bm25", 0, other, tmp_path, base)) is None
    # the same path with other content (an edited recipe) is not reused either
    edited = tmp_path / "recipe.yaml"
    edited.write_text(Path(CONFIG).read_text())
    at_copy = bench.parse_args(["--config", str(edited), "--resume", "--out", str(tmp_path)])
    copy_settings = bench.run_settings("bm25", 0, at_copy, tmp_path, base)
    assert copy_settings["config_sha256"] == settings["config_sha256"]
    edited.write_text(Path(CONFIG).read_text() + "# edited\n")
    assert bench.run_settings("bm25", 0, at_copy, tmp_path, base)["config_sha256"] != \
        settings["config_sha256"]
    # the precision this machine trains the recipe's model.dtype in: a bf16 recipe run on a CPU
    # without native bf16 trained fp32 and is not mixed with bf16 runs
    as_fp32 = base.model_copy(update={"model": base.model.model_copy(update={"dtype": "fp32"})})
    assert bench.run_settings("bm25", 0, args, tmp_path, as_fp32)["precision"] == "fp32"
    assert settings["precision"] == resolve_dtype(base.model.dtype, "cpu")[0]
    bench.check_fresh(tmp_path, ["bm25"], [0], reusable=frozenset({run_dir}))
    with pytest.raises(SystemExit, match="--resume"):
        bench.check_fresh(tmp_path, ["bm25"], [0])

def manifest(step, rank, margin, fills, source="bm25"):
    stats = {"negatives": 8, "filled_random": 0}
    if rank is not None:  # None: a manifest written before the difficulty fields existed
        stats.update(mean_rank=rank, mean_margin=margin, random_fill_fraction=fills)
    return {"kind": "static" if step == 0 else "refresh", "source": source, "step": step,
            "stats": stats}


def test_difficulty_table_from_hand_written_manifests(bench, tmp_path):
    seed0, seed1 = tmp_path / "s0" / "negatives", tmp_path / "s1" / "negatives"
    publish_version(seed0, 0, [{"q": 1}], manifest(0, 10.0, 2.0, 0.25))
    ckpt0 = str(tmp_path / "s0" / "checkpoint_2026-12-04_20-35-01.104548")  # each seed's own
    publish_version(seed0, 25, [{"q": 1}], manifest(25, 6.0, 0.1, 0.0, source=ckpt0))
    publish_version(seed1, 0, [{"q": 1}], manifest(0, 12.0, 4.0, 0.0))
    publish_version(seed1, 50, [{"q": 1}], manifest(50, None, None, None, source=str(
        tmp_path / "s1" / "checkpoint_2026-12-04_21-16-45.392849")))
    versions = [bench.version_difficulty(seed0), bench.version_difficulty(seed1)]
    assert [v["version"] for v in versions[0]] == ["v0", "v25"]
    assert versions[0][1] == {"version": "v25", "step": 25, "source": ckpt0,
                              "mean_rank": 6.0, "mean_margin": 0.1, "random_fill_fraction": 0.0}
    table = bench.difficulty_table({"ance-bm25": versions}).splitlines()
    assert table[2] == "| ance-bm25 | v0 | 0 | 2 | bm25 | 11.0 | 3.000 | 12.5 |"
    assert table[3] == "| ance-bm25 | v25 | 25 | 1 | checkpoint | 6.0 | 0.100 | 0.0 |"
    assert table[4] == "| ance-bm25 | v50 | 50 | 1 | checkpoint | - | - | - |"
    assert len(table) == 5


def test_dev_curve_reads_metrics_csv_later_rows_win(bench, tmp_path):
    rows = [{"step": 10, "loss": 1.0}, {"step": 25, "dev_metric": 60.5},
            {"step": 50, "dev_metric": "nan"}, {"step": 50, "dev_metric": 62.0},
            {"step": 25, "dev_metric": 61.0}]  # step 25 again: a resumed run's newer row
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "dev_metric"])
        w.writeheader()
        w.writerows(rows)
    assert bench.dev_curve(tmp_path) == [(25, 61.0), (50, 62.0)]
    assert bench.mean_curve([[(25, 60.0), (50, 62.0)], [[25, 64.0], [50, 66.0], [75, 1.0]]]) == [
        (25, 62.0), (50, 64.0), (75, 1.0)]  # JSON-read curves are lists



def test_last_dev_row_is_the_later_evaluated_row_of_the_last_step(bench, tmp_path):
    keys = ["step", "dev_metric", "dev/mrr@10", "dev/recall@100"]
    rows = [{"step": 50, "dev_metric": 66.0, "dev/mrr@10": 60.0, "dev/recall@100": 90.0},
            {"step": 100, "dev_metric": "nan"},  # a checkpoint without an evaluation
            {"step": 100, "dev_metric": 70.5, "dev/mrr@10": 65.25, "dev/recall@100": 94.0}]
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    assert bench.last_dev_row(tmp_path, 100) == {"ndcg@10": 70.5, "mrr@10": 65.25,
                                                 "recall@100": 94.0}
    with pytest.raises(RuntimeError, match="no dev evaluation at step 75"):
        bench.last_dev_row(tmp_path, 75)

def test_plot_writer_on_synthetic_curves(bench, tmp_path):
    curves = {"ibn": [(0, 60.0), (25, 62.0), (50, 63.0)], "ance-bm25": [(0, 60.0), (25, 64.0)],
              "bm25": []}
    path = bench.plot_dev_curves(curves, 60.0, tmp_path / "plots" / "dev.png", "max length 192")
    data = path.read_bytes()
    assert path == tmp_path / "plots" / "dev.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_evaluate_dev_matches_the_library_evaluation(bench, mini_scifact, minilm_small):
    cfg = load_config(CONFIG, [f"eval.retrieval_dev.path={mini_scifact}"])
    dev = bench.load_dev_split(cfg)
    data = load_beir(mini_scifact, split="train")
    expected_dev = split_qrels_by_query(data.qrels, 0.2, 0)[1]
    assert dev.qrels == expected_dev and len(dev.corpus) == len(data.corpus)
    positives = {d for judged in expected_dev.values() for d in judged}
    assert set(bench.load_dev_split(cfg, docs=5).corpus) == positives  # too few: positives only
    small = bench.load_dev_split(cfg, docs=len(positives) + 40)
    assert len(small.corpus) == len(positives) + 40 and positives <= set(small.corpus)
    metrics, encode_s = bench.evaluate_dev(minilm_small, small, 24)
    with capped_length(minilm_small, 24):
        library = evaluate_retrieval(minilm_small, small.corpus, data.queries, expected_dev,
                                     show_progress=False)
    assert metrics == pytest.approx(library) and encode_s > 0
    assert minilm_small.cfg.max_length == 128  # restored


def test_zero_shot_lengths_mode_end_to_end(bench, mini_scifact, tmp_path, capsys):
    bench.main(["--config", CONFIG, "--zero-shot-lengths", "16,48", "--docs", "60",
                "--out", str(tmp_path), f"mining.beir={mini_scifact}",
                f"eval.retrieval_dev.path={mini_scifact}"])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "zero_shot_lengths.json").read_text())
    assert list(saved["lengths"]) == ["16", "48"] and saved["docs"] >= 60
    for length, r in saved["lengths"].items():
        assert 0 <= r["ndcg@10"] <= 100 and r["encode_s"] > 0
        assert f"| {length} | {r['ndcg@10']:.2f} | {r['mrr@10']:.2f} |" in out
    assert "not comparable" in out
    assert not list(tmp_path.glob("seed*"))  # nothing trained
