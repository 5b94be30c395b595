"""A worker's console: Ray Train's per-report log line kept out of it, each print shown once.

Ray Train logs every `ray.train.report` on the worker as one multi-line INFO record,
"Reporting training result N: TrainingReport(...) from rank R". Its logger is named by its
module's file path (`logging.getLogger(__file__)`), so it sits outside the `ray.train` logger
tree, propagates to the worker's root logger and its console handler, and `log_to_driver` copies
it to the driver's console, where it buries the `[angle-ray] step ...` progress lines.
`quiet_report_log` (called as a worker sets up) drops those INFO records; the progress line
(printed by the controller's callback) and every warning stay.

Ray Train also patches `print` on its workers to tee each line to stdout and to the root
logger's console handler, so every worker print reached the driver twice. `WORKER_ENV_VARS`
(the workers' runtime env) turns that patch off: a print goes to stdout once, and Ray keeps it
in its worker-*.out log.
"""

from __future__ import annotations

import logging

from ray.train.v2._internal.constants import ENABLE_PRINT_PATCH_ENV_VAR
from ray.train.v2._internal.execution import context as train_context

REPORT_LOGGER = train_context.__file__  # the name Ray Train gives that logger
WORKER_ENV_VARS = {ENABLE_PRINT_PATCH_ENV_VAR: "0"}


def quiet_report_log() -> logging.Logger:
    """Drop the per-report INFO records; that logger's warnings and errors still show."""
    report_logger = logging.getLogger(REPORT_LOGGER)
    report_logger.setLevel(logging.WARNING)
    return report_logger
