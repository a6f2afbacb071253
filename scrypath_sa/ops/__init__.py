"""The operator API: report first, act only when asked. Every call returns a typed
report that also serialises to JSON (``report.to_dict()``)."""

from __future__ import annotations

from scrypath_sa.ops.distributed import (
    RunProgress,
    rebuild_progress,
    start_backfill,
    start_reindex,
)
from scrypath_sa.ops.prune import PruneReport, prune
from scrypath_sa.ops.rebuild import (
    BackfillReport,
    Progress,
    ReindexReport,
    backfill,
    cutover,
    reindex,
)
from scrypath_sa.ops.reconcile import ModelDrift, ReconcileReport, reconcile
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
    "BackfillReport",
    "FailedEvent",
    "FailedReport",
    "ModelDrift",
    "ModelStatus",
    "Progress",
    "PruneReport",
    "ReconcileReport",
    "ReindexReport",
    "RunProgress",
    "StatusReport",
    "SweepReport",
    "backfill",
    "confirm",
    "cutover",
    "failed",
    "prune",
    "rebuild_progress",
    "reconcile",
    "reindex",
    "retry",
    "start_backfill",
    "start_reindex",
    "status",
    "sweep",
]
