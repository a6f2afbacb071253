"""The operator API: report first, act only when asked. Every call returns a typed
report that also serialises to JSON (``report.to_dict()``)."""

from __future__ import annotations

from scrypath_sa.ops.status import (
    FailedEvent,
    FailedReport,
    ModelStatus,
    StatusReport,
    failed,
    retry,
    status,
)
from scrypath_sa.ops.sweep import SweepReport, confirm, sweep

__all__ = [
    "FailedEvent",
    "FailedReport",
    "ModelStatus",
    "StatusReport",
    "SweepReport",
    "confirm",
    "failed",
    "retry",
    "status",
    "sweep",
]
