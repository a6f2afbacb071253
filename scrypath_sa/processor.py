"""The one place sync work is done: claim events, read rows, build documents, write, record.

A mode decides *when and where* :func:`process` runs, never *what* it does.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from scrypath_sa import outbox
from scrypath_sa.backends.base import BulkOp, ItemResult, ItemStatus
from scrypath_sa.errors import BackendError
from scrypath_sa.outbox import Event, State, Transition
from scrypath_sa.outcome import Failure, Outcome
from scrypath_sa.redaction import redact
from scrypath_sa.registry import ModelInfo, info_for_index, primary_key

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config

log = logging.getLogger("scrypath_sa")


@dataclass
class _Doc:
    """All claimed events of one document, coalesced."""

    info: ModelInfo
    document_id: str
    pk: list[Any]
    events: list[Event] = field(default_factory=list)

    @property
    def version(self) -> int:
        return max(e.id for e in self.events)

    @property
    def attempts(self) -> int:
        return max(e.attempts for e in self.events)


def process(config: Config, event_ids: Sequence[int], *, mode: str,
            wait_for_visibility: bool, engine: Engine | None = None,
            worker: str | None = None) -> Outcome:
    """Claim ``event_ids``, write their documents, and record every outcome.

    With ``wait_for_visibility`` a successful write is ``completed`` (the bulk request
    waits for a refresh); without it, ``backend_accepted``. Ids that are not claimable
    (unknown, rolled back, already done, claimed by someone else) are reported as
    ``skipped`` and left alone.
    """
    engine = engine or config.require_bind()
    outcome = Outcome(mode=mode, event_ids=list(event_ids))
    with engine.begin() as conn:
        events = outbox.claim(conn, event_ids, mode, worker)
    claimed = {e.id for e in events}
    outcome.skipped = [i for i in event_ids if i not in claimed]
    if not events:
        return outcome

    transitions: list[Transition] = []
    docs: dict[tuple[str, str], _Doc] = {}
    for event in events:
        info = info_for_index(event.index_name)
        if info is None:
            transitions.append(Transition(
                event.id, State.DISCARDED, error_kind="unknown_model",
                error=f"no Searchable model for index {event.index_name!r} ({event.model}) "
                      "is defined in this process: import the model before processing",
            ))
            continue
        key = (event.index_name, event.document_id)
        doc = docs.get(key)
        if doc is None:
            doc = docs[key] = _Doc(info, event.document_id, event.pk)
        doc.events.append(event)

    by_model: dict[str, list[_Doc]] = {}
    for doc in docs.values():
        by_model.setdefault(doc.info.index, []).append(doc)
    for group in by_model.values():
        for start in range(0, len(group), config.batch_size):
            batch = group[start:start + config.batch_size]
            transitions.extend(_write_batch(config, engine, batch, wait_for_visibility))

    with engine.begin() as conn:
        outbox.apply(conn, transitions)

    outcome.documents = len(docs)
    doc_of = {e.id: d for d in docs.values() for e in d.events}
    for tr in transitions:
        outcome.states[tr.state.value] += 1
        if tr.state in (State.RETRYING, State.DISCARDED):
            doc = doc_of.get(tr.event_id)
            outcome.failures.append(Failure(
                tr.event_id, doc.info.index if doc else "?", doc.document_id if doc else "?",
                tr.state.value, tr.error_kind, tr.error,
            ))
    if outcome.failures:
        log.warning("scrypath_sa: %s", outcome.describe())
    return outcome


def _load_rows(engine: Engine, info: ModelInfo, docs: list[_Doc]) -> dict[tuple[Any, ...], Any]:
    mapper = info.mapper
    pk_cols = list(mapper.primary_key)
    rows: dict[tuple[Any, ...], Any] = {}
    with Session(engine, expire_on_commit=False) as session:
        for start in range(0, len(docs), 1000):
            keys = [d.pk for d in docs[start:start + 1000]]
            if len(pk_cols) == 1:
                where = pk_cols[0].in_([k[0] for k in keys])
            else:
                where = tuple_(*pk_cols).in_([tuple(k) for k in keys])
            query = select(info.cls).where(where).options(*info.cls.search_load_options())
            for obj in session.scalars(query):
                rows[tuple(primary_key(obj))] = obj
        # Documents are built while the session is open, so lazy loads still work.
        return {key: _build(obj) for key, obj in rows.items()}


def _build(obj: Any) -> tuple[str, Any]:
    """('upsert', document) | ('delete', None) | ('error', message) for one row."""
    name = type(obj).__name__
    try:
        if not obj.should_index():
            return ("delete", None)
    except Exception as exc:  # noqa: BLE001 - user code; recorded, not raised
        return ("error", f"{name}.should_index() raised {type(exc).__name__}: {redact(exc)}")
    try:
        document = obj.search_document()
    except Exception as exc:  # noqa: BLE001 - user code; recorded, not raised
        return ("error", f"{name}.search_document() raised {type(exc).__name__}: {redact(exc)}")
    if not isinstance(document, dict):
        return ("error", f"{name}.search_document() must return a dict, "
                         f"got {type(document).__name__}")
    return ("upsert", document)


def _write_batch(config: Config, engine: Engine, batch: list[_Doc],
                 wait_for_visibility: bool) -> list[Transition]:
    info = batch[0].info
    transitions: list[Transition] = []
    ops: list[BulkOp] = []
    sent: list[_Doc] = []
    built = _load_rows(engine, info, batch)
    for doc in batch:
        action, payload = built.get(tuple(doc.pk), ("delete", None))
        if action == "error":
            transitions.extend(_each(doc, State.DISCARDED, error_kind="document_error",
                                     error=str(payload)))
            continue
        ops.append(BulkOp(info.index, doc.document_id, doc.version, payload))
        sent.append(doc)
    if not ops:
        return transitions
    try:
        config.backend.ensure_index(info.index, info.contract, info.name)
    except BackendError as exc:
        results = [ItemResult(ItemStatus.RETRYABLE, "index_unavailable", redact(exc))] * len(ops)
    else:
        results = config.backend.bulk(ops, wait_for_visibility=wait_for_visibility)
    success = State.COMPLETED if wait_for_visibility else State.BACKEND_ACCEPTED
    for doc, op, result in zip(sent, ops, results, strict=True):
        operation = "delete" if op.is_delete else "upsert"
        if result.status in (ItemStatus.OK, ItemStatus.CONFLICT):
            transitions.extend(_each(doc, success, operation=operation, version=op.version))
        elif result.status is ItemStatus.RETRYABLE and doc.attempts < config.max_attempts:
            transitions.extend(_each(
                doc, State.RETRYING, operation=operation, version=op.version,
                error_kind=result.error_kind, error=result.error,
                next_attempt_at=outbox.utcnow() + backoff(config, doc.attempts),
            ))
        else:
            error = result.error
            if result.status is ItemStatus.RETRYABLE:
                error = f"gave up after {doc.attempts} attempts: {error}"
            transitions.extend(_each(doc, State.DISCARDED, operation=operation,
                                     version=op.version, error_kind=result.error_kind,
                                     error=error))
    return transitions


def _each(doc: _Doc, state: State, *, operation: str | None = None, version: int | None = None,
          error_kind: str | None = None, error: str | None = None,
          next_attempt_at: dt.datetime | None = None) -> list[Transition]:
    return [Transition(e.id, state, operation, version, error_kind, error, next_attempt_at)
            for e in doc.events]


def backoff(config: Config, attempts: int) -> dt.timedelta:
    """Exponential backoff with full jitter on the upper half: base * 2**(n-1), capped."""
    ceiling = min(config.backoff_max, config.backoff_base * 2 ** max(attempts - 1, 0))
    return dt.timedelta(seconds=ceiling / 2 + random.random() * ceiling / 2)
