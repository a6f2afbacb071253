"""The library's tables (``sync_events`` and its siblings), the lifecycle states, and how
event ids become external versions.

The tables live on the library's own :data:`metadata` and ship as Alembic migrations
(branch label ``scrypath_sa``). Every event moves along one lifecycle::

    requested -> enqueued -> processing -> backend_accepted -> completed
                                        \\-> retrying -> (processing again)
                                        \\-> discarded

Every statement on these tables lives in :mod:`scrypath_sa.outbox` (the capture
triggers' INSERT in :mod:`scrypath_sa.triggers`).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    event,
    text,
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
)
# Half of each page free for HOT updates (see above): a storage parameter set once the
# table exists (a DDL event rather than Table(postgresql_with=...), which SQLAlchemy
# accepts from 2.1 only).
event.listen(sync_events, "after_create", DDL(  # type: ignore[no-untyped-call]
    f"ALTER TABLE sync_events SET (fillfactor = {FILLFACTOR})").execute_if(
        dialect="postgresql"))


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
    Column("owner", String(255), nullable=True),
    Column("state", String(16), nullable=True),
    Column("last_error", Text, nullable=True),
)
"""Progress of long operator runs (backfill), so an interrupted run resumes, and who
runs it (``owner``: host and pid), in which ``state`` (``running``, ``failed`` with
``last_error``, ``finished``), last heard from at ``updated_at``."""


VERSION_SCALE = 1024
"""External versions are event ids times this. The gap between two events' versions
leaves room for writes made behind the library's back (a delete in OpenSearch bumps a
document's version by one) without ever reaching the next event's version."""


def version_of(event_id: int) -> int:
    """The external version a write covering events up to ``event_id`` carries."""
    return event_id * VERSION_SCALE


def version_ceiling(high_water_mark: int) -> int:
    """The highest version this database has issued while its newest event id is
    ``high_water_mark`` (a backfill's included). An index holding a document above it
    holds something this database never wrote."""
    return (high_water_mark + 1) * VERSION_SCALE - 1


def backfill_version(high_water_mark: int) -> int:
    """A backfill that started after event ``high_water_mark`` writes just below the
    next event's version: above every earlier write (and out-of-band bumps of them),
    below every write of a change committed during the backfill."""
    return (high_water_mark + 1) * VERSION_SCALE - 1




def is_rebuild_version(version: int) -> bool:
    """True for the versions :func:`backfill_version` gives, which no event's write
    (:func:`version_of`) and no single out-of-band bump of one can have."""
    return version % VERSION_SCALE == VERSION_SCALE - 1


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
