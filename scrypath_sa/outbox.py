"""Every statement on ``sync_events`` and ``sync_checkpoints``: record events with the
data, claim them, record transitions, and the queries the operator API asks.

Only this module writes state transitions, so the rules live in one place. The tables
and states are in :mod:`scrypath_sa.schema`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, StatementError

from scrypath_sa import codec, telemetry
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.outcome import Failure
from scrypath_sa.schema import (
    CLAIMABLE,
    UNFINISHED,
    VERSION_SCALE,
    Operation,
    State,
    UTCDateTime,
    sync_checkpoints,
    sync_events,
    utcnow,
    version_ceiling,
    version_of,
)
from scrypath_sa.sql import chunks, id_filter, rows


class NewEvent(NamedTuple):
    """What a flush or a bulk statement records for one (model, document id)."""

    model: str
    index_name: str
    document_id: str
    pk: list[Any]
    operation: Operation


class Event(NamedTuple):
    """A claimed ``sync_events`` row, as the processor sees it (a tuple: claims make
    thousands of them). ``pk`` is a tuple too: the cycle collector stops tracking a
    tuple of plain values, and the processor looks rows up by it."""

    id: int
    model: str
    index_name: str
    document_id: str
    pk: tuple[Any, ...]
    operation: str
    attempts: int


def record(conn: Connection, events: Sequence[NewEvent], mode: str | None) -> list[int]:
    """Insert ``events`` on ``conn`` (the data's transaction); returns their ids (in no
    particular order)."""
    if not events:
        return []
    now = utcnow()
    if conn.dialect.name == "postgresql":
        return _record_postgresql(conn, events, mode, now)
    rows = [
        {
            "model": e.model,
            "index_name": e.index_name,
            "document_id": e.document_id,
            "pk": e.pk,
            "operation": e.operation.value,
            "mode": mode,
            "state": State.REQUESTED.value,
            "attempts": 0,
            "requested_at": now,
            "updated_at": now,
        }
        for e in events
    ]
    telemetry.transitions(State.REQUESTED.value, len(rows))
    if len(rows) == 1:  # the common small commit: a plain execute, not an executemany
        return [conn.execute(_INSERT_ONE, rows[0]).scalar_one()]
    stmt = insert(sync_events).returning(sync_events.c.id, sort_by_parameter_order=True)
    return list(conn.execute(stmt, rows).scalars())


# The INSERT that goes with a COMMIT (scrypath_sa.with_commit), in libpq's own terms: text
# with $n parameters, sent without SQLAlchemy. Not a prepared statement: psycopg
# deallocates every prepared statement of a connection on a ROLLBACK or DDL, and a
# missing one would fail the commit (docs/performance.md has what preparing would save).
_COLUMNS = ("model, index_name, document_id, pk, operation, mode, state, attempts, "
            "requested_at, updated_at")
_HELD_ONE = (
    f"INSERT INTO {sync_events.fullname} ({_COLUMNS}) VALUES ($1, $2, $5, $6::json, $7, "
    f"$3, '{State.REQUESTED.value}', 0, $4::timestamptz, $4::timestamptz) "
    "RETURNING id").encode()
_HELD_MANY = (
    f"INSERT INTO {sync_events.fullname} ({_COLUMNS}) "
    f"SELECT $1, $2, r->>0, r->1, r->>2, $3, '{State.REQUESTED.value}', 0, "
    "$4::timestamptz, $4::timestamptz FROM json_array_elements($5::json) AS r "
    "RETURNING id").encode()

HeldGroups = dict[tuple[str, str, str | None, str], list[tuple[str, list[Any], str]]]
"""Events waiting for their transaction's COMMIT: (document id, key, operation) rows by
(model, index, mode, requested at as ISO text)."""


def hold(groups: HeldGroups, events: Sequence[NewEvent], mode: str | None,
         now: dt.datetime) -> None:
    """Add ``events`` to ``groups`` (see :func:`held_inserts`)."""
    stamp = now.isoformat()
    for e in events:
        groups.setdefault((e.model, e.index_name, mode, stamp), []).append(
            (e.document_id, e.pk, e.operation.value))


def held_inserts(groups: HeldGroups) -> list[tuple[bytes, list[bytes | None]]]:
    """The INSERT ... RETURNING id of each group (PostgreSQL, ``$n`` parameters as
    text): one row as VALUES, several as one JSON array of rows."""
    statements: list[tuple[bytes, list[bytes | None]]] = []
    for (model, index_name, mode, stamp), group in groups.items():
        head = [model.encode(), index_name.encode(),
                None if mode is None else mode.encode(), stamp.encode()]
        if len(group) == 1:
            document_id, pk, operation = group[0]
            statements.append((_HELD_ONE, [*head, document_id.encode(), codec.dumps(pk),
                                           operation.encode()]))
        else:
            statements.append((_HELD_MANY, [*head, codec.dumps(group)]))
    return statements


def missing_table(exc: StatementError) -> Exception | None:
    """The error that names the fix when recording failed because ``sync_events`` does
    not exist; None for any other failure."""
    text = str(exc.orig)
    if "sync_events" in text and ("no such table" in text or "does not exist" in text):
        return ConfigurationError(
            "the table sync_events does not exist in this database, so the change "
            "cannot be recorded with the data: create the library's tables with "
            "scrypath_sa.metadata.create_all(engine) next to your own create_all() "
            "(tests), or run its migrations (alembic upgrade heads; docs: migrations)")
    return None


MAX_DOCUMENT_ID_BYTES = 512
"""OpenSearch refuses longer ``_id``s (and ``sync_events.document_id`` holds 512)."""


def unusable(document_id: str) -> bool:
    """Whether OpenSearch refuses ``document_id`` (too long) or PostgreSQL cannot hold it
    (a NUL character): such an event is recorded discarded (:func:`record_rejected`)."""
    return "\0" in document_id or (len(document_id) > MAX_DOCUMENT_ID_BYTES // 4 and (
        len(document_id.encode()) > MAX_DOCUMENT_ID_BYTES))


def record_rejected(conn: Connection, events: Sequence[NewEvent],
                    mode: str | None) -> list[Failure]:
    """Record events with an :func:`unusable` document id as ``discarded`` with the
    reason (their id made to fit the column), in the data's transaction: the data
    commits, the sync input is refused and kept. Returns them as failures."""
    now = utcnow()
    recorded = []
    for e in events:
        shown = e.document_id.replace("\0", "\\0")
        if "\0" in e.document_id:
            kind = "document_id_has_nul"
            reason = (f"the document id of {e.model} {e.pk} contains a NUL character, "
                      "which PostgreSQL text cannot hold: make search_document_id() "
                      "return text without it, then backfill")
        else:
            kind = "document_id_too_long"
            reason = (f"the document id of {e.model} {e.pk} is "
                      f"{len(e.document_id.encode())} bytes; OpenSearch allows "
                      f"{MAX_DOCUMENT_ID_BYTES}: make search_document_id() shorter "
                      "(e.g. a hash of the long value), then backfill")
        if len(shown.encode()) > MAX_DOCUMENT_ID_BYTES:
            shown = shown[:200] + "..."
        event_id = conn.execute(_INSERT_ONE, {
            "model": e.model, "index_name": e.index_name, "document_id": shown,
            "pk": e.pk, "operation": e.operation.value, "mode": mode,
            "state": State.DISCARDED.value, "attempts": 0, "error_kind": kind,
            "last_error": reason, "requested_at": now, "updated_at": now,
            "discarded_at": now}).scalar_one()
        recorded.append(Failure(event_id, e.index_name, shown, State.DISCARDED.value,
                                kind, reason))
    return recorded


def record_dependents(conn: Connection, model: str, index: str, dependent: Any,
                      path: Sequence[Any], related_pk: Any, related_ids: Sequence[Any],
                      mode: str | None) -> list[int]:
    """One ``INSERT ... SELECT``: an ``upsert`` event for every row of ``dependent``
    that reaches a related row among ``related_ids`` through the relationships
    ``path``, found by joins in the database (no dependent row is loaded)."""
    pk = next(iter(sa_inspect(dependent).primary_key))
    as_json = (func.json_build_array(pk) if conn.dialect.name == "postgresql"
               else func.json_array(pk))
    now = utcnow()
    found = select(literal(model, String()), literal(index, String()), cast(pk, String()),
                   type_coerce(as_json, JSON), literal(Operation.UPSERT.value, String()),
                   literal(mode, String()), literal(State.REQUESTED.value, String()),
                   literal(0, Integer()), literal(now, UTCDateTime()),
                   literal(now, UTCDateTime()))
    reach = select(pk).select_from(dependent)
    for hop in path:
        reach = reach.join(hop.class_attribute)
    ids: list[int] = []
    for part in chunks(list(related_ids), CHUNK):
        stmt = insert(sync_events).from_select(
            ["model", "index_name", "document_id", "pk", "operation", "mode", "state",
             "attempts", "requested_at", "updated_at"],
            found.where(pk.in_(reach.where(related_pk.in_(part))))).returning(
                sync_events.c.id)
        ids.extend(conn.execute(stmt).scalars())
    return ids


def _record_postgresql(conn: Connection, events: Sequence[NewEvent], mode: str | None,
                       now: dt.datetime) -> list[int]:
    """One prepared-once statement per model in the flush: a single row as VALUES,
    several as ``INSERT ... SELECT`` over one JSON array of (document id, key,
    operation) rows: one string is the cheapest parameter to send (measurements in
    docs/performance.md)."""
    groups: dict[tuple[str, str], list[NewEvent]] = {}
    for e in events:
        groups.setdefault((e.model, e.index_name), []).append(e)
    ids: list[int] = []
    for (model, index_name), group in groups.items():
        params: dict[str, Any] = {"model": model, "index_name": index_name, "mode": mode,
                                  "now": now}
        if len(group) == 1:
            e = group[0]
            params.update(document_id=e.document_id, pk=codec.dumps_text(e.pk),
                          operation=e.operation.value)
            # The statement as the driver's own string, on its own cursor: SQLAlchemy's
            # per-execute work was most of its cost (docs/performance.md).
            sql, order, compiled = _driver_insert_one(conn.dialect)
            values = compiled.construct_params(params)
            args = tuple(values[k] for k in order) if order is not None else values
            ids.append(_driver_scalar(conn, sql, args))
            continue
        params["rows"] = codec.dumps_text(
            [(e.document_id, e.pk, e.operation.value) for e in group])
        ids.extend(conn.execute(_INSERT_MANY_PG, params).scalars())
    return ids


_INSERT_ONE = insert(sync_events).returning(sync_events.c.id)


def _postgresql_insert(document_id: Any, pk: Any, operation: Any) -> Any:
    """INSERT ... SELECT of one model's events from these column expressions (the key
    as JSON text)."""
    def scalar(name: str, type_: Any) -> Any:
        return bindparam(name, type_=type_)

    query = select(scalar("model", String()), scalar("index_name", String()),
                   document_id, cast(pk, JSON), operation,
                   scalar("mode", String()), literal(State.REQUESTED.value, String()),
                   literal(0, Integer()), scalar("now", UTCDateTime()),
                   scalar("now", UTCDateTime()))
    return insert(sync_events).from_select(
        ["model", "index_name", "document_id", "pk", "operation", "mode", "state", "attempts",
         "requested_at", "updated_at"], query).returning(sync_events.c.id)


_INSERT_ONE_PG = _postgresql_insert(bindparam("document_id", type_=String()),
                                    bindparam("pk", type_=Text()),
                                    bindparam("operation", type_=String()))


@functools.lru_cache(maxsize=16)
def _driver_insert_one(dialect: Any) -> tuple[str, tuple[str, ...] | None, Any]:
    """:data:`_INSERT_ONE_PG` compiled for ``dialect`` once: its SQL string, the order
    of its parameters when the driver takes them by position, and the compiled form
    (which fills in the statement's literal parameters). Its values need no bind
    processing: strings, and a timezone-aware UTC datetime."""
    compiled = _INSERT_ONE_PG.compile(dialect=dialect)
    order = tuple(compiled.positiontup or ()) if compiled.positional else None
    return compiled.string, order, compiled


def _driver_scalar(conn: Connection, sql: str, args: Any) -> Any:
    """Run ``sql`` on a cursor of ``conn``'s driver connection, in its transaction;
    the first column of its one row. An engine that something watches (statement
    listeners, error handlers, SQL logging) gets it through SQLAlchemy instead, so that
    they see it; a driver error is raised as SQLAlchemy's would be."""
    if watched(conn):
        return conn.exec_driver_sql(sql, args).scalar_one()
    driver_conn = conn.connection.dbapi_connection
    assert driver_conn is not None  # an open Connection's
    cursor = driver_conn.cursor()
    try:
        cursor.execute(sql, args)
        row = cursor.fetchone()
        assert row is not None  # INSERT ... RETURNING of one row
        return row[0]
    except conn.dialect.loaded_dbapi.Error as exc:
        raise driver_error(conn, sql, args, exc, cursor) from exc
    finally:
        cursor.close()


def watched(conn: Connection) -> bool:
    """Whether something watches ``conn``'s statements (statement listeners, error
    handlers, SQL logging): then they go through SQLAlchemy, never straight to the
    driver."""
    return bool(conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute
                or conn.dialect.dispatch.handle_error
                or conn.engine.logger.isEnabledFor(logging.INFO))


def driver_error(conn: Connection, sql: str, args: Any, exc: Any,
                 cursor: Any = None) -> DBAPIError:
    """``exc``, the driver's own error from a statement sent around SQLAlchemy, as
    SQLAlchemy would raise it; a lost connection is invalidated (the error says so)."""
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    error = DBAPIError.instance(
        sql, args, exc, dialect.loaded_dbapi.Error, hide_parameters=conn.engine.hide_parameters,
        connection_invalidated=lost, dialect=dialect)
    assert isinstance(error, DBAPIError)  # a driver's Error always makes one
    return error


_row = func.json_array_elements(cast(bindparam("rows", type_=Text()), JSON)).column_valued("r")
_INSERT_MANY_PG = _postgresql_insert(_row.op("->>", return_type=String())(literal(0)),
                                     _row.op("->>", return_type=Text())(literal(1)),
                                     _row.op("->>", return_type=String())(literal(2)))


def completed() -> Any:
    """Completed events, written so that the index of completed documents is used."""
    return (sync_events.c.state == State.COMPLETED.value) & sync_events.c.completed_at.is_not(None)


def in_states(states: Iterable[State | str]) -> Any:
    """``state IN states``, written so that PostgreSQL can use the partial index of
    events that are not completed (``completed_at`` is set exactly when the state is)."""
    values = sorted({State(s).value for s in states})
    if State.COMPLETED.value in values:
        return sync_events.c.state.in_(values)
    return sync_events.c.state.in_(values) & sync_events.c.completed_at.is_(None)


CHUNK = 5000


def claim(conn: Connection, ids: Sequence[int], mode: str, worker: str | None = None,
          states: Iterable[State] = CLAIMABLE) -> list[Event]:
    """Move the claimable events among ``ids`` to ``processing`` and return them.

    On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED`` in the same
    statement, so two workers holding the same ids never process one event at the same
    time. On SQLite the write lock taken by the UPDATE serialises claimers; the state
    check in its WHERE makes a second claim of the same event a no-op.
    """
    t = sync_events
    wanted = [s.value for s in states]
    claimed: list[Event] = []
    for chunk in chunks(sorted(set(ids)), CHUNK):
        if conn.dialect.name == "postgresql":
            lockable = (select(t.c.id)
                        .where(id_filter(conn, t.c.id, chunk), in_states(wanted))
                        .with_for_update(skip_locked=True))
            where = [t.c.id.in_(lockable.scalar_subquery())]
        else:
            where = [t.c.id.in_(chunk), in_states(wanted)]
        claimed.extend(_claim_where(conn, where, mode, worker))
    claimed.sort(key=lambda e: e.id)
    return claimed


def claim_due(conn: Connection, mode: str, limit: int, worker: str | None = None) -> list[Event]:
    """Claim up to ``limit`` more events that ``mode`` was handed and nobody works on
    (``requested`` or ``enqueued``, oldest first, rows others hold skipped): a worker
    that woke for a few events takes the work of the messages behind them in one go,
    and those messages then find their events taken. PostgreSQL only (elsewhere: none);
    ``retrying`` events wait for their own time."""
    if conn.dialect.name != "postgresql" or limit <= 0:
        return []
    t = sync_events
    lockable = (select(t.c.id)
                .where(in_states([State.REQUESTED, State.ENQUEUED]), t.c.mode == mode)
                .order_by(t.c.id).limit(limit).with_for_update(skip_locked=True))
    return sorted(_claim_where(conn, [t.c.id.in_(lockable.scalar_subquery())], mode, worker),
                  key=lambda e: e.id)


def _claim_where(conn: Connection, where: list[Any], mode: str,
                 worker: str | None) -> list[Event]:
    t = sync_events
    now = utcnow()
    stmt = (
        update(t)
        .where(*where)
        .values(state=State.PROCESSING.value, processing_at=now, updated_at=now,
                attempts=t.c.attempts + 1, mode=mode, claimed_by=worker)
        # pk as text, decoded here: the driver's per-row JSON decoding was a large
        # share of a claim's client-side cost.
        .returning(t.c.id, t.c.model, t.c.index_name, t.c.document_id,
                   cast(t.c.pk, Text), t.c.operation, t.c.attempts)
    )
    found = [Event(i, model, index, doc_id, tuple(codec.loads(pk)), operation, attempts)
             for i, model, index, doc_id, pk, operation, attempts in rows(conn.execute(stmt))]
    if found:
        telemetry.transitions(State.PROCESSING.value, len(found))
    return found


def claimable(conn: Connection, ids: Sequence[int]) -> list[int]:
    """Which of ``ids`` are still in a claimable state (e.g. skipped because another
    transaction held their row lock for a moment)."""
    t = sync_events
    query = select(t.c.id).where(id_filter(conn, t.c.id, list(ids)),
                                 in_states(CLAIMABLE))
    return sorted(conn.execute(query).scalars())


class Transition(NamedTuple):
    """One outcome to record for one event."""

    event_id: int
    state: State
    operation: str | None = None
    version_sent: int | None = None
    error_kind: str | None = None
    error: str | None = None
    next_attempt_at: dt.datetime | None = None


_STAMP = {
    State.ENQUEUED: "enqueued_at",
    State.PROCESSING: "processing_at",
    State.BACKEND_ACCEPTED: "accepted_at",
    State.COMPLETED: "completed_at",
    State.DISCARDED: "discarded_at",
}


def apply(conn: Connection, transitions: Sequence[Transition],
          as_state: State | None = None) -> None:
    """Record outcomes with as few statements as the outcomes allow (``as_state``: in
    that state instead of their own, e.g. accepted writes a refresh made visible).

    Transitions that share everything but the event id (the common case: a whole batch
    accepted, each event at its own version) become one UPDATE per chunk; the
    rest (events coalesced under a newer version) go through one executemany.
    """
    if not transitions:
        return
    now = utcnow()
    t = sync_events
    groups: dict[tuple[Any, ...], list[int]] = {}
    singles: list[Transition] = []
    for tr in transitions:
        event_id, state, operation, version, kind, error, next_at = tr
        if as_state is not None:
            state = as_state
        if version is not None and version != version_of(event_id):
            singles.append(tr if as_state is None else tr._replace(state=as_state))
            continue
        key = (state, operation, kind, error, next_at, version is not None)
        ids = groups.get(key)
        if ids is None:
            ids = groups[key] = []
        ids.append(event_id)
    for (state, operation, kind, error, next_at, versioned), ids in groups.items():
        telemetry.transitions(state.value, len(ids), kind)
        values: dict[str, Any] = {"state": state.value, "updated_at": now, "error_kind": kind,
                                  "last_error": error, "next_attempt_at": next_at}
        if operation is not None:
            values["operation"] = operation
        if versioned:
            values["version_sent"] = t.c.id * VERSION_SCALE
        if state in _STAMP:
            values[_STAMP[state]] = now
        for chunk in chunks(ids, CHUNK):
            # Only open events are recorded here; saying so lets the planner find them
            # in the small partial index (by the primary key it may scan the table).
            conn.execute(update(t).where(id_filter(conn, t.c.id, chunk),
                                         t.c.completed_at.is_(None)).values(values))
    for state in {tr.state for tr in singles}:
        params = [{"b_id": tr.event_id, "b_operation": tr.operation, "b_version": tr.version_sent,
                   "b_kind": tr.error_kind, "b_error": tr.error, "b_next": tr.next_attempt_at}
                  for tr in singles if tr.state is state]
        for error_kind in {tr.error_kind for tr in singles if tr.state is state}:
            telemetry.transitions(state.value, sum(
                1 for tr in singles if tr.state is state and tr.error_kind == error_kind),
                error_kind)
        values = {
            "state": state.value, "updated_at": now,
            "error_kind": bindparam("b_kind"), "last_error": bindparam("b_error"),
            "next_attempt_at": bindparam("b_next"),
            "operation": func.coalesce(bindparam("b_operation", type_=String()), t.c.operation),
            "version_sent": bindparam("b_version", type_=BigInteger()),
        }
        if state in _STAMP:
            values[_STAMP[state]] = now
        conn.execute(update(t).where(t.c.id == bindparam("b_id")).values(values), params)


def mark(conn: Connection, ids: Sequence[int], state: State,
         only_from: Iterable[State] | None = None, **values: Any) -> int:
    """Move ``ids`` to ``state`` (optionally only those currently in ``only_from``)."""
    t = sync_events
    now = utcnow()
    values = {"state": state.value, "updated_at": now, **values}
    if state in _STAMP:
        values.setdefault(_STAMP[state], now)
    count = 0
    for chunk in chunks(list(ids), CHUNK):
        stmt = update(t).where(id_filter(conn, t.c.id, chunk))
        if only_from is not None:
            stmt = stmt.where(in_states(only_from))
        count += conn.execute(stmt.values(values)).rowcount
    if count:
        kind = values.get("error_kind")
        telemetry.transitions(state.value, count, kind if isinstance(kind, str) else None)
    return count


def expire_claims(conn: Connection, older_than: dt.timedelta) -> list[tuple[int, str | None]]:
    """``processing`` claims older than ``older_than`` belong to a worker that died (or
    hangs): hand them back as ``retrying``, due now. Returns their (id, mode) pairs."""
    t = sync_events
    now = utcnow()
    stmt = (update(t)
            .where(in_states([State.PROCESSING]), t.c.processing_at <= now - older_than)
            .values(state=State.RETRYING.value, updated_at=now, next_attempt_at=now,
                    error_kind="claim_expired",
                    last_error=f"processing claim older than {older_than} expired; "
                               "the worker holding it died or hangs")
            .returning(t.c.id, t.c.mode))
    expired = [(row[0], row[1]) for row in conn.execute(stmt)]
    if expired:
        telemetry.transitions(State.RETRYING.value, len(expired), "claim_expired")
    return expired


def expire_dead_claims(conn: Connection) -> list[tuple[int, str | None]]:
    """``processing`` claims whose worker process is gone from this host (killed, or
    stopped before it finished): hand them back as ``retrying``, due now, whatever
    their age. Returns their (id, mode) pairs."""
    t = sync_events
    owners = conn.execute(select(t.c.claimed_by).distinct()
                          .where(in_states([State.PROCESSING]))).scalars()
    expired: list[tuple[int, str | None]] = []
    now = utcnow()
    for owner in [o for o in owners if process_gone(o)]:
        stmt = (update(t)
                .where(in_states([State.PROCESSING]), t.c.claimed_by == owner)
                .values(state=State.RETRYING.value, updated_at=now, next_attempt_at=now,
                        error_kind="claim_expired",
                        last_error=f"the worker holding the claim ({owner}) is gone")
                .returning(t.c.id, t.c.mode))
        expired.extend((row[0], row[1]) for row in conn.execute(stmt))
    if expired:
        telemetry.transitions(State.RETRYING.value, len(expired), "claim_expired")
    return expired


def high_water_mark(conn: Connection) -> int:
    """The newest event id so far (0 when there is none)."""
    return int(conn.execute(select(func.max(sync_events.c.id))).scalar() or 0)


def highest_issued_version(conn: Connection) -> int:
    """The highest external version this database has issued so far (a backfill's
    included): an index holding a document above it holds what this database never
    wrote."""
    return version_ceiling(high_water_mark(conn))


def rerequest(conn: Connection, ids: Sequence[int]) -> None:
    """Put events that are about to be dispatched again back to ``requested``: every
    dispatch starts from there, so "enqueued" is only ever written after a send."""
    mark(conn, ids, State.REQUESTED, only_from=[State.RETRYING, State.ENQUEUED])


def due(conn: Connection, older_than: dt.timedelta | None,
        enqueued_older_than: dt.timedelta | None,
        limit: int) -> list[tuple[int, str | None]]:
    """Events that need a push, as (id, mode) pairs, oldest first:

    * ``requested`` for longer than ``older_than`` (the dispatch after commit failed or
      the process died before it);
    * ``retrying`` whose ``next_attempt_at`` is more than ``older_than`` past (whoever
      scheduled the retry, e.g. Dramatiq's own retry, had its chance first);
    * ``enqueued`` for longer than ``enqueued_older_than`` (the message was lost).

    ``None`` leaves those states alone.
    """
    t = sync_events
    now = utcnow()
    conditions = []
    if enqueued_older_than is not None:
        conditions.append((t.c.state == State.ENQUEUED.value)
                          & (t.c.enqueued_at <= now - enqueued_older_than))
    if older_than is not None:
        conditions += [
            (t.c.state == State.REQUESTED.value) & (t.c.requested_at <= now - older_than),
            (t.c.state == State.RETRYING.value) & (t.c.next_attempt_at <= now - older_than),
        ]
    if not conditions:
        return []
    query = (select(t.c.id, t.c.mode).where(t.c.completed_at.is_(None), or_(*conditions))
             .order_by(t.c.id).limit(limit))
    return [(row[0], row[1]) for row in conn.execute(query)]


# ------------------------------------------------------------------ operator queries

def get(conn: Connection, event_id: int) -> Any:
    """One event's row, or None."""
    return conn.execute(select(sync_events).where(sync_events.c.id == event_id)).one_or_none()


def state_counts(conn: Connection, indices: Sequence[str]) -> dict[str, dict[str, int]]:
    """index -> state -> number of events."""
    t = sync_events
    counts: dict[str, dict[str, int]] = {}
    for index, state, n in conn.execute(
            select(t.c.index_name, t.c.state, func.count())
            .where(t.c.index_name.in_(list(indices))).group_by(t.c.index_name, t.c.state)):
        counts.setdefault(index, {})[state] = n
    return counts


def oldest_unfinished(conn: Connection, indices: Sequence[str]) -> dict[str, dt.datetime]:
    """index -> when its oldest unfinished event was recorded."""
    t = sync_events
    return dict(conn.execute(
        select(t.c.index_name, func.min(t.c.requested_at))
        .where(t.c.index_name.in_(list(indices)), in_states(UNFINISHED))
        .group_by(t.c.index_name)).all())


def stuck_counts(conn: Connection, indices: Sequence[str], states: Iterable[State],
                 untouched_since: dt.datetime) -> dict[str, int]:
    """index -> events in ``states`` not updated since ``untouched_since``."""
    t = sync_events
    return dict(conn.execute(
        select(t.c.index_name, func.count())
        .where(t.c.index_name.in_(list(indices)), in_states(states),
               t.c.updated_at <= untouched_since)
        .group_by(t.c.index_name)).all())


def unconfirmed_counts(conn: Connection, indices: Sequence[str],
                       error_kind: str) -> dict[str, int]:
    """index -> ``backend_accepted`` events that confirm() marked with ``error_kind``."""
    t = sync_events
    return dict(conn.execute(
        select(t.c.index_name, func.count())
        .where(t.c.index_name.in_(list(indices)), in_states([State.BACKEND_ACCEPTED]),
               t.c.error_kind == error_kind)
        .group_by(t.c.index_name)).all())


def next_attempts(conn: Connection, indices: Sequence[str]) -> dict[str, dt.datetime]:
    """index -> the earliest ``next_attempt_at`` of its retrying events."""
    t = sync_events
    return dict(conn.execute(
        select(t.c.index_name, func.min(t.c.next_attempt_at))
        .where(t.c.index_name.in_(list(indices)), in_states([State.RETRYING]))
        .group_by(t.c.index_name)).all())


def next_attempt_of(conn: Connection, ids: Sequence[int]) -> dt.datetime | None:
    """The earliest ``next_attempt_at`` among ``ids``."""
    t = sync_events
    value: dt.datetime | None = conn.execute(
        select(func.min(t.c.next_attempt_at)).where(id_filter(conn, t.c.id, list(ids)))
    ).scalar()
    return value


def failed(conn: Connection, states: Sequence[str], indices: Sequence[str] | None,
           error_kind: str | None, after_id: int | None, limit: int) -> list[Any]:
    """Events in ``states`` (retrying, discarded), oldest first, up to ``limit``."""
    t = sync_events
    query = select(t).where(in_states(states)).order_by(t.c.id).limit(limit)
    if indices is not None:
        query = query.where(t.c.index_name.in_(list(indices)))
    if error_kind is not None:
        query = query.where(t.c.error_kind == error_kind)
    if after_id is not None:
        query = query.where(t.c.id > after_id)
    return list(conn.execute(query).all())


def reopen(conn: Connection, index: str,
           discarded_as: str | None = None) -> list[tuple[int, str | None]]:
    """Every open or discarded event of ``index`` (only the events discarded with error
    kind ``discarded_as``, when given) back to ``requested`` with its attempts reset (an
    operator's repair); returns their (id, mode) pairs."""
    t = sync_events
    if discarded_as is None:
        which = in_states([State.REQUESTED, State.ENQUEUED, State.RETRYING, State.DISCARDED])
    else:
        which = in_states([State.DISCARDED]) & (t.c.error_kind == discarded_as)
    found = [(row[0], row[1]) for row in conn.execute(select(t.c.id, t.c.mode).where(
        t.c.index_name == index, which))]
    mark(conn, [i for i, _ in found], State.REQUESTED,
         only_from=[State.ENQUEUED, State.RETRYING, State.DISCARDED], attempts=0)
    return found


def newest_completed(conn: Connection, index: str,
                     document_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
    """document id -> (operation, version) of its newest completed write."""
    t = sync_events
    newest: dict[str, tuple[str, int]] = {}
    for part in chunks(list(document_ids), 1000):
        query = select(t.c.document_id, t.c.operation, t.c.version_sent).where(
            t.c.index_name == index, t.c.document_id.in_(part), completed())
        for doc_id, operation, version in conn.execute(query):
            if version is not None and version > newest.get(doc_id, ("", -1))[1]:
                newest[doc_id] = (operation, version)
    return newest


def in_flight(conn: Connection, index: str, document_ids: Sequence[str]) -> set[str]:
    """Those of ``document_ids`` with an event still on its way (neither completed nor
    discarded): the index may lag their rows, and that is not drift."""
    t = sync_events
    found: set[str] = set()
    for part in chunks(list(document_ids), 1000):
        found.update(conn.execute(select(t.c.document_id).distinct().where(
            t.c.index_name == index, t.c.document_id.in_(part),
            in_states(UNFINISHED))).scalars())
    return found


def accepted(conn: Connection, ids: Sequence[int] | None, limit: int) -> list[Any]:
    """``backend_accepted`` events (among ``ids``), oldest first, up to ``limit``."""
    t = sync_events
    query = (select(t.c.id, t.c.index_name, t.c.document_id, t.c.operation, t.c.version_sent)
             .where(in_states([State.BACKEND_ACCEPTED])).order_by(t.c.id).limit(limit))
    if ids is not None:
        query = query.where(t.c.id.in_(list(ids)))
    return list(conn.execute(query).all())


def accepted_before(conn: Connection, before: dt.datetime,
                    limit: int) -> list[tuple[int, str | None]]:
    """``backend_accepted`` events accepted before ``before``, as (id, mode), oldest
    first."""
    t = sync_events
    query = (select(t.c.id, t.c.mode)
             .where(in_states([State.BACKEND_ACCEPTED]) & (t.c.accepted_at <= before))
             .order_by(t.c.id).limit(limit))
    return [(row.id, row.mode) for row in conn.execute(query)]


def discard_exhausted(conn: Connection, ids: Sequence[int], reason: str) -> int:
    """``retrying`` events whose retries ran out become ``discarded``; ``reason`` goes
    before their last error."""
    return mark(conn, ids, State.DISCARDED, only_from=[State.RETRYING],
                error_kind="retries_exhausted",
                last_error=literal(reason) + func.coalesce(sync_events.c.last_error, ""))


def claimable_ids(conn: Connection) -> list[int]:
    """Every event waiting for a claim (requested, enqueued, retrying), oldest first."""
    t = sync_events
    return list(conn.execute(select(t.c.id).where(in_states(CLAIMABLE)).order_by(t.c.id))
                .scalars())


def delete_old(conn: Connection, state: State, before: dt.datetime, dry_run: bool,
               limit: int = 5000) -> int:
    """Delete up to ``limit`` events that reached ``state`` before ``before`` (only count
    them with ``dry_run``); returns how many."""
    t = sync_events
    stamp = t.c[_STAMP[state]]
    ids = list(conn.execute(select(t.c.id).where(in_states([state]), stamp <= before)
                            .order_by(t.c.id).limit(limit)).scalars())
    if ids and not dry_run:
        conn.execute(delete(t).where(id_filter(conn, t.c.id, ids)))
    return len(ids)


def changed_documents(conn: Connection, index: str, after_id: int,
                      changed_since: dt.datetime) -> list[tuple[str, int, list[Any]]]:
    """(document id, newest event id, primary key) of every document of ``index`` with
    events after ``after_id``, or whose state changed at or after ``changed_since``."""
    t = sync_events
    found = conn.execute(
        select(t.c.document_id, func.max(t.c.id), func.min(t.c.id))
        .where(t.c.index_name == index,
               or_(t.c.id > after_id, t.c.updated_at >= changed_since))
        .group_by(t.c.document_id)).all()
    if not found:
        return []
    pks = dict(conn.execute(select(t.c.id, t.c.pk).where(
        t.c.id.in_([r[2] for r in found]))).all())
    return [(doc_id, newest, list(pks[oldest])) for doc_id, newest, oldest in found]


def count_since(conn: Connection, index: str, after_id: int) -> int:
    """Events of ``index`` recorded after ``after_id``."""
    t = sync_events
    return int(conn.execute(select(func.count()).where(
        t.c.index_name == index, t.c.id > after_id)).scalar_one())


def checkpoint(conn: Connection, name: str) -> Any:
    """The saved progress of the long run ``name``, or None."""
    t = sync_checkpoints
    return conn.execute(select(t).where(t.c.name == name)).one_or_none()


def this_process() -> str:
    """Who is running: host and pid, as a long run's owner (and a worker's claim) say."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(owner: str | None) -> bool:
    """True when ``owner`` (from :func:`this_process`) ran on this host and its process
    no longer exists. False when it lives, ran elsewhere, or is not known."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.split(":")[0]  # a worker's claim adds its thread
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by another user
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A process that died but was not reaped yet (Linux; elsewhere: not known)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return False
    return fields[fields.rindex(b")") + 2:][:1] == b"Z"


def save_checkpoint(conn: Connection, name: str, index: str, position: Any,
                    version: int, processed: int, state: str = "running",
                    error: str | None = None) -> None:
    """Record the long run ``name``'s progress, and that this process owns it."""
    now = utcnow()
    values = {"index_name": index, "position": position, "version": version,
              "processed": processed, "updated_at": now,
              "finished_at": now if state == "finished" else None,
              "owner": this_process(), "state": state, "last_error": error}
    t = sync_checkpoints
    if conn.execute(update(t).where(t.c.name == name).values(values)).rowcount == 0:
        conn.execute(insert(t).values(name=name, started_at=now, **values))


def queue_checkpoints(conn: Connection, names: Sequence[str], index: str,
                      version: int) -> None:
    """Record the parts of a long run as ``queued``: owned by nobody until a worker
    claims one (:func:`claim_checkpoint`)."""
    now = utcnow()
    conn.execute(insert(sync_checkpoints), [
        {"name": name, "index_name": index, "position": None, "version": version,
         "processed": 0, "started_at": now, "updated_at": now, "owner": None,
         "state": "queued"} for name in names])


def claim_checkpoint(conn: Connection, name: str, seen_owner: str | None) -> bool:
    """Take the unfinished run ``name`` for this process, if its owner is still the one
    the caller saw (nobody, a dead process, or a stale one): one claimant wins."""
    t = sync_checkpoints
    owned = t.c.owner.is_(None) if seen_owner is None else t.c.owner == seen_owner
    claimed = conn.execute(update(t).where(
        (t.c.name == name) & owned & (t.c.finished_at.is_(None))).values(
        owner=this_process(), state="running", updated_at=utcnow(), last_error=None))
    return bool(claimed.rowcount == 1)


def checkpoints_like(conn: Connection, prefix: str) -> list[Any]:
    """Every saved run whose name starts with ``prefix``, by name."""
    t = sync_checkpoints
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return list(conn.execute(select(t).where(t.c.name.like(f"{escaped}%", escape="\\"))
                             .order_by(t.c.name)).all())


def fail_checkpoint(conn: Connection, name: str, error: str) -> None:
    """The long run ``name`` stopped with ``error``; its saved position stays."""
    t = sync_checkpoints
    conn.execute(update(t).where(t.c.name == name).values(
        state="failed", last_error=error, updated_at=utcnow()))
