"""Capture by trigger (PostgreSQL): the table records its own changes in ``sync_events``.

A model with ``__search_capture__ = "trigger"`` gets a PL/pgSQL function and two row
triggers on its table (:func:`ddl`; in a migration, ``op.execute`` each statement).
Every INSERT, DELETE, and UPDATE that changes a column the document reads writes a
``requested`` event for the ``dramatiq`` mode in the writing transaction: the ORM
session's writes cost the commit no statement of the library's, and writes the session
never sees (raw SQL, another application, ``psql``) are recorded too.

A session in the ``dramatiq`` mode leaves such models to the trigger and rings the
workers' doorbell after its commit (its outcome counts those events as ``unnamed``:
their ids are the database's). A session in any other mode (``inline`` waits for its
own events, ``manual`` hands them over by id) tells the trigger to stand aside for its
transaction (:data:`SESSION_CAPTURES`) and records them itself, as for any model; so
does a ``dramatiq`` session whose flush (or ``bulk_*`` call) writes
:data:`SESSION_RECORDS_FROM` rows or more (one set-based INSERT costs less than a
trigger run per row).

Limits: default document ids only (the primary key: integers, text or UUIDs); an UPDATE
that changes a primary key is recorded as an upsert of the new key only (as the
session's capture does, ids must not change).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Engine, inspect, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapper, RelationshipProperty

from scrypath_sa import registry, telemetry
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.schema import State, sync_events

log = logging.getLogger("scrypath_sa")

MODE = "dramatiq"
"""The mode trigger-recorded events are for (the workers' doorbell claims them)."""

SESSION_CAPTURES = "SELECT set_config('scrypath_sa.capture', 'session', true)"
"""Sent by a session that records this transaction's changes itself: the triggers
write nothing until the transaction ends."""

SESSION_RECORDS_FROM = 16
"""A flush (or ``bulk_*`` call) that writes at least this many rows of trigger-captured
models has the session record them (one set-based INSERT with the COMMIT), not a
trigger run per row: cheaper from about this many rows (docs/performance.md)."""

_KEY_TYPES = (int, str, uuid.UUID)
_MAX_NAME = 63  # PostgreSQL's identifier length


def ddl(model: type) -> list[str]:
    """The statements that make ``model``'s table record its changes: the capture
    function and its two triggers (idempotent: run them again after changing
    ``__search_fields__``)."""
    info, table, mapper = _model(model)
    quote = _quote()
    function = _qualified(table, _name("scrypath_sa_capture", table.name), quote)
    on = _qualified(table, table.name, quote)
    keys = [_key_column(info.name, c) for c in mapper.primary_key]
    row_keys = ", ".join(f"r.{quote(c.name)}" for c in keys)
    if len(keys) == 1:
        document_id = f"r.{quote(keys[0].name)}::text"
    else:
        document_id = " || ':' || ".join(
            f"replace(replace(r.{quote(c.name)}::text, '%', '%25'), ':', '%3A')"
            for c in keys)
    changed = _changed_columns(model, mapper)
    if changed is None:
        when = "OLD.* IS DISTINCT FROM NEW.*"
    else:
        old = ", ".join(f"OLD.{quote(c)}" for c in changed)
        new = ", ".join(f"NEW.{quote(c)}" for c in changed)
        when = f"ROW({old}) IS DISTINCT FROM ROW({new})"
    insert_trigger = quote(_name("scrypath_sa_capture", table.name))
    update_trigger = quote(_name("scrypath_sa_capture_update", table.name))
    return [
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  r record;
BEGIN
  IF current_setting('scrypath_sa.capture', true) = 'session' THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
  INSERT INTO {sync_events.fullname} (model, index_name, document_id, pk, operation,
                                      mode, state, attempts, requested_at, updated_at)
  VALUES ({_literal(info.name)}, {_literal(info.index)}, {document_id},
          json_build_array({row_keys}),
          CASE TG_OP WHEN 'DELETE' THEN 'delete' ELSE 'upsert' END,
          {_literal(MODE)}, {_literal(State.REQUESTED.value)}, 0, now(), now());
  RETURN NULL;
END
$f$""",
        f"DROP TRIGGER IF EXISTS {insert_trigger} ON {on}",
        f"CREATE TRIGGER {insert_trigger} AFTER INSERT OR DELETE ON {on} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
        f"DROP TRIGGER IF EXISTS {update_trigger} ON {on}",
        f"CREATE TRIGGER {update_trigger} AFTER UPDATE ON {on} FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION {function}()",
    ]


def installed(conn: Connection, model: type) -> bool:
    """Whether ``model``'s table has both capture triggers, enabled (asked of the
    database)."""
    _, table, _ = _model(model)
    quote = _quote()
    names = [_name("scrypath_sa_capture", table.name),
             _name("scrypath_sa_capture_update", table.name)]
    found = conn.execute(text(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(:table) "
        "AND tgname IN (:a, :b) AND tgenabled <> 'D'"),
        {"table": _qualified(table, table.name, quote), "a": names[0], "b": names[1]},
    ).scalar_one()
    return bool(found == 2)


RECHECK_SECONDS = 60.0
"""How long a process trusts what it found about a table's triggers."""

_found: weakref.WeakKeyDictionary[Engine, dict[type, tuple[bool, float]]] = (
    weakref.WeakKeyDictionary())
_found_lock = threading.Lock()


def records(bind: Engine | Connection, model: type) -> bool:
    """:func:`installed`, remembered per engine and model for :data:`RECHECK_SECONDS`
    (every flush asks). Missing triggers are logged with the fix; meanwhile the session
    records the model's changes itself (its writes are not lost; other writers' are,
    until the triggers exist: ``status`` says so)."""
    engine = bind.engine
    now = time.monotonic()
    known = _found.get(engine, {}).get(model)
    if known is not None and now - known[1] < RECHECK_SECONDS:
        return known[0]
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            present = installed(conn, model)
    else:
        present = installed(bind, model)
    with _found_lock:
        _found.setdefault(engine, {})[model] = (present, now)
    if not present:
        log.warning("scrypath_sa: %s is captured by trigger but its table has no capture "
                    "trigger: the session records its changes meanwhile, other writers' "
                    "are not recorded; create them with scrypath_sa.triggers.ddl(%s) in a "
                    "migration", model.__name__, model.__name__,
                    extra=telemetry.fields("scrypath_sa.capture_trigger_missing",
                                           model=model.__name__))
    return present


def drop_ddl(model: type) -> list[str]:
    """The statements that take ``model``'s capture triggers and function away."""
    _, table, _ = _model(model)
    quote = _quote()
    on = _qualified(table, table.name, quote)
    return [
        f"DROP TRIGGER IF EXISTS {quote(_name('scrypath_sa_capture', table.name))} ON {on}",
        f"DROP TRIGGER IF EXISTS {quote(_name('scrypath_sa_capture_update', table.name))} "
        f"ON {on}",
        f"DROP FUNCTION IF EXISTS "
        f"{_qualified(table, _name('scrypath_sa_capture', table.name), quote)}()",
    ]


def install(bind: Engine | Connection, models: Sequence[type] | None = None) -> None:
    """Run :func:`ddl` for ``models`` (default: every registered model captured by
    trigger) on ``bind`` (tests and ``create_all()`` setups; migrations run the
    statements themselves)."""
    if bind.dialect.name != "postgresql":
        raise ConfigurationError(
            f"__search_capture__ = 'trigger' needs PostgreSQL; this database is "
            f"{bind.dialect.name}: capture by 'session' there")
    chosen = list(models) if models is not None else [
        info.cls for info in registry.all_models() if info.by_trigger]
    statements = [sql for model in chosen for sql in ddl(model)]
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            for sql in statements:
                conn.execute(text(sql))
    else:
        for sql in statements:
            bind.execute(text(sql))


def _model(model: type) -> tuple[registry.ModelInfo, Any, Mapper[Any]]:
    info = registry.info_for(model)
    if info is None or not info.by_trigger:
        raise ConfigurationError(
            f"{getattr(model, '__name__', model)!r} is not a Searchable model with "
            "__search_capture__ = 'trigger'")
    mapper: Mapper[Any] = inspect(info.cls)
    return info, mapper.local_table, mapper


def _key_column(model: str, column: Any) -> Column[Any]:
    try:
        kind = column.type.python_type
    except NotImplementedError:
        kind = object
    if kind is bool or not issubclass(kind, _KEY_TYPES):
        raise ConfigurationError(
            f"{model}.{column.name} is a {column.type} primary key: capture by trigger "
            "makes document ids from integer, text or UUID keys; capture by 'session'")
    return column  # type: ignore[no-any-return]


def _changed_columns(model: type, mapper: Mapper[Any]) -> list[str] | None:
    """The columns whose change makes a new document; None: any column's."""
    fields = registry.changed_fields(model)
    if fields is None:
        return None
    names: dict[str, None] = {}
    for key in fields:
        prop = mapper.attrs[key]
        columns = (prop.local_columns if isinstance(prop, RelationshipProperty)
                   else prop.columns)
        names.update((c.name, None) for c in columns)
    return list(names)


def _quote() -> Any:
    return postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]


def _name(prefix: str, table: str) -> str:
    name = f"{prefix}_{table}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:_MAX_NAME - 9]}_{digest}"


def _qualified(table: Any, name: str, quote: Any) -> str:
    return f"{quote(table.schema)}.{quote(name)}" if table.schema else quote(name)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
