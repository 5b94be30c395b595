"""The sweep report from trial rows written by hand: ranking, the best pick, tables, plots,
curves read back from metrics.csv, and best.yaml (no Tune run: that is tests/tune/test_sweep.py)."""

from __future__ import annotations

import csv
import math

import pandas as pd
import yaml

from angle_ray.config import load_config
from angle_ray.tune.report import (
    Report,
    TrialRow,
    largest,
    pick_best,
    rank,
    read_curve,
    tune_curve,
    write_best_config,
    write_plots,
    write_tables,
)
from angle_ray.tune.space import parse_space
from angle_ray.tune.sweep import plan_sweep

NAN = float("nan")


def _rows() -> list[TrialRow]:
    def row(trial_id, status, metric, lr, pooling, step=8):
        return TrialRow(trial_id=trial_id, status=status, step=step, total_steps=8, metric=metric,
                        values={"train.lr": lr, "model.pooling": pooling},
                        curve=[(2, metric - 0.1), (step, metric)] if math.isfinite(metric) else [])

    base = row("a", "completed", 0.70, 5e-5, "mean")
    base.is_base = True
    return [base, row("b", "stopped", 0.90, 1e-3, "cls", 2),
            row("c", "completed", 0.80, 3e-5, "cls"), row("d", "error", NAN, 1e-2, "mean", 0),
            row("e", "unfinished", 0.75, 2e-5, "mean", 4)]


def test_rank_puts_the_best_metric_first_and_trials_without_one_last():
    assert [r.trial_id for r in rank(_rows(), "max")] == ["b", "c", "e", "a", "d"]
    assert [r.trial_id for r in rank(_rows(), "min")] == ["a", "e", "c", "b", "d"]


def test_best_is_the_best_trial_that_ran_its_whole_budget():
    ranked = rank(_rows(), "max")
    assert pick_best(ranked).trial_id == "c"  # b scored higher but was stopped at step 2
    stopped_only = [r for r in ranked if r.status != "completed"]
    assert pick_best(stopped_only).trial_id == "b"  # none completed: any trial with a metric
    assert pick_best([r for r in ranked if r.trial_id == "d"]) is None


def _report(tmp_path) -> Report:
    spec = parse_space({"params": {"train.lr": {"loguniform": [1e-5, 1e-2]},
                                   "model.pooling": {"choice": ["mean", "cls"]}}}, "s.yaml")
    rows = rank(_rows(), "max")
    return Report(folder=tmp_path, spec=spec, rows=rows, best=pick_best(rows),
                  base=next(r for r in rows if r.is_base))


def test_tables_list_every_trial_best_first_with_its_values(tmp_path):
    csv_path, md_path = write_tables(_report(tmp_path))
    table = list(csv.DictReader(csv_path.open()))
    assert [r["trial_id"] for r in table] == ["b", "c", "e", "a", "d"]
    assert table[1]["status"] == "completed" and float(table[1]["dev_metric"]) == 0.80
    assert table[1]["train.lr"] == "3e-05" and table[1]["model.pooling"] == "cls"
    assert float(table[0]["peak_dev_metric"]) == 0.90
    md = md_path.read_text()
    assert "| 2 | c **best** | completed | 8 | 0.8000 | 3e-05 | cls |" in md
    assert "| 4 | a (base) | completed | 8 | 0.7000 | 5e-05 | mean |" in md
    assert "base config: trial a, dev_metric 0.7000 (completed)" in md
    assert "5 trials: 2 completed, 1 stopped early, 1 failed, 1 unfinished" in md


def test_plots_are_written_for_each_searched_key_and_the_curves(tmp_path):
    files = write_plots(_report(tmp_path))
    assert set(files) == {"train.lr", "model.pooling", "curves"}
    assert files["curves"] == tmp_path / "plots" / "dev_metric_curves.png"
    for path in files.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_curves_keep_the_newest_report_of_a_step(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,loss,dev_metric\n1,0.9,\n2,0.8,0.50\n3,0.7,\n2,0.8,0.55\n4,0.6,0.61\n")
    assert read_curve(tmp_path, "dev_metric") == [(2, 0.55), (4, 0.61)]
    assert read_curve(tmp_path / "missing", "dev_metric") == []
    df = pd.DataFrame({"step": [2, 4, 2, 6], "dev_metric": [0.5, 0.6, 0.52, NAN]})
    assert tune_curve(df, "dev_metric") == [(2, 0.52), (4, 0.6)]
    assert tune_curve(None, "dev_metric") == []


def test_best_yaml_is_the_full_job_with_the_best_values_and_reruns_as_is(tmp_path, tiny_job_file):
    space = tmp_path / "space.yaml"
    space.write_text(f"config: {tiny_job_file}\nparams: {{train.lr: {{choice: [1.0e-5, 3.0e-5]}}}}\n")
    sweep = plan_sweep(space, output=tmp_path / "sweep")
    sweep.folder.mkdir()
    best = TrialRow(trial_id="t1", status="completed", step=8, total_steps=8, metric=0.8,
                    values={"train.lr": 3.0e-5})
    path = write_best_config(sweep, best)
    assert path.read_text().startswith("# Best trial t1 of sweep space")
    cfg = load_config(path)
    assert cfg.train.lr == 3.0e-5 and cfg.train.name == "best"
    assert cfg.train.storage_path == str(sweep.folder)
    job_loss = yaml.safe_load(tiny_job_file.read_text())["loss"]  # the rest of the job kept
    assert {k: getattr(cfg.loss, k) for k in job_loss} == job_loss


def test_metrics_the_space_reports_are_each_trials_largest_value(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,neg/random_fill,neg/versions_used\n1,0.0,1\n2,0.04,2\n3,0.01,3\n")
    assert largest(tmp_path, ["neg/random_fill", "neg/versions_used"]) == {
        "neg/random_fill": 0.04, "neg/versions_used": 3}
    assert math.isnan(largest(tmp_path, ["never_reported"])["never_reported"])
    spec = parse_space({"params": {"train.lr": {"loguniform": [1e-5, 1e-2]}},
                        "report": ["neg/random_fill"], "name": "scifact-mining"}, "s.yaml")
    assert spec.report == ["neg/random_fill"]
    rows = [TrialRow(trial_id="a", status="completed", step=8, total_steps=8, metric=0.7,
                     values={"train.lr": 1e-4}, extra={"neg/random_fill": 0.04})]
    report = Report(folder=tmp_path, spec=spec, rows=rows, best=rows[0], base=None)
    csv_path, md_path = write_tables(report)
    assert md_path.read_text().startswith("# Sweep `scifact-mining`")
    assert float(next(csv.DictReader(csv_path.open()))["max_neg/random_fill"]) == 0.04
    assert "| 1 | a **best** | completed | 8 | 0.7000 | 0.0001 | 0.04 |" in md_path.read_text()
