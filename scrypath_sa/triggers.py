"""Capture by trigger (PostgreSQL): the table records its own changes in ``sync_events``.

A model with ``__search_capture__ = "trigger"`` gets two PL/pgSQL functions and three
triggers on its table (:func:`ddl`; in a migration, ``op.execute`` each statement).
Every INSERT, DELETE, and UPDATE that changes a column the document reads writes a
``requested`` event for the ``dramatiq`` mode in the writing transaction: the ORM
session's writes cost the commit no statement of the library's, and writes the session
never sees (raw SQL, another application, ``psql``) are recorded too. An INSERT's rows
are recorded by one set-based INSERT per statement (a statement trigger reading them as
a transition table); updated and deleted rows one at a time (row triggers).

A session in the ``dramatiq`` mode leaves such models to the trigger and rings the
workers' doorbell after its commit (its outcome counts those events as ``unnamed``:
their ids are the database's). A session in any other mode (``inline`` waits for its
own events, ``manual`` hands them over by id) tells the trigger to stand aside for its
transaction (:data:`SESSION_CAPTURES`) and records them itself, as for any model; so
does a ``dramatiq`` session whose flush (or ``bulk_*`` call) sends
:data:`SESSION_RECORDS_FROM` statements or more writing such rows (one set-based INSERT
costs less than as many trigger runs).

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
"""A flush (or ``bulk_*`` call) that sends at least this many statements writing rows
of trigger-captured models has the session record its changes (one set-based INSERT
with the COMMIT), not a trigger run per statement: cheaper from about this many
(docs/performance.md). The ORM sends an UPDATE or DELETE per row; new rows whose keys
the database makes as one INSERT (psycopg, psycopg2), new rows with their keys given as
an INSERT each on psycopg and as one on psycopg2."""

_INSERTED = "scrypath_sa_inserted"
"""The INSERT trigger's transition table: the statement's new rows."""

_KEY_TYPES = (int, str, uuid.UUID)
_MAX_NAME = 63  # PostgreSQL's identifier length


def ddl(model: type) -> list[str]:
    """The statements that make ``model``'s table record its changes: two capture
    functions and three triggers (idempotent: run them again after changing
    ``__search_fields__``, or after upgrading from a version with two triggers).

    An INSERT is recorded by a statement trigger reading the statement's new rows as a
    transition table: one set-based INSERT into ``sync_events`` however many rows. UPDATE
    and DELETE are recorded by row triggers; an UPDATE only when a column the document
    reads changed."""
    info, table, mapper = _model(model)
    quote = _quote()
    names = _names(table, quote)
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
    columns = ("model, index_name, document_id, pk, operation, mode, state, attempts, "
               "requested_at, updated_at")
    constants = f"{_literal(info.name)}, {_literal(info.index)}"
    requested = f"{_literal(MODE)}, {_literal(State.REQUESTED.value)}, 0, now(), now()"
    on = names["table"]
    return [
        _capture_function(names["row_function"], "DECLARE\n  r record;\n", f"""\
  IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
  INSERT INTO {sync_events.fullname} ({columns})
  VALUES ({constants}, {document_id}, json_build_array({row_keys}),
          CASE TG_OP WHEN 'DELETE' THEN 'delete' ELSE 'upsert' END, {requested});
"""),
        _capture_function(names["insert_function"], "", f"""\
  INSERT INTO {sync_events.fullname} ({columns})
  SELECT {constants}, {document_id}, json_build_array({row_keys}), 'upsert', {requested}
  FROM {_INSERTED} r;
"""),
        f"DROP TRIGGER IF EXISTS {names['insert']} ON {on}",
        f"CREATE TRIGGER {names['insert']} AFTER INSERT ON {on} "
        f"REFERENCING NEW TABLE AS {_INSERTED} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {names['insert_function']}()",
        f"DROP TRIGGER IF EXISTS {names['delete']} ON {on}",
        f"CREATE TRIGGER {names['delete']} AFTER DELETE ON {on} "
        f"FOR EACH ROW EXECUTE FUNCTION {names['row_function']}()",
        f"DROP TRIGGER IF EXISTS {names['update']} ON {on}",
        f"CREATE TRIGGER {names['update']} AFTER UPDATE ON {on} FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION {names['row_function']}()",
    ]


def installed(conn: Connection, model: type) -> bool:
    """Whether ``model``'s table has its three capture triggers, enabled (asked of the
    database; a table with an older version's two is not: run :func:`ddl` again)."""
    _, table, _ = _model(model)
    names = _names(table, None)
    triggers = [names["insert"], names["delete"], names["update"]]
    found = conn.execute(text(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(:table) "
        "AND tgname IN (:a, :b, :c) AND tgenabled <> 'D'"),
        {"table": names["table"], "a": triggers[0], "b": triggers[1], "c": triggers[2]},
    ).scalar_one()
    return bool(found == len(triggers))


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
        log.warning("scrypath_sa: %s is captured by trigger but its table's capture "
                    "triggers are missing or out of date: the session records its changes "
                    "meanwhile, other writers' may not be recorded; create them with "
                    "scrypath_sa.triggers.ddl(%s) in a migration", model.__name__,
                    model.__name__,
                    extra=telemetry.fields("scrypath_sa.capture_trigger_missing",
                                           model=model.__name__))
    return present


def drop_ddl(model: type) -> list[str]:
    """The statements that take ``model``'s capture triggers and functions away (an
    older version's two triggers and function too)."""
    _, table, _ = _model(model)
    names = _names(table, _quote())
    on = names["table"]
    return [
        *(f"DROP TRIGGER IF EXISTS {names[t]} ON {on}" for t in ("insert", "delete", "update")),
        f"DROP FUNCTION IF EXISTS {names['insert_function']}()",
        f"DROP FUNCTION IF EXISTS {names['row_function']}()",
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


def _names(table: Any, quote: Any) -> dict[str, str]:
    """The table's name and its capture functions' and triggers' (``quote``: the
    preparer's, for statements; None: bare trigger names, for the catalogue)."""
    def name(prefix: str) -> str:
        found = _name(prefix, table.name)
        return quote(found) if quote is not None else found

    qualify = quote or _quote()
    return {
        "table": _qualified(table, table.name, qualify),
        "row_function": _qualified(table, _name("scrypath_sa_capture", table.name), qualify),
        "insert_function": _qualified(
            table, _name("scrypath_sa_capture_insert", table.name), qualify),
        "insert": name("scrypath_sa_capture"),
        "delete": name("scrypath_sa_capture_delete"),
        "update": name("scrypath_sa_capture_update"),
    }


def _capture_function(function: str, declare: str, body: str) -> str:
    """A trigger function that writes nothing while a session records its transaction
    itself (:data:`SESSION_CAPTURES`), else runs ``body``."""
    return (f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $f$\n{declare}BEGIN\n"
            "  IF current_setting('scrypath_sa.capture', true) = 'session' THEN\n"
            "    RETURN NULL;\n"
            "  END IF;\n"
            f"{body}  RETURN NULL;\nEND\n$f$")


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
