"""The worker's metrics window, metrics.csv written by the controller side and read back."""

import math
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from angle_ray.train.progress import MetricsCsv, ScalarWriter, progress_line, read_metrics
from angle_ray.train.reporting import Window
from angle_ray.train.step import StepResult


def test_window_averages_loss_and_parts_and_sums_examples_over_its_steps():
    w = Window()
    w.add(StepResult(loss=1.0, parts={"ibn": 2.0, "angle": 0.5}, tokens=100, examples=8), 0.01)
    w.add(StepResult(loss=3.0, parts={"ibn": 4.0}, tokens=300, examples=8), 0.03)
    time.sleep(0.05)
    out = w.flush()
    assert out["loss"] == pytest.approx(2.0)
    assert out["loss/ibn"] == pytest.approx(3.0)
    assert out["loss/angle"] == pytest.approx(0.25)  # a term missing in a step counts as 0
    assert out["compute_s"] == pytest.approx(0.04)
    assert out["seconds"] >= 0.05
    assert out["samples_per_s"] == pytest.approx(16 / out["seconds"])
    assert out["tokens_per_s"] == pytest.approx(400 / out["seconds"])
    empty = w.flush()  # flushing starts a new window
    assert empty["loss"] == 0.0 and empty["compute_s"] == 0.0


def test_read_metrics_parses_numbers_and_leaves_out_empty_cells(tmp_path):
    csv = MetricsCsv(tmp_path / "metrics.csv")
    csv.add({"step": 1, "total_steps": 4, "loss": 0.75, "lr": 1e-5})
    csv.add({"step": 2, "total_steps": 4, "loss": float("nan"), "dev_metric": 81.5, "lr": 2e-5})
    rows = read_metrics(tmp_path)
    assert rows[0] == {"step": 1, "total_steps": 4, "loss": 0.75, "lr": 1e-5}  # no dev_metric
    assert rows[1]["dev_metric"] == 81.5 and math.isnan(rows[1]["loss"])
    assert isinstance(rows[1]["step"], int)
    # a resumed run appends to the same file (rows of the earlier run are kept)
    MetricsCsv(tmp_path / "metrics.csv").add({"step": 2, "total_steps": 4, "loss": 0.5, "lr": 0.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 2]
    assert read_metrics(tmp_path / "nothing-here") == []


def test_progress_line_shows_eta_from_the_steps_done_since_the_start():
    m = {"step": 30, "total_steps": 50, "loss": 0.5, "samples_per_s": 10.0, "lr": 1e-5,
         "dev_metric": 80.0}
    line = progress_line(m, elapsed=20.0, start_step=10)  # 20 steps in 20 s: 20 s left
    assert "step 30/50" in line and "loss 0.5000" in line and "dev 80.00" in line
    assert line.endswith("ETA 0:20")


def test_scalar_writer_events_read_back_with_tensorboard(tmp_path):
    writer = ScalarWriter(tmp_path)
    writer.add_scalars({"loss": 2.5, "dev_metric": 81.25}, step=2)
    writer.add_scalars({"loss": 1.5}, step=4)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["dev_metric", "loss"]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(2, 2.5), (4, 1.5)]
    assert [(e.step, e.value) for e in events.Scalars("dev_metric")] == [(2, 81.25)]


def test_modules_loaded_by_ray_trains_controller_and_data_actors_do_not_import_torch():
    # they deserialize the progress callback and the stream's read/normalise functions: torch
    # there would cost every run start ~2 s of CPU per process
    code = ("import sys, angle_ray.train.progress, angle_ray.data.stream; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
