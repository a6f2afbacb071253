"""prune(): drop old completed events and old physical indices; never failed work unless
asked, never an index the alias points at or one still being built."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select

from scrypath_sa import outbox
from scrypath_sa.config import Config
from scrypath_sa.ops.common import config_or_current, jsonable, resolve_models
from scrypath_sa.outbox import State, sync_events


@dataclass
class PruneReport:
    events_deleted: int = 0
    failed_events_deleted: int = 0
    indices_deleted: list[str] = field(default_factory=list)
    indices_kept: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        return data


def _delete_events(config: Config, states: list[str], stamp: Any, older_than: dt.timedelta,
                   dry_run: bool) -> int:
    t = sync_events
    cutoff = outbox.utcnow() - older_than
    engine = config.require_bind()
    deleted = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.execute(select(t.c.id).where(outbox.in_states(states), stamp <= cutoff)
                                    .order_by(t.c.id).limit(5000)).scalars())
            if not ids or dry_run:
                return deleted + len(ids) if dry_run else deleted
            conn.execute(delete(t).where(outbox.id_filter(conn, t.c.id, ids)))
        deleted += len(ids)


def prune(models: Iterable[type | str] | None = None, *,
          completed_older_than: dt.timedelta = dt.timedelta(days=7),
          keep_previous_indices: int = 1, include_failed: bool = False,
          failed_older_than: dt.timedelta = dt.timedelta(days=30), dry_run: bool = False,
          config: Config | None = None) -> PruneReport:
    """Delete ``completed`` events older than ``completed_older_than`` and, per model,
    physical indices that the alias no longer points at beyond the newest
    ``keep_previous_indices`` (kept for rollback). Indices newer than the live one (a
    rebuild in progress) are never touched. ``discarded`` events go only with
    ``include_failed`` (and ``retrying`` ones never). ``dry_run`` reports only."""
    config = config_or_current(config)
    t = sync_events
    report = PruneReport(dry_run=dry_run)
    report.events_deleted = _delete_events(config, [State.COMPLETED.value], t.c.completed_at,
                                           completed_older_than, dry_run)
    if include_failed:
        report.failed_events_deleted = _delete_events(
            config, [State.DISCARDED.value], t.c.discarded_at, failed_older_than, dry_run)
    for info in resolve_models(models):
        physical = config.backend.physical_indices(info.index)
        live = [p for p in physical if p.aliased]
        newest_live = max((p.created_at or "" for p in live), default="")
        previous = [p for p in physical if not p.aliased and (p.created_at or "") <= newest_live]
        keep = previous[len(previous) - keep_previous_indices:] if keep_previous_indices else []
        for p in physical:
            if p in previous and p not in keep:
                if not dry_run:
                    config.backend.delete_index(p.name)
                report.indices_deleted.append(p.name)
            else:
                report.indices_kept.append(p.name)
    return report
