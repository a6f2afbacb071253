"""``manual``: the write is handed to the backend; visibility is confirmed explicitly.

After commit the bulk is sent without waiting for a refresh, so events end at
``backend_accepted``. :func:`confirm` (or ``scrypath-sa confirm``) refreshes, checks
each document at its version, and only then marks events ``completed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scrypath_sa import outbox, processor, visibility
from scrypath_sa.errors import BackendError
from scrypath_sa.modes.base import Mode
from scrypath_sa.redaction import redact
from scrypath_sa.schema import State
from scrypath_sa.visibility import Visibility

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config
    from scrypath_sa.outcome import Outcome


NOT_FOUND = "not_found_at_version"
"""The error kind confirm() leaves on an accepted write it did not find in the index."""


class ManualMode(Mode):
    """Send after commit without waiting: success is ``backend_accepted``."""

    name = "manual"
    promise = frozenset({State.BACKEND_ACCEPTED})
    merges = True

    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        return processor.process(config, event_ids, mode=self.name,
                                 visibility=Visibility.NONE, bind=engine)


@dataclass
class ConfirmReport:
    """What :func:`confirm` verified: ``confirmed`` events are now ``completed``;
    ``missing`` ones were not found in the index at their version, and ``unverified``
    ones could not be checked (the backend failed); both stay ``backend_accepted``."""

    confirmed: list[int] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    unverified: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unverified

    def to_dict(self) -> dict[str, Any]:
        return {"confirmed": self.confirmed, "missing": self.missing,
                "unverified": self.unverified, "ok": self.ok}


def confirm(config: Config, event_ids: Sequence[int] | None = None,
            limit: int = 10_000) -> ConfirmReport:
    """Refresh, verify ``backend_accepted`` events at their versions, mark them completed.

    A document counts as confirmed when the index holds it at the version sent or a
    newer one (upserts), or does not hold it / holds a newer write (deletes). An event
    superseded by a newer write of the same document is judged by that newer write.
    """
    engine = config.bind
    with engine.connect() as conn:
        rows = outbox.accepted(conn, event_ids, limit)
    report = ConfirmReport()
    by_index: dict[str, list[Any]] = {}
    for row in rows:
        by_index.setdefault(row.index_name, []).append(row)
    for index, group in by_index.items():
        doc_ids = sorted({r.document_id for r in group})
        try:
            visibility.refresh(config.backend, index)
            stored = config.backend.versions(index, doc_ids)
        except BackendError as exc:
            report.unverified.append({"index": index, "event_ids": [r.id for r in group],
                                      "error": redact(exc)})
            continue
        with engine.connect() as conn:
            newest = outbox.newest_completed(conn, index, doc_ids)
        for row in group:
            if row.version_sent is not None and row.version_sent > newest.get(
                    row.document_id, ("", -1))[1]:
                newest[row.document_id] = (row.operation, row.version_sent)
        for row in group:
            version = stored.get(row.document_id)
            operation, sent = newest[row.document_id]
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
        # Still accepted, and now known not to be in the index: status says so at once.
        outbox.mark(conn, [m["event_id"] for m in report.missing], State.BACKEND_ACCEPTED,
                    only_from=[State.BACKEND_ACCEPTED], error_kind=NOT_FOUND,
                    last_error="confirm() did not find the document at the version sent: "
                               "the write was lost; retry the event, or reconcile")
    return report
