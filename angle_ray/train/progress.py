"""What a person watches during a run: a live line, metrics.csv, TensorBoard, a PNG at the end.

`ProgressCallback` runs in Ray Train's controller (it receives every `ray.train.report`),
prints one line per report (step/total, loss, samples/s, ETA, dev metric) and appends the
metrics to `<run>/metrics.csv` and TensorBoard event files under `<run>/tensorboard/`.
`read_metrics` reads metrics.csv back (one dict per report); `plot_curves` turns it into
`<run>/curves.png` when the run ends. The worker side of the reports is
`angle_ray.train.reporting`.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import matplotlib
from ray.train import UserCallback
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

METRICS_FILE = "metrics.csv"


def _value(text: str) -> int | float | str:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _value(v) for k, v in row.items() if v not in (None, "")}
                for row in csv.DictReader(f)]


def read_metrics(run_dir: str | Path) -> list[dict[str, int | float | str]]:
    """`<run_dir>/metrics.csv` as one dict per report, in file order ([] without the file).

    A cell left empty (a metric that report did not carry) is absent from its dict; numbers
    come back as int or float (`nan` as float nan), anything else as the string written.
    A resumed run appends its reports, so a step can appear twice: the later row is newer.
    """
    return _read_rows(Path(run_dir) / METRICS_FILE)


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(m: dict, elapsed: float, start_step: int) -> str:
    step, total = m["step"], m["total_steps"]
    done = step - start_step
    eta = elapsed / done * (total - step) if done > 0 else float("inf")
    parts = [f"step {step}/{total}"]
    if "loss" in m:
        parts.append(f"loss {m['loss']:.4f}")
    if "samples_per_s" in m:
        parts.append(f"{m['samples_per_s']:.1f} samples/s")
    if "dev_metric" in m and not math.isnan(m["dev_metric"]):
        parts.append(f"dev {m['dev_metric']:.2f}")
    parts.append(f"lr {m['lr']:.2e}")
    parts.append(f"ETA {_fmt_eta(eta)}")
    return "[angle-ray] " + " | ".join(parts)


class ScalarWriter:
    """TensorBoard scalars through tensorboard's own event writer. torch's SummaryWriter would
    make Ray Train's controller import torch (~2 s of CPU at every run start) for a few floats."""

    def __init__(self, logdir: str | Path):
        self.events = EventFileWriter(str(logdir))

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.events.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.events.flush()


class ProgressCallback(UserCallback):
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.start = None
        self.start_step = 0
        self.writer = None
        self.csv = MetricsCsv(Path(run_dir) / METRICS_FILE)

    def _tb(self):
        if self.writer is None:
            self.writer = ScalarWriter(Path(self.run_dir) / "tensorboard")
        return self.writer

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0] if metrics else {}
        if "step" not in m:
            return
        now = time.time()
        if self.start is None or m.get("resumed_from", 0) != self.start_step:
            # first report of this worker group: measure from the step it started at
            self.start_step = m.get("resumed_from", 0)
            self.start = now - m.get("seconds", 0.0)
        print(progress_line(m, now - self.start, self.start_step), flush=True)
        self.csv.add(m)
        self._tb().add_scalars({k: v for k, v in m.items() if isinstance(v, (int, float))
                                and k != "step" and not math.isnan(v)}, m["step"])


class MetricsCsv:
    """metrics.csv: appends a row per report; rewrites the file only when a row brings a new
    column (e.g. dev_metric). Rows of an earlier run of the same name are read once."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] | None = None
        self.keys: list[str] = []

    def add(self, row: dict) -> None:
        if self.rows is None:
            self.rows = _read_rows(self.path)
            for r in self.rows:
                self.keys.extend(k for k in r if k not in self.keys)
        row = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
        self.rows.append(row)
        new_keys = [k for k in row if k not in self.keys]
        self.keys.extend(new_keys)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new_keys or not self.path.exists():
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.keys)
                w.writeheader()
                w.writerows(self.rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys).writerow(row)


def plot_curves(run_dir: str | Path) -> Path | None:
    """Loss (and dev metric when present) against step, from metrics.csv, as curves.png."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows
               if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    has_dev = bool(series("dev_metric")[0])
    fig, axes = plt.subplots(1, 2 if has_dev else 1, figsize=(11 if has_dev else 6, 4))
    axes = list(axes) if has_dev else [axes]
    x, y = series("loss")
    axes[0].plot(x, y, label="loss")
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        xs, ys = series(key)
        axes[0].plot(xs, ys, label=key.split("/", 1)[1], alpha=0.7)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    axes[0].legend()
    if has_dev:
        x, y = series("dev_metric")
        axes[1].plot(x, y, marker="o")
        axes[1].set_xlabel("step")
        axes[1].set_title("dev metric")
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
