"""``manual``: the write is handed to the backend; visibility is confirmed explicitly.

After commit the bulk is sent without waiting for a refresh, so events end at
``backend_accepted``. :func:`confirm` (or ``scrypath-sa confirm``) refreshes, checks
each document at its version, and only then marks events ``completed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from scrypath_sa import outbox, processor
from scrypath_sa.modes.base import Mode
from scrypath_sa.outbox import State, sync_events

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config
    from scrypath_sa.outcome import Outcome


def _newest_writes(engine: Engine, index: str, doc_ids: list[str],
                   accepted: list[Any]) -> dict[str, tuple[str, int]]:
    """Per document, the (operation, version) of the newest write sent: among the
    accepted events being confirmed and the completed ones already recorded."""
    t = sync_events
    newest: dict[str, tuple[str, int]] = {}

    def consider(doc_id: str, operation: str, version: int | None) -> None:
        if version is not None and version > newest.get(doc_id, ("", -1))[1]:
            newest[doc_id] = (operation, version)

    for row in accepted:
        consider(row.document_id, row.operation, row.version_sent)
    with engine.connect() as conn:
        for start in range(0, len(doc_ids), 1000):
            query = select(t.c.document_id, t.c.operation, t.c.version_sent).where(
                t.c.index_name == index, t.c.document_id.in_(doc_ids[start:start + 1000]),
                outbox.completed())
            for doc_id, operation, version in conn.execute(query):
                consider(doc_id, operation, version)
    return newest


class ManualMode(Mode):
    name = "manual"

    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        return processor.process(config, event_ids, mode=self.name, wait_for_visibility=False,
                                 engine=engine)


@dataclass
class ConfirmReport:
    """What :func:`confirm` verified: ``confirmed`` events are now ``completed``;
    ``missing`` ones were not found in the index at their version and stay
    ``backend_accepted``."""

    confirmed: list[int] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {"confirmed": self.confirmed, "missing": self.missing, "ok": self.ok}


def confirm(config: Config, event_ids: Sequence[int] | None = None,
            limit: int = 10_000) -> ConfirmReport:
    """Refresh, verify ``backend_accepted`` events at their versions, mark them completed.

    A document counts as confirmed when the index holds it at the version sent or a
    newer one (upserts), or does not hold it / holds a newer write (deletes).
    """
    engine = config.require_bind()
    t = sync_events
    query = (select(t.c.id, t.c.index_name, t.c.document_id, t.c.operation, t.c.version_sent)
             .where(outbox.in_states([State.BACKEND_ACCEPTED])).order_by(t.c.id).limit(limit))
    if event_ids is not None:
        query = query.where(t.c.id.in_(list(event_ids)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    report = ConfirmReport()
    by_index: dict[str, list[Any]] = {}
    for row in rows:
        by_index.setdefault(row.index_name, []).append(row)
    for index, group in by_index.items():
        config.backend.refresh(index)
        doc_ids = sorted({r.document_id for r in group})
        stored = config.backend.versions(index, doc_ids)
        newest = _newest_writes(engine, index, doc_ids, group)
        for row in group:
            version = stored.get(row.document_id)
            operation, sent = newest[row.document_id]
            # An event superseded by a newer write of the same document is judged by that
            # newer write: the index only has to reflect the newest one.
            if operation == "delete":
                good = version is None or version > sent
            else:
                good = version is not None and version >= sent
            if good:
                report.confirmed.append(row.id)
            else:
                report.missing.append({
                    "event_id": row.id, "index": index, "document_id": row.document_id,
                    "operation": row.operation, "version_sent": row.version_sent,
                    "found_version": version,
                })
    with engine.begin() as conn:
        outbox.mark(conn, report.confirmed, State.COMPLETED, only_from=[State.BACKEND_ACCEPTED])
    return report
