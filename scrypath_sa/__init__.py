"""scrypath_sa: keep an OpenSearch index in step with SQLAlchemy rows.

Changed rows are recorded in a ``sync_events`` outbox in the same transaction as the
data; after commit a *mode* (inline, manual, dramatiq) decides when and where the
backend write runs. Every unit of work moves along one lifecycle and the library never
reports more than it knows.
"""

from __future__ import annotations

from scrypath_sa import errors
from scrypath_sa.config import Config
from scrypath_sa.install import (
    configure,
    current_config,
    disabled,
    last_outcome,
    unconfigure,
)
from scrypath_sa.listeners import mark_changed
from scrypath_sa.mixin import Searchable
from scrypath_sa.modes.manual import ConfirmReport
from scrypath_sa.modes.selection import set_session_mode, sync_mode
from scrypath_sa.ops import (
    BackfillReport,
    FailedReport,
    PruneReport,
    ReconcileReport,
    ReindexReport,
    RunProgress,
    StatusReport,
    SweepReport,
    backfill,
    confirm,
    cutover,
    failed,
    prune,
    rebuild_progress,
    reconcile,
    reindex,
    retry,
    start_backfill,
    start_reindex,
    status,
    sweep,
)
from scrypath_sa.outcome import Failure, Outcome
from scrypath_sa.schema import State, metadata, sync_events
from scrypath_sa.search import SearchResult, search

__version__ = "0.1.0.dev0"

__all__ = [
    "BackfillReport",
    "Config",
    "ConfirmReport",
    "FailedReport",
    "Failure",
    "Outcome",
    "PruneReport",
    "ReconcileReport",
    "ReindexReport",
    "RunProgress",
    "SearchResult",
    "Searchable",
    "State",
    "StatusReport",
    "SweepReport",
    "__version__",
    "backfill",
    "configure",
    "confirm",
    "current_config",
    "cutover",
    "disabled",
    "errors",
    "failed",
    "last_outcome",
    "mark_changed",
    "metadata",
    "prune",
    "rebuild_progress",
    "reconcile",
    "reindex",
    "retry",
    "search",
    "set_session_mode",
    "start_backfill",
    "start_reindex",
    "status",
    "sweep",
    "sync_events",
    "sync_mode",
    "unconfigure",
]
