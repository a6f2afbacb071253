"""The ``sync_events`` outbox: one row per unit of sync work, written with the data.

The table lives on the library's own :data:`metadata` and ships as an Alembic migration
(branch label ``scrypath_sa``). Every row moves along one lifecycle::

    requested -> enqueued -> processing -> backend_accepted -> completed
                                        \\-> retrying -> (processing again)
                                        \\-> discarded

Only this module writes state transitions, so the rules live in one place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    any_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)


class State(str, enum.Enum):
    """Lifecycle states. Each says exactly what is known, never more."""

    REQUESTED = "requested"  # durably recorded with the data; nothing sent anywhere
    ENQUEUED = "enqueued"  # someone is responsible for it (e.g. a broker accepted it)
    PROCESSING = "processing"  # a worker or the inline path is driving it
    BACKEND_ACCEPTED = "backend_accepted"  # the backend acknowledged the write; not yet visible
    COMPLETED = "completed"  # the write is done and was made visible (not "no drift")
    RETRYING = "retrying"  # failed in a way worth retrying at next_attempt_at
    DISCARDED = "discarded"  # given up: permanent failure or attempts exhausted

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({State.COMPLETED, State.DISCARDED})
UNFINISHED = frozenset(set(State) - TERMINAL)
CLAIMABLE = (State.REQUESTED, State.ENQUEUED, State.RETRYING)


class Operation(str, enum.Enum):
    UPSERT = "upsert"
    DELETE = "delete"

    def __str__(self) -> str:
        return self.value


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every database (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value  # type: ignore[no-any-return]


metadata = MetaData()

FILLFACTOR = 50

_STATES = ", ".join(f"'{s.value}'" for s in State)

sync_events = Table(
    "sync_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("index_name", String(255), nullable=False),
    Column("document_id", String(512), nullable=False),
    Column("pk", JSON, nullable=False),
    Column("operation", String(16), nullable=False),
    Column("mode", String(32), nullable=True),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error_kind", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("version_sent", BigInteger, nullable=True),
    Column("claimed_by", String(128), nullable=True),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("enqueued_at", UTCDateTime(), nullable=True),
    Column("processing_at", UTCDateTime(), nullable=True),
    Column("accepted_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("discarded_at", UTCDateTime(), nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"state IN ({_STATES})", name="ck_sync_events_state"),
    CheckConstraint("operation IN ('upsert', 'delete')", name="ck_sync_events_operation"),
    # The newest completed version of some documents (reconcile, confirm). Only
    # completed events: recording an event, and its in-flight transitions, stay clear
    # of this index; the completing UPDATE writes index entries anyway (see below).
    Index("ix_sync_events_completed_document", "index_name", "document_id",
          postgresql_where=text("completed_at IS NOT NULL"),
          sqlite_where=text("completed_at IS NOT NULL")),
    # Open work (and discarded events) by id. Deliberately not an index on ``state``:
    # a column in an index (or in a partial index's predicate) that an UPDATE changes
    # rules out PostgreSQL's HOT updates, and every event changes state several times.
    # Only ``completed_at`` is in this index, so only the last transition of an event
    # touches index pages; the claim, the enqueued mark, backend_accepted, retrying and
    # discarded are HOT updates into the free space fillfactor leaves on each page.
    Index("ix_sync_events_not_completed", "id",
          postgresql_where=text("completed_at IS NULL"),
          sqlite_where=text("completed_at IS NULL")),
    postgresql_with={"fillfactor": FILLFACTOR},
)


sync_checkpoints = Table(
    "sync_checkpoints",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("index_name", String(255), nullable=False),
    Column("position", JSON, nullable=True),
    Column("version", BigInteger, nullable=False),
    Column("processed", BigInteger, nullable=False, server_default="0"),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
)
"""Progress of long operator runs (backfill), so an interrupted run resumes."""


VERSION_SCALE = 1024
"""External versions are event ids times this. The gap between two events' versions
leaves room for writes made behind the library's back (a delete in OpenSearch bumps a
document's version by one) without ever reaching the next event's version."""


def version_of(event_id: int) -> int:
    """The external version a write covering events up to ``event_id`` carries."""
    return event_id * VERSION_SCALE


def backfill_version(high_water_mark: int) -> int:
    """A backfill that started after event ``high_water_mark`` writes just below the
    next event's version: above every earlier write (and out-of-band bumps of them),
    below every write of a change committed during the backfill."""
    return (high_water_mark + 1) * VERSION_SCALE - 1


Bind = Engine | Connection
"""Where outbox work runs: an engine (a transaction of its own each time) or a
connection already inside a transaction (e.g. a test wrapped in one), where each unit
becomes a savepoint."""


@contextlib.contextmanager
def begin(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        with bind.begin_nested():
            yield bind
    else:
        with bind.begin() as conn:
            yield conn


@contextlib.contextmanager
def connect(bind: Bind) -> Iterator[Connection]:
    """A connection for reads. From an Engine, its transaction ends with COMMIT rather
    than the pool's ROLLBACK: psycopg forgets its prepared statements on every
    ROLLBACK, and planning ``id = ANY(500 ids)`` afresh took as long as running it."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
    if len(rows) == 1:  # the common small commit: a plain execute, not an executemany
        return [conn.execute(_INSERT_ONE, rows[0]).scalar_one()]
    stmt = insert(sync_events).returning(sync_events.c.id, sort_by_parameter_order=True)
    return list(conn.execute(stmt, rows).scalars())


def _record_postgresql(conn: Connection, events: Sequence[NewEvent], mode: str | None,
                       now: dt.datetime) -> list[int]:
    """One prepared-once statement per model in the flush: a single row as VALUES,
    several as ``INSERT ... SELECT`` over one JSON array of (document id, key,
    operation) rows. One string is the cheapest parameter to send: a 1,000-row flush
    costs about 7 ms (11 ms with a text array per column, 34 ms as an executemany)."""
    groups: dict[tuple[str, str], list[NewEvent]] = {}
    for e in events:
        groups.setdefault((e.model, e.index_name), []).append(e)
    ids: list[int] = []
    for (model, index_name), group in groups.items():
        params: dict[str, Any] = {"model": model, "index_name": index_name, "mode": mode,
                                  "now": now}
        if len(group) == 1:
            e = group[0]
            params.update(document_id=e.document_id, pk=_dumps(e.pk),
                          operation=e.operation.value)
            ids.append(conn.execute(_INSERT_ONE_PG, params).scalar_one())
            continue
        params["rows"] = _dumps([(e.document_id, e.pk, e.operation.value) for e in group])
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


def id_filter(conn: Connection, column: Any, ids: Sequence[Any]) -> Any:
    """``column IN ids``: one array parameter on PostgreSQL, an expanded list elsewhere.

    (Tried and rejected: integer ids as one text array literal cast in SQL. Cheaper to
    send, but with stale statistics PostgreSQL chose plans that parsed the literal, or
    ran the claim's locking subquery, once per row: a 50,000-event run took 40 s.)"""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=_array_of(column.type)))
    return column.in_(list(ids))


@functools.lru_cache(maxsize=256)
def _array_of(item_type: Any) -> Any:
    """``ARRAY(item_type)``, built once per column type (building one is costly)."""
    if isinstance(item_type, Integer):  # BigInteger and SmallInteger too
        return _IntegerArray(item_type)
    return ARRAY(item_type)


try:
    from psycopg import adapters as _psycopg_adapters
    from psycopg.adapt import Dumper as _Dumper

    class _IntList(list[int]):
        """A list of plain ints, for :class:`_IntListDumper`."""

    class _IntListDumper(_Dumper):
        # Unknown type: the server takes the parameter's type from the SQL's cast.
        oid = 0

        def dump(self, obj: list[int]) -> bytes:
            return ("{" + ",".join(map(str, obj)) + "}").encode()

    # Registered for this private class only: no other value is adapted differently.
    _psycopg_adapters.register_dumper(_IntList, _IntListDumper)
except ImportError:  # pragma: no cover - psycopg (3) is not the only PostgreSQL driver
    _IntList = None  # type: ignore[assignment,misc]


class _IntegerArray(TypeDecorator[list[int]]):
    """An array of integers (ids, integer keys), sent by psycopg as one text literal.

    psycopg's own list dumper handles each element in Python (a dumper call and a
    quoting check each): 180 of the 520 us of client time a 500-id SELECT took. The SQL
    still reads ``= ANY(%(p)s::BIGINT[])``, a typed parameter, so plans do not change
    (see :func:`id_filter`)."""

    impl = ARRAY
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.driver != "psycopg" or _IntList is None:
            return super().bind_processor(dialect)
        return _int_list


def _int_list(value: Any) -> Any:
    if value is None or not all(type(v) is int for v in value):
        return None if value is None else list(value)
    return _IntList(value)


def key_filter(conn: Connection, columns: Sequence[Any], keys: Sequence[Sequence[Any]]) -> Any:
    """``(columns) IN keys`` for primary keys of one or several columns."""
    if len(columns) == 1:
        return id_filter(conn, columns[0], [k[0] for k in keys])
    return tuple_(*columns).in_([tuple(k) for k in keys])


def after_key(columns: Sequence[Any], last: Sequence[Any]) -> Any:
    """``(columns) > last``: the keyset condition for the page after ``last``."""
    return tuple_(*columns) > tuple(last) if len(columns) > 1 else columns[0] > last[0]


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
    for chunk in _chunks(sorted(set(ids)), CHUNK):
        if conn.dialect.name == "postgresql":
            lockable = (select(t.c.id)
                        .where(id_filter(conn, t.c.id, chunk), in_states(wanted))
                        .with_for_update(skip_locked=True))
            where = [t.c.id.in_(lockable.scalar_subquery())]
        else:
            where = [t.c.id.in_(chunk), in_states(wanted)]
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
        claimed.extend(Event(i, model, index, doc_id, tuple(_loads(pk)), operation, attempts)
                       for i, model, index, doc_id, pk, operation, attempts
                       in rows(conn.execute(stmt)))
    claimed.sort(key=lambda e: e.id)
    return claimed


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
        values: dict[str, Any] = {"state": state.value, "updated_at": now, "error_kind": kind,
                                  "last_error": error, "next_attempt_at": next_at}
        if operation is not None:
            values["operation"] = operation
        if versioned:
            values["version_sent"] = t.c.id * VERSION_SCALE
        if state in _STAMP:
            values[_STAMP[state]] = now
        for chunk in _chunks(ids, CHUNK):
            # Only open events are recorded here; saying so lets the planner find them
            # in the small partial index (by the primary key it may scan the table).
            conn.execute(update(t).where(id_filter(conn, t.c.id, chunk),
                                         t.c.completed_at.is_(None)).values(values))
    for state in {tr.state for tr in singles}:
        params = [{"b_id": tr.event_id, "b_operation": tr.operation, "b_version": tr.version_sent,
                   "b_kind": tr.error_kind, "b_error": tr.error, "b_next": tr.next_attempt_at}
                  for tr in singles if tr.state is state]
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
    for chunk in _chunks(list(ids), CHUNK):
        stmt = update(t).where(id_filter(conn, t.c.id, chunk))
        if only_from is not None:
            stmt = stmt.where(in_states(only_from))
        count += conn.execute(stmt.values(values)).rowcount
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
    return [(row[0], row[1]) for row in conn.execute(stmt)]


def high_water_mark(conn: Connection) -> int:
    """The newest event id so far (0 when there is none)."""
    return int(conn.execute(select(func.max(sync_events.c.id))).scalar() or 0)


def rerequest(conn: Connection, ids: Sequence[int]) -> None:
    """Put events that are about to be dispatched again back to ``requested``: every
    dispatch starts from there, so "enqueued" is only ever written after a send."""
    mark(conn, ids, State.REQUESTED, only_from=[State.RETRYING, State.ENQUEUED])


def due(conn: Connection, older_than: dt.timedelta, enqueued_older_than: dt.timedelta,
        limit: int) -> list[tuple[int, str | None]]:
    """Events that need a push, as (id, mode) pairs, oldest first:

    * ``requested`` for longer than ``older_than`` (the dispatch after commit failed or
      the process died before it);
    * ``retrying`` whose ``next_attempt_at`` is more than ``older_than`` past (whoever
      scheduled the retry, e.g. Dramatiq's own retry, had its chance first);
    * ``enqueued`` for longer than ``enqueued_older_than`` (the message was lost).
    """
    t = sync_events
    now = utcnow()
    conditions = [
        (t.c.state == State.REQUESTED.value) & (t.c.requested_at <= now - older_than),
        (t.c.state == State.RETRYING.value) & (t.c.next_attempt_at <= now - older_than),
        (t.c.state == State.ENQUEUED.value) & (t.c.enqueued_at <= now - enqueued_older_than),
    ]
    query = (select(t.c.id, t.c.mode).where(t.c.completed_at.is_(None), or_(*conditions))
             .order_by(t.c.id).limit(limit))
    return [(row[0], row[1]) for row in conn.execute(query)]


try:  # orjson, when installed (the opensearch extra), codes keys several times faster
    import orjson

    _loads = orjson.loads

    def _dumps(value: Any) -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # e.g. an integer wider than 64 bits
            return json.dumps(value)
except ImportError:  # pragma: no cover - exercised only without orjson
    _loads = json.loads  # type: ignore[assignment]
    _dumps = json.dumps  # type: ignore[assignment]


def rows(result: Any, size: int = 200) -> Iterator[Any]:
    """The rows of ``result``, fetched ``size`` at a time: as cheap as ``.all()`` (one
    driver call per part, where iterating row by row costs ~0.3 us a row more), without
    holding every row of a large result at once (thousands of objects alive together
    bring the cycle collector's passes, and with them its full collections, closer)."""
    for part in result.partitions(size):
        yield from part


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
