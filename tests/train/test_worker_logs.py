"""A worker's console: Ray Train's per-report INFO line is dropped, warnings and our lines stay,
and Ray Train's print patch (each worker print twice on the driver) is turned off."""

from __future__ import annotations

import builtins
import inspect
import logging

from ray.train.v2._internal.execution import context as train_context
from ray.train.v2._internal.logging.patch_print import patch_print_function

from angle_ray.train.worker_logs import REPORT_LOGGER, WORKER_ENV_VARS, quiet_report_log


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_quieted_logger_is_the_one_that_logs_each_report():
    assert "Reporting training result" in inspect.getsource(train_context)
    assert train_context.logger is logging.getLogger(REPORT_LOGGER)


def test_report_lines_are_dropped_while_warnings_and_project_lines_stay():
    report_logger, root = logging.getLogger(REPORT_LOGGER), logging.getLogger()
    saved = (report_logger.level, root.level)
    kept = _Kept()
    root.addHandler(kept)
    root.setLevel(logging.INFO)  # as Ray Train configures a worker's root logger
    try:
        assert report_logger.isEnabledFor(logging.INFO)  # before: the line reaches the console
        assert quiet_report_log() is report_logger
        assert report_logger.level == logging.WARNING
        train_context.logger.info("Reporting training result 3: TrainingReport(metrics=...)")
        train_context.logger.warning("checkpoint upload is slow")
        logging.getLogger("angle_ray.train.loop").info("[angle-ray] resumed from checkpoint")
    finally:
        root.removeHandler(kept)
        report_logger.setLevel(saved[0])
        root.setLevel(saved[1])
    assert kept.messages == ["checkpoint upload is slow", "[angle-ray] resumed from checkpoint"]


def test_the_worker_env_turns_off_ray_trains_print_patch(monkeypatch):
    original = builtins.print
    monkeypatch.setattr(builtins, "print", original)  # restored after the test whatever happens
    for name in WORKER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    patch_print_function()
    assert builtins.print is not original  # Ray's default: print tees to the root logger
    builtins.print = original
    for name, value in WORKER_ENV_VARS.items():
        monkeypatch.setenv(name, value)
    patch_print_function()
    assert builtins.print is original


def test_the_trainer_gives_its_workers_that_env(tmp_path):
    from angle_ray.config import config_from_dict
    from angle_ray.train.driver import build_trainer
    from angle_ray.train.plan import WorkerPlan

    cfg = config_from_dict({"data": [{"path": "x.jsonl"}], "train": {"storage_path": str(tmp_path)}})
    plan = WorkerPlan(streams=[], total_steps=1, pad_id=0, left_pad=False, dev=None, negatives=None)
    trainer = build_trainer(cfg, {}, plan)
    assert trainer.run_config.worker_runtime_env["env_vars"] == WORKER_ENV_VARS
