"""Record a transaction's events with its COMMIT: one round trip, not two (psycopg 3).

A flush on PostgreSQL through psycopg's sync driver does not send its ``sync_events``
INSERT when the transaction will be committed by the session that flushed (see
:func:`can_hold`): the rows wait with the connection, and the engine's COMMIT sends
them pipelined with the COMMIT itself (libpq pipeline mode: the INSERT, the COMMIT and
one Sync go out together; one wait brings back the event ids and the COMMIT's result).
psycopg's own ``commit()`` then finds the transaction closed.

The COMMIT is met in the engine's dialect (its ``do_commit`` and ``do_rollback``,
wrapped once per dialect by :func:`listen`), not by engine events: an engine with
event listeners makes SQLAlchemy look up listeners around every statement of every
connection, which cost a single-row commit about 25 us (docs/performance.md).

The promise is the outbox's: the data and its events commit together or not at all.
If the INSERT fails, the server skips the COMMIT of that pipeline, the transaction is
rolled back, and the error is raised from ``commit()``.
Rows held by a transaction that rolls back are dropped with it. What it saves:
docs/performance.md.
"""

from __future__ import annotations

import datetime as dt
import select
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from scrypath_sa import outbox, telemetry
from scrypath_sa.outbox import NewEvent
from scrypath_sa.schema import State

KEY = "scrypath_sa.held"
"""The ``Connection.info`` key of a transaction's held rows (the driver connection's
info: one thread uses it at a time)."""


class _Held:
    """A transaction's held events, the connection that holds them, and the list their
    ids go to once committed."""

    __slots__ = ("conn", "groups", "ids", "transaction")

    def __init__(self, conn: Connection, transaction: Any, ids: list[int]) -> None:
        self.conn, self.transaction, self.ids = conn, transaction, ids
        self.groups: outbox.HeldGroups = {}


def can_hold(session: Session, conn: Connection, mapper: Any) -> bool:
    """Whether this flush's events may wait for the COMMIT: a sync psycopg connection
    in a transaction that this session's ``commit()`` will commit (an engine-bound
    session, no savepoint, not two-phase), on an engine nobody watches statements of
    (their listeners and SQL logging see every statement through SQLAlchemy)."""
    dialect = conn.dialect
    if dialect.driver != "psycopg" or dialect.is_async or session.twophase or not _POLL:
        return False
    if session.in_nested_transaction() or conn.in_nested_transaction():
        return False
    if not isinstance(session.get_bind(mapper), Engine):
        return False  # bound to a connection: an outer transaction decides
    if outbox.watched(conn):
        return False
    driver_conn = conn.connection.dbapi_connection
    pgconn = getattr(driver_conn, "pgconn", None)
    # In a transaction block (not autocommit: there the data is already committed).
    return pgconn is not None and pgconn.transaction_status == _INTRANS


def hold(conn: Connection, events: Sequence[NewEvent], mode: str | None,
         now: dt.datetime, ids: list[int]) -> None:
    """Keep ``events`` for ``conn``'s COMMIT; their ids are appended to ``ids`` then."""
    listen(conn.engine)
    transaction = conn.get_transaction()
    held = conn.info.get(KEY)
    if not isinstance(held, _Held) or held.transaction is not transaction:
        held = conn.info[KEY] = _Held(conn, transaction, ids)
    outbox.hold(held.groups, events, mode, now)


_listened: weakref.WeakSet[Dialect] = weakref.WeakSet()
_listen_lock = threading.Lock()


def listen(engine: Engine) -> None:
    """Send held events with ``engine``'s COMMITs (idempotent; a psycopg engine only).
    ``configure()`` calls it for its engine; a hold on another engine (a session with
    several binds) does on the way."""
    dialect = engine.dialect
    if dialect.driver != "psycopg" or dialect.is_async or dialect in _listened:
        return
    with _listen_lock:
        if dialect not in _listened:
            _wrap(dialect)
            _listened.add(dialect)


def _wrap(dialect: Dialect) -> None:
    """Have ``dialect`` send a connection's held events with its COMMIT, and forget
    them on its ROLLBACK (also the pool's reset of a returned connection). Both get
    the pool's connection, whose ``info`` is the ``Connection.info`` they were held in."""
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_connection: Any) -> None:
        held = _pop(dbapi_connection)
        if held is not None:
            _send(held, with_commit=True)
        commit(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        _pop(dbapi_connection)
        rollback(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _pop(dbapi_connection: Any) -> _Held | None:
    """Take the held events out of a pool connection's (or a ``Connection``'s) info."""
    try:
        info = dbapi_connection.info  # the pool's dict; a driver's own info is no dict
    except (AttributeError, NotImplementedError):  # the engine's first connect: no pool
        return None  # connection yet (SQLAlchemy's stand-in has no info)
    held = info.pop(KEY, None) if isinstance(info, dict) else None
    return held if isinstance(held, _Held) else None


def write_held(conn: Connection) -> None:
    """Write ``conn``'s held events now, in its open transaction: for a reader inside
    that transaction (``testing.process_pending(session)``)."""
    held = _pop(conn)
    if held is not None:
        _send(held, with_commit=False)


def _send(held: _Held, *, with_commit: bool) -> None:
    conn = held.conn
    if not held.groups or held.transaction is not conn.get_transaction():
        return  # nothing, or a transaction that ended without a COMMIT or ROLLBACK
    driver_conn = conn.connection.dbapi_connection
    pgconn = driver_conn.pgconn  # type: ignore[union-attr]
    if pgconn.transaction_status == _INERROR:
        return  # aborted by an earlier error: the COMMIT will not commit anything
    # Outside a transaction block, someone sent a COMMIT of their own: the data is
    # written, so its events are too (alone), rather than lost.
    commit = with_commit and pgconn.transaction_status == _INTRANS
    statements = outbox.held_inserts(held.groups)
    try:
        ids = _pipeline(pgconn, statements, commit,
                        driver_conn.info.encoding)  # type: ignore[union-attr]
    except conn.dialect.loaded_dbapi.Error as exc:
        sql, params = statements[0]
        error = outbox.driver_error(conn, sql.decode(), params, exc)
        if with_commit and not error.connection_invalidated:
            # The pool takes the connection back as committed: end the aborted one.
            driver_conn.rollback()  # type: ignore[union-attr]
        missing = outbox.missing_table(error)
        raise (missing or error) from (error if missing else exc)
    telemetry.transitions(State.REQUESTED.value, len(ids))
    held.ids.extend(ids)


# ---------------------------------------------------------------- libpq pipeline mode

def _pipeline(pgconn: Any, statements: list[tuple[bytes, list[bytes | None]]],
              commit: bool, encoding: str) -> list[int]:
    """The INSERTs, the COMMIT (when ``commit``) and a Sync in one pipeline; the
    inserted ids. Raises the first error the server returned (then it skipped the
    rest, and the COMMIT)."""
    from psycopg import errors, pq

    pgconn.enter_pipeline_mode()
    try:
        for sql, params in statements:
            pgconn.send_query_params(sql, params)
        if commit:
            pgconn.send_query_params(b"COMMIT", None)
        pgconn.pipeline_sync()
        results = _until_sync(pgconn)
    finally:
        if pgconn.status == pq.ConnStatus.OK:
            pgconn.exit_pipeline_mode()
    ids: list[int] = []
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise errors.error_from_result(result, encoding=encoding)
        if result.status == pq.ExecStatus.TUPLES_OK:
            ids.extend(int(result.get_value(row, 0)) for row in range(result.ntuples))
    return ids


def _until_sync(pgconn: Any) -> list[Any]:
    """Send what is queued and read every result up to the Sync's, waiting on the
    socket (without holding the GIL) rather than in libpq."""
    from psycopg import pq

    poller = select.poll()
    fd = pgconn.socket
    while pgconn.flush():  # a non-blocking connection: the rest waits for room
        poller.register(fd, select.POLLOUT | select.POLLIN)
        poller.poll()
        pgconn.consume_input()
    poller.register(fd, select.POLLIN)
    results: list[Any] = []
    while True:
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                continue  # the end of one query's results
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(result)
        poller.poll()
        pgconn.consume_input()


def _statuses() -> tuple[Any, Any]:
    try:
        from psycopg import pq
    except ImportError:  # pragma: no cover - only psycopg connections get here
        return None, None
    return pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR


_INTRANS, _INERROR = _statuses()
_POLL = hasattr(select, "poll")  # not on Windows: there the flush records them as before
