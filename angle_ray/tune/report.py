"""What a sweep leaves behind for a person: tables, plots and the best trial's job file.

Written into the sweep folder from Tune's experiment state and each trial's metrics.csv, so it
can be rebuilt at any time (also after an interrupted or resumed sweep):

- `results.csv` and `results.md` (sorted by the metric, best first): every trial's status
  (completed, stopped early by the scheduler, error, unfinished), last step, metric and values,
  and the largest value of each metric the space's `report:` names (from the trial's
  metrics.csv; e.g. `neg/random_fill`, the random-fill share of the negatives trained on);
- `plots/<metric>_vs_<key>.png` for each searched key and `plots/<metric>_curves.png` (the dev
  metric of every trial against the step);
- `best.yaml`: the best completed trial's full job, with its own `train.name`/`storage_path`,
  so `angle-ray train --config <sweep>/best.yaml` reruns it as is.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import ExperimentAnalysis

from angle_ray.config import dump_config
from angle_ray.train.progress import read_metrics
from angle_ray.tune.layout import Sweep
from angle_ray.tune.space import Param, SweepSpec, with_values

BEST_RUN_NAME = "best"


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | stopped | error | unfinished
    step: int | None
    total_steps: int | None
    metric: float
    values: dict[str, Any]
    is_base: bool = False
    failures: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    run_dir: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # the space's `report:` metrics, max

    @property
    def peak(self) -> float:
        vals = [v for _, v in self.curve if math.isfinite(v)]
        return max(vals) if vals else float("nan")

    def extras(self, keys: list[str]) -> list[float]:
        """The `report:` maxima in `keys` order; NaN where the trial never reported one."""
        return [self.extra.get(k, float("nan")) for k in keys]


@dataclass
class Report:
    folder: Path
    spec: SweepSpec  # the space: metric, mode, searched params, `report:` keys, name
    rows: list[TrialRow]  # sorted, best first
    best: TrialRow | None
    base: TrialRow | None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def extra_keys(self) -> list[str]:
        return self.spec.report

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def unfinished(self) -> int:
        return self.count("unfinished")

    @property
    def stopped(self) -> int:
        return self.count("stopped")

    def summary(self) -> str:
        lines = [(f"{len(self.rows)} trials: {self.count('completed')} completed, "
                  f"{self.stopped} stopped early, {self.count('error')} failed, "
                  f"{self.unfinished} unfinished")]
        if self.best:
            lines.append(f"best: trial {self.best.trial_id}, {self.metric} {self.best.metric:.4f}")
        if self.base:
            lines.append(f"base config: trial {self.base.trial_id}, {self.metric} "
                         f"{self.base.metric:.4f} ({self.base.status})")
        return "\n".join(lines)


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, metric) of every report of a trial's Train run that carries the metric."""
    pts = {}
    for row in read_metrics(run_dir):
        value = _float(row.get(metric))
        if math.isfinite(value) and "step" in row:
            pts[int(row["step"])] = value  # a resumed run re-reports a step: keep the newest
    return sorted(pts.items())


def largest(run_dir: Path, keys: list[str]) -> dict[str, float]:
    """The largest value of each of `keys` over a trial's Train reports (nan when never reported)."""
    rows = read_metrics(run_dir) if keys else []
    out = {}
    for key in keys:
        vals = [v for v in (_float(r.get(key)) for r in rows) if math.isfinite(v)]
        out[key] = max(vals) if vals else float("nan")
    return out


def tune_curve(df, metric: str) -> list[tuple[int, float]]:
    """(step, metric) of the results Tune received from a trial (steps count on across PBT
    generations); a restarted trial re-reports steps: the newest wins."""
    if df is None or "step" not in getattr(df, "columns", []) or metric not in df.columns:
        return []
    pts = {}
    for step, value in zip(df["step"], df[metric]):
        v = _float(value)
        if math.isfinite(v) and math.isfinite(_float(step)):
            pts[int(step)] = v
    return sorted(pts.items())


def collect(sweep: Sweep) -> list[TrialRow]:
    """One row per trial Tune knows of, from its experiment state and the trial's run folder."""
    spec = sweep.spec
    analysis = ExperimentAnalysis(str(sweep.tune_dir))
    frames = analysis.trial_dataframes
    base = sweep.base_values() if spec.include_base else None
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        step = last.get("step")
        total = last.get("total_steps")
        if trial.status == "ERROR":
            status = "error"
        elif trial.status != "TERMINATED":
            status = "unfinished"
        elif step is not None and total is not None and step < total:
            status = "stopped"
        else:
            status = "completed"
        values = spec.decode(trial.config)
        run_dir = sweep.trials_dir / trial.trial_id
        rows.append(TrialRow(
            trial_id=trial.trial_id, status=status, step=step, total_steps=total,
            metric=_float(last.get(spec.metric)), values=values,
            is_base=base is not None and all(_same(values[k], base[k]) for k in values),
            failures=trial.num_failures,
            curve=(tune_curve(frames.get(Path(trial.path).name), spec.metric)
                   or read_curve(run_dir, spec.metric)),
            run_dir=str(run_dir), extra=largest(run_dir, spec.report)))
    return rows


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return list(a) == list(b) if isinstance(a, (list, tuple)) else a == b


def rank(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (not math.isfinite(r.metric),
                                       sign * r.metric if math.isfinite(r.metric) else 0.0))


def pick_best(rows: list[TrialRow]) -> TrialRow | None:
    """The best trial that ran its whole budget (a stopped trial's metric is from fewer steps);
    any trial with a metric when none completed."""
    done = [r for r in rows if r.status == "completed" and math.isfinite(r.metric)]
    scored = done or [r for r in rows if math.isfinite(r.metric)]
    return scored[0] if scored else None  # rows are ranked already


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def write_tables(report: Report) -> tuple[Path, Path]:
    keys = [p.key for p in report.spec.params]
    extra = report.extra_keys
    m = report.metric
    csv_path = report.folder / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "trial_id", "status", "step", "total_steps", m, f"peak_{m}",
                    *keys, *[f"max_{k}" for k in extra], "is_base", "failures", "run_dir"])
        for i, r in enumerate(report.rows, 1):
            w.writerow([i, r.trial_id, r.status, r.step, r.total_steps, r.metric, r.peak,
                        *[_fmt(r.values.get(k)) for k in keys],
                        *r.extras(extra),
                        r.is_base, r.failures, r.run_dir])
    md_path = report.folder / "results.md"
    intro = (f"Metric `{m}` ({report.spec.mode}), sorted best first. status: completed = ran its "
             "whole budget; stopped = stopped early by the scheduler.")
    lines = [f"# Sweep `{report.spec.name}`", "", intro, "",
             *[f"- {s}" for s in report.summary().splitlines()], "",
             "| rank | trial | status | step | " + f"{m} | "
             + " | ".join([f"`{k}`" for k in keys] + [f"max `{k}`" for k in extra]) + " |",
             "|---" * (5 + len(keys) + len(extra)) + "|"]
    for i, r in enumerate(report.rows, 1):
        name = r.trial_id + (" (base)" if r.is_base else "") + (" **best**" if r is report.best else "")
        cells = [_fmt(v) for v in [r.values.get(k) for k in keys] + r.extras(extra)]
        lines.append(f"| {i} | {name} | {r.status} | {r.step if r.step is not None else '-'} | "
                     f"{r.metric:.4f} | " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


STYLE = {"completed": ("o", "tab:blue"), "stopped": ("x", "tab:gray"),
         "error": ("s", "tab:red"), "unfinished": ("^", "tab:orange")}


def _position(p: Param, value) -> float:
    """Where a trial sits on a parameter's axis: its value, or its choice's index."""
    if p.numeric and not p.encoded:
        return float(value)
    cats = [_fmt(v) for v in p.values]
    return cats.index(_fmt(value)) if _fmt(value) in cats else -1


def write_plots(report: Report) -> dict[str, Path]:
    """`plots/<metric>_vs_<key>.png` per searched key and `plots/<metric>_curves.png`."""
    # lazy: pyplot takes seconds to import, and the Agg backend must be chosen before it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = report.folder / "plots"
    out_dir.mkdir(exist_ok=True)
    figures = {}
    for p in report.spec.params:
        fig, ax = plt.subplots(figsize=(6, 4))
        _plot_against_param(ax, report, p)
        figures[p.key] = (fig, out_dir / f"{report.metric}_vs_{p.key}.png")
    fig, ax = plt.subplots(figsize=(8, 5))
    _plot_curves(ax, report)
    figures["curves"] = (fig, out_dir / f"{report.metric}_curves.png")
    for fig, path in figures.values():
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return {key: path for key, (_, path) in figures.items()}


def _plot_against_param(ax, report: Report, p: Param) -> None:
    """Each trial's last metric against its value of `p`, marked by status; best and base ringed."""
    m = report.metric
    if p.numeric and not p.encoded:
        values = [float(v) for v in p.values]
        if p.log or (min(values) > 0 and max(values) / min(values) >= 100):
            ax.set_xscale("log")
    else:
        cats = [_fmt(v) for v in p.values]
        ax.set_xticks(range(len(cats)), cats)

    def xs_of(rows):
        return [_position(p, r.values[p.key]) for r in rows]

    scored = [r for r in report.rows if math.isfinite(r.metric)]
    for status, (marker, color) in STYLE.items():
        rows = [r for r in scored if r.status == status]
        if rows:
            ax.scatter(xs_of(rows), [r.metric for r in rows], marker=marker, color=color,
                       label=status, s=40)
    for r, label, marker in ((report.best, "best", "*"), (report.base, "base config", "D")):
        if r is not None and math.isfinite(r.metric):
            ax.scatter(xs_of([r]), [r.metric], marker=marker, s=160, facecolors="none",
                       edgecolors="black", label=label)
    ax.set_xlabel(p.key)
    ax.set_ylabel(f"{m} (last report)")
    ax.set_title(f"{m} against {p.key}")
    ax.legend(fontsize=8)


def _plot_curves(ax, report: Report) -> None:
    """The metric of every trial against the step; the best thick, stopped trials dashed."""
    for r in report.rows:
        if not r.curve:
            continue
        xs, ys = zip(*r.curve)
        label = r.trial_id + (" (base)" if r.is_base else "") + (" best" if r is report.best else "")
        ax.plot(xs, ys, marker=".", label=label, linewidth=2.5 if r is report.best else 1.0,
                linestyle="--" if r.status == "stopped" else "-")
    ax.set_xlabel("step")
    ax.set_ylabel(report.metric)
    ax.set_title(f"{report.metric} of every trial (dashed: stopped early)")
    ax.legend(fontsize=7, ncol=2)


def write_best_config(sweep: Sweep, best: TrialRow) -> Path:
    """The best trial's full job with its own run name and storage (the sweep folder)."""
    cfg = with_values(sweep.job, best.values, sweep.spec.source)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"name": BEST_RUN_NAME, "storage_path": str(sweep.folder)})})
    path = sweep.folder / "best.yaml"
    dump_config(cfg, path)
    header = (f"# Best trial {best.trial_id} of sweep {sweep.spec.name} ({sweep.spec.source}): "
              f"{sweep.spec.metric} {best.metric:.4f} at step {best.step}.\n"
              f"# Rerun it: angle-ray train --config {path}\n")
    if sweep.spec.scheduler.type == "pbt":
        header += ("# PBT: these are the trial's last values; its weights came through other "
                   "trials (trials/*-g*/warm_start.json), so a rerun trains them from the start.\n")
    path.write_text(header + path.read_text())
    return path


def write_report(sweep: Sweep) -> Report:
    rows = rank(collect(sweep), sweep.spec.mode)
    report = Report(folder=sweep.folder, spec=sweep.spec, rows=rows, best=pick_best(rows),
                    base=next((r for r in rows if r.is_base), None))
    csv_path, md_path = write_tables(report)
    report.files = {"csv": csv_path, "markdown": md_path, **write_plots(report)}
    if report.best is not None:
        report.files["best"] = write_best_config(sweep, report.best)
    return report
