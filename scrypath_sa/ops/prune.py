"""prune(): drop old completed events and old physical indices; never failed work unless
asked, never an index the alias points at or one still being built."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scrypath_sa import outbox
from scrypath_sa.backends.base import AdminBackend, admin_of
from scrypath_sa.config import Config
from scrypath_sa.errors import BackendError
from scrypath_sa.install import resolve_config
from scrypath_sa.ops.common import jsonable, resolve_models
from scrypath_sa.redaction import redact
from scrypath_sa.schema import State, utcnow


@dataclass
class PruneReport:
    events_deleted: int = 0
    failed_events_deleted: int = 0
    indices_deleted: list[str] = field(default_factory=list)
    indices_kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        return data


def _delete_events(config: Config, state: State, older_than: dt.timedelta,
                   dry_run: bool) -> int:
    cutoff = utcnow() - older_than
    deleted = 0
    while True:
        with config.bind.begin() as conn:
            found = outbox.delete_old(conn, state, cutoff, dry_run)
        deleted += found
        if not found or dry_run:
            return deleted


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
    config = resolve_config(config)
    backend = admin_of(config.backend)
    infos = resolve_models(models)
    report = PruneReport(dry_run=dry_run)
    report.events_deleted = _delete_events(config, State.COMPLETED, completed_older_than,
                                           dry_run)
    if include_failed:
        report.failed_events_deleted = _delete_events(config, State.DISCARDED,
                                                      failed_older_than, dry_run)
    for info in infos:
        with config.bind.connect() as conn:
            last = outbox.checkpoint(conn, f"cutover:{info.index}")
        last_live = list(last.position or []) if last is not None else []
        try:
            _prune_indices(backend, info.index, keep_previous_indices, last_live, dry_run,
                           report)
        except BackendError as exc:
            report.errors.append(f"{info.name}: {redact(exc)}")
    return report


def _prune_indices(backend: AdminBackend, alias: str, keep_previous_indices: int,
                   last_live: list[str], dry_run: bool, report: PruneReport) -> None:
    """Delete ``alias``'s physical indices that are neither live, nor newer than the
    live one (a rebuild), nor kept for rollback: the ``keep_previous_indices`` kept are
    first those the alias pointed to before its last cutover (``last_live``), then the
    newest others (an abandoned rebuild never served, so it comes last)."""
    physical = backend.physical_indices(alias)
    live = [p for p in physical if p.aliased]
    newest_live = max((p.created_at or "" for p in live), default="")
    previous = [p for p in physical if not p.aliased and (p.created_at or "") <= newest_live]
    ranked = sorted(previous, key=lambda p: (p.name in last_live, p.created_at or ""),
                    reverse=True)
    keep = ranked[:keep_previous_indices]
    for p in physical:
        if p in previous and p not in keep:
            if not dry_run:
                backend.delete_index(p.name)
            report.indices_deleted.append(p.name)
        else:
            report.indices_kept.append(p.name)
