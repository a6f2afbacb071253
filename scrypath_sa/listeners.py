"""Session event wiring: capture changed rows, record them in the outbox, dispatch after
commit. Installed by :func:`scrypath_sa.configure`.

Each session keeps one :class:`SessionSync` in ``Session.info``:

* ``before_flush`` opens a capture; mapper events (update/delete, which see cascades and
  orphans) and the session's modified objects fill it;
* ``after_flush`` adds the session's new objects (their keys are assigned by then) and
  writes one ``sync_events`` row per (index, document id) on the flush's connection, so
  a rollback removes both data and events;
* ORM-enabled bulk ``update()``/``delete()`` are captured in ``do_orm_execute`` (with
  RETURNING where the database has it);
* the root ``after_commit`` marks the ids as committed; once the transaction is fully
  closed (``after_transaction_end``) they go to the mode, outside the caller's
  transaction. A root rollback forgets them. Ids from a rolled-back savepoint are
  harmless: the processor skips ids it cannot find.
"""

from __future__ import annotations

import functools
import inspect as pyinspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Delete, Engine, Insert, Update, event, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, object_session

from scrypath_sa import aio, documents, outbox, registry, telemetry, triggers, with_commit
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError, NotConfiguredError, SyncIncompleteError
from scrypath_sa.mixin import Searchable
from scrypath_sa.modes.dispatch import dispatch, dispatch_together, put_together
from scrypath_sa.modes.selection import resolve_mode
from scrypath_sa.outbox import NewEvent
from scrypath_sa.outcome import Failure, Outcome
from scrypath_sa.schema import Operation, State, utcnow

log = logging.getLogger("scrypath_sa")

STATE_KEY = "scrypath_sa"
"""The ``Session.info`` key of a session's :class:`SessionSync`."""


class SessionSync:
    """One session's sync state: what the current transaction captured and recorded,
    and the outcome of its last commit with sync work."""

    __slots__ = ("capture", "captured", "committed", "config", "engine", "outcome",
                 "pending", "refused", "refused_committed", "related", "stood_aside",
                 "to_trigger", "triggered", "triggered_committed")

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the current transaction (its last outcome stays)."""
        self.capture: dict[tuple[str, str], NewEvent] | None = None  # open during a flush
        self.captured: dict[int, Operation] = {}  # id() of objects before_flush captured
        self.related: list[tuple[registry.Dependency, Any]] = []  # fan out after the flush
        self.pending: list[int] = []  # recorded in this transaction
        self.committed: list[int] = []  # the root transaction committed these
        self.engine: Engine | None = None  # where they were recorded
        self.config: Config | None = None  # the target's, once a transaction began
        self.refused: list[Failure] = []  # recorded discarded: bad sync input
        self.refused_committed: list[Failure] = []
        self.to_trigger: set[type] = set()  # classes this flush leaves to their triggers
        self.stood_aside = False  # told the triggers this transaction records itself
        self.triggered = 0  # rows of trigger-captured models written (events unnamed)
        self.triggered_committed = 0


def session_sync(session: Session) -> SessionSync:
    found = session.info.get(STATE_KEY)
    if not isinstance(found, SessionSync):
        found = session.info[STATE_KEY] = SessionSync()
    return found


# ------------------------------------------------------------------------ the handlers

Pick = Callable[[Session], Config | None]
"""Which configuration a session's events belong to (None: not this installation's)."""


def handlers(pick: Pick) -> list[tuple[str, Any]]:
    """The session events :func:`scrypath_sa.configure` listens to; ``pick`` says which
    configuration a session's events belong to (one per target, or one per Flask app
    sharing ``db.session``)."""

    def before_flush(session: Session, flush_context: Any, instances: Any) -> None:
        config = pick(session)
        if config is None or not config.enabled:
            return
        capture: dict[tuple[str, str], NewEvent] = {}
        state = session_sync(session)
        state.capture, state.captured = capture, {}
        dirty = [obj for obj in session.dirty if isinstance(obj, Searchable)]
        deleted = [obj for obj in session.deleted if isinstance(obj, Searchable)]
        if registry.has_trigger_models():
            _choose_capture(session, config, state,
                            _trigger_rows(session.new, (*dirty, *deleted)))
        for obj in dirty:
            if _document_changed(session, obj):
                _capture(state, obj, Operation.UPSERT)
                state.captured[id(obj)] = Operation.UPSERT
        for obj in deleted:
            _capture(state, obj, Operation.DELETE)
            state.captured[id(obj)] = Operation.DELETE
        if registry.has_dependencies():
            _related_before_flush(session, config, state)

    def after_flush(session: Session, flush_context: Any) -> None:
        state = session_sync(session)
        capture, state.capture = state.capture, None
        if capture is None:
            return
        _capture_new(state, capture, session.new)
        config = state.config or pick(session)
        if config is None:
            return
        if state.related:
            _fan_out(session, config, state)
        if not capture:
            return
        first = next(iter(capture.values()))
        info = registry.info_for_index(first.index_name)
        mapper = info.mapper if info else None
        conn = session.connection(bind_arguments={"mapper": mapper} if mapper else None)
        _remember(session, config, conn, list(capture.values()), mapper)

    def do_orm_execute(orm_state: ORMExecuteState) -> Any:
        if not (orm_state.is_update or orm_state.is_delete or orm_state.is_insert):
            return None
        config = pick(orm_state.session)
        if config is None or not config.enabled:
            return None
        mapper = orm_state.bind_mapper
        if mapper is None and isinstance(orm_state.statement, _DML):
            # A Core statement on a table (session.execute(table.insert(), rows)).
            by_table = registry.info_for_table(orm_state.statement.table)
            mapper = by_table.mapper if by_table is not None else None
        if mapper is None:
            return None
        info = registry.info_for(mapper.class_)
        fans_out = bool(registry.dependencies_on(mapper.class_)) and not orm_state.is_insert
        if info is None and not fans_out:
            return None
        state = session_sync(orm_state.session)
        state.config = config
        if info is not None and info.by_trigger:
            _choose_capture(orm_state.session, config, state, {mapper.class_: [1, 0, 0]})

        def run() -> Any:  # the statement, with its own rows' events when Searchable
            if info is None:
                return orm_state.invoke_statement()
            if mapper.class_ in state.to_trigger:  # the trigger records its rows
                result = orm_state.invoke_statement()
                written = getattr(result, "rowcount", -1)
                state.triggered += written if written >= 0 else 1  # unknown: wake anyway
                return result
            if orm_state.is_insert:
                return _orm_insert(orm_state, config, info, mapper)
            return _bulk_statement(orm_state, config, info, mapper)

        return _related_statement(orm_state, config, mapper, run) if fans_out else run()

    def after_begin(session: Session, transaction: SessionTransaction,
                    connection: Connection) -> None:
        config = pick(session)
        if config is not None:
            session_sync(session).config = config  # for bulk_* methods and mark_changed

    def after_commit(session: Session) -> None:
        if session.get_nested_transaction() is None:  # the root transaction committed
            state = session_sync(session)
            state.committed, state.pending = state.pending, []
            state.refused_committed, state.refused = state.refused, []
            state.triggered_committed, state.triggered = state.triggered, 0

    def after_rollback(session: Session) -> None:
        if session.get_nested_transaction() is None:
            session_sync(session).reset()

    def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is not None:
            return
        state = session_sync(session)
        config = state.config or pick(session)
        ids, refused = state.committed, state.refused_committed
        triggered = state.triggered_committed
        engine = state.engine or (config.bind if config is not None else None)
        state.reset()
        if config is None or (not ids and not refused and not triggered):
            return
        mode_name = resolve_mode(config.default_mode, session)
        mode = config.modes.get(mode_name)
        outcome: Outcome | None
        if not ids:  # the triggers recorded its events, or it refused them all
            outcome = None
        elif aio.in_async_commit():  # an AsyncSession: not on the event loop
            outcome = aio.off_the_loop(functools.partial(put_together, config, mode_name, ids))
        elif engine is config.bind and mode is not None and mode.merges:
            outcome = dispatch_together(config, mode_name, ids)
        else:
            outcome = dispatch(config, mode_name, ids, engine)
        if triggered:
            outcome = _with_unnamed(outcome, config, triggered, engine)
        elif outcome is None:
            outcome = Outcome(mode_name, [])
        if refused:
            outcome.event_ids.extend(f.event_id for f in refused)
            outcome.failures.extend(refused)
            outcome.states[State.DISCARDED.value] += len(refused)
        state.outcome = outcome
        if config.strict and not (mode is not None and mode.kept_promise(outcome)):
            raise SyncIncompleteError(outcome)

    return [
        ("before_flush", before_flush),
        ("after_flush", after_flush),
        ("do_orm_execute", do_orm_execute),
        ("after_begin", after_begin),
        ("after_commit", after_commit),
        ("after_rollback", after_rollback),
        ("after_transaction_end", after_transaction_end),
    ]


def _remember(session: Session, config: Config, conn: Connection,
              events: list[NewEvent], mapper: Mapper[Any] | None) -> None:
    state = session_sync(session)
    mode = resolve_mode(config.default_mode, session)
    # An id OpenSearch refuses or the table cannot hold is recorded discarded: it
    # must never fail the commit.
    refused = [e for e in events if outbox.unusable(e.document_id)]
    if refused:
        events = [e for e in events if not outbox.unusable(e.document_id)]
        state.refused.extend(outbox.record_rejected(conn, refused, mode))
    try:
        with telemetry.span("scrypath_sa.capture", events=len(events), mode=mode):
            if events and with_commit.can_hold(session, conn, mapper):
                with_commit.hold(conn, events, mode, utcnow(), state.pending)
            else:
                state.pending.extend(outbox.record(conn, events, mode))
    except DBAPIError as exc:
        missing = outbox.missing_table(exc)
        if missing is not None:
            raise missing from exc
        raise
    state.engine = conn.engine


Written = list[int]
"""A trigger-captured class's rows about to be written: updated or deleted (a statement
each), inserted with their key given, inserted with a key the database makes."""


def _trigger_rows(new: Iterable[Any], changed: Iterable[Any]) -> dict[type, Written]:
    """The rows of trigger-captured classes among a flush's ``new`` and ``changed``
    (dirty or deleted) objects, per class."""
    written: dict[type, Written] = {}
    others: set[type] = set()

    def counts(obj: Any) -> Written | None:
        cls = type(obj)
        found = written.get(cls)
        if found is None and cls not in others:
            info = registry.info_for(cls) if isinstance(obj, Searchable) else None
            if info is None or not info.by_trigger:
                others.add(cls)
                return None
            found = written[cls] = [0, 0, 0]
        return found

    for obj in new:
        if (row := counts(obj)) is not None:
            keyed = all(getattr(obj, k) is not None for k in registry.pk_keys(type(obj)))
            row[1 if keyed else 2] += 1
    for obj in changed:
        if (row := counts(obj)) is not None:
            row[0] += 1
    return written


def _one_by_one(dialect: Any, written: Written) -> int:
    """How many of ``written``'s rows the ORM sends a statement each, so that a trigger
    runs once per row: updates and deletes; inserts with their keys given unless the
    driver batches INSERTs without RETURNING (psycopg2 does; psycopg sends them one
    by one, pipelined); inserts whose keys the database makes unless it batches them
    with RETURNING (psycopg and psycopg2 do)."""
    changed, keyed, unkeyed = written
    return (changed + (0 if dialect.use_insertmanyvalues_wo_returning else keyed)
            + (0 if dialect.use_insertmanyvalues else unkeyed))


def _choose_capture(session: Session, config: Config, state: SessionSync,
                    written: Mapping[type, Written]) -> None:
    """Who records the changes of the trigger-captured models among ``written`` (the
    Searchable classes about to be written, with their rows). Their triggers
    (``to_trigger``), when the session's mode is the one they record for, the triggers
    exist, and fewer than :data:`~scrypath_sa.triggers.SESSION_RECORDS_FROM` of the
    rows are sent a statement each (a row trigger, or the INSERT trigger, runs once per
    statement: :func:`_one_by_one`). Else the session,
    which first tells the triggers to stand aside for the rest of its transaction (once:
    the setting lasts until the transaction ends, so later flushes record their rows
    themselves too)."""
    state.to_trigger = set()
    if state.stood_aside:  # this transaction records its changes itself
        return
    binds: dict[type, Engine | Connection] = {}
    rows = 0
    for cls, count in written.items():
        info = registry.info_for(cls)
        if info is not None and info.by_trigger:
            bind = binds[cls] = session.get_bind(info.mapper)
            rows += _one_by_one(bind.dialect, count)
    if not binds:
        return
    if (rows < triggers.SESSION_RECORDS_FROM
            and resolve_mode(config.default_mode, session) == triggers.MODE):
        state.to_trigger = {cls for cls, bind in binds.items()
                            if bind.dialect.name == "postgresql" and triggers.records(bind, cls)}
        return
    for bind in {id(b): b for b in binds.values()}.values():
        if bind.dialect.name == "postgresql":
            session.connection(bind_arguments={"bind": bind}).exec_driver_sql(
                triggers.SESSION_CAPTURES)
            state.stood_aside = True


def _with_unnamed(outcome: Outcome | None, config: Config, count: int,
                  engine: Engine | None) -> Outcome:
    """``outcome`` (None: the commit recorded no event itself) with the ``count`` events
    the triggers recorded in the commit: the mode they are for is woken (their ids are
    the database's)."""
    mode = config.modes.get(triggers.MODE)
    if mode is None:
        unnamed = Outcome(triggers.MODE, [], error=(
            f"no {triggers.MODE!r} mode is configured for the events the triggers "
            "recorded: they stay requested for sweep()"))
        unnamed.states[State.REQUESTED.value] += count
    else:
        unnamed = mode.dispatch_unnamed(config, count, engine)
    unnamed.unnamed = count
    if outcome is None or (not outcome.event_ids and not outcome.states):
        return unnamed
    outcome.unnamed = count
    outcome.states.update(unnamed.states)
    outcome.error = outcome.error or unnamed.error
    return outcome


def _capture(state: SessionSync, obj: Any, op: Operation) -> None:
    if state.capture is None:
        return
    if type(obj) in state.to_trigger:
        state.triggered += 1
        return
    info = registry.info_for(type(obj))
    if info is None:
        return
    capture = state.capture
    pk = documents.primary_key(obj)
    document_id = documents.document_id(obj, pk)
    capture[(info.index, document_id)] = NewEvent(info.name, info.index, document_id, pk, op)


def _capture_new(state: SessionSync, capture: dict[tuple[str, str], NewEvent],
                 objects: Iterable[Any]) -> None:
    """The session's new objects, in ``after_flush`` (their keys are assigned by then).
    One pass here, with the per-class work done once, costs far less than a mapper
    event per inserted row; a default id of a one-column integer or text key is that
    value as text (what :func:`documents.pk_document_id` makes of it), taken directly."""
    plans: dict[type, tuple[str, str, tuple[str, ...], str | None] | None] = {}
    upsert = Operation.UPSERT
    for obj in objects:
        cls = type(obj)
        if cls in plans:
            plan = plans[cls]
        else:
            info = registry.info_for(cls) if isinstance(obj, Searchable) else None
            keys = registry.pk_keys(cls) if info is not None else ()
            plan = plans[cls] = None if info is None or cls in state.to_trigger else (
                info.name, info.index, keys,
                keys[0] if len(keys) == 1 and registry.uses_default_ids(cls) else None)
        if plan is None:
            if cls in state.to_trigger:  # its trigger records the row
                state.triggered += 1
            continue
        name, index, keys, only_key = plan
        if only_key is not None:
            value = getattr(obj, only_key)
            if type(value) is int or type(value) is str:
                document_id = str(value)
                capture[(index, document_id)] = NewEvent(name, index, document_id, [value],
                                                         upsert)
                continue
        pk = documents.json_safe_key([getattr(obj, k) for k in keys])
        if None in pk:  # no key yet: added during this flush; the next one writes it
            continue
        document_id = documents.document_id(obj, pk)
        capture[(index, document_id)] = NewEvent(name, index, document_id, pk, upsert)


# ------------------------------------------------------------------------ mapper events

_mapper_events_installed = False


def install_mapper_events() -> None:
    """Update/delete hooks on every Searchable class (cascades and orphans too); new
    rows are taken from the session in ``after_flush``.

    They only act inside a flush of a configured session (one that has a capture list).
    """
    global _mapper_events_installed
    if _mapper_events_installed:
        return

    def hook(op: Operation) -> Any:
        def on_write(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
            session = object_session(target)
            found = session.info.get(STATE_KEY) if session is not None else None
            if not isinstance(found, SessionSync) or found.capture is None:
                return
            if found.captured.get(id(target)) is op:  # before_flush took it already
                return
            if op is Operation.UPSERT and not _inserted_or_changed(session, target):
                return
            _capture(found, target, op)
        return on_write

    event.listen(Searchable, "after_update", hook(Operation.UPSERT), propagate=True)
    event.listen(Searchable, "after_delete", hook(Operation.DELETE), propagate=True)
    _mapper_events_installed = True


def _inserted_or_changed(session: Session | None, target: Any) -> bool:
    state = inspect(target)
    return state.key is None or session is None or _document_changed(session, target)


def _document_changed(session: Session, obj: Any) -> bool:
    """Whether a change of ``obj`` can change its document: any change, unless the
    model lists its ``__search_fields__``; then a change of one of those."""
    fields = registry.changed_fields(type(obj))
    if fields is None:
        return session.is_modified(obj)
    attrs = inspect(obj).attrs
    return any(attrs[name].history.has_changes() for name in fields)


# ------------------------------------------------------ related rows: fan-out in SQL

def _related_before_flush(session: Session, config: Config, state: SessionSync) -> None:
    """Rows of classes that documents read (``__search_fields__`` paths): a deleted one,
    and one whose link to its dependents is about to change, fan out now, while the
    database still links them; a new or changed one after the flush (see
    :func:`_fan_out`), when its links are written."""
    before: list[tuple[registry.Dependency, Any]] = []
    for obj in session.deleted:
        before.extend((dep, obj) for dep in registry.dependencies_on(type(obj)))
    for obj in session.dirty:
        deps = registry.dependencies_on(type(obj))
        if not deps:
            continue
        attrs = inspect(obj).attrs
        for dep in deps:
            moved = any(attrs[name].history.has_changes() for name in _link_keys(dep))
            if moved:  # its old dependents now, its new ones after the flush
                before.append((dep, obj))
            if moved or any(attrs[name].history.has_changes() for name in dep.reads):
                state.related.append((dep, obj))
    for obj in session.new:
        state.related.extend((dep, obj) for dep in registry.dependencies_on(type(obj)))
    if before:
        _record_fan_out(session, config, before)


def _link_keys(dep: registry.Dependency) -> list[str]:
    """Attributes of a related row that tie it to the previous hop (its foreign key
    when that hop is one-to-many): changing them moves it to other dependents."""
    last = dep.path[-1]
    if last.direction.name != "ONETOMANY":
        return []
    mapper = inspect(dep.related)
    return [mapper.get_property_by_column(c).key for c in last.remote_side]


def _fan_out(session: Session, config: Config, state: SessionSync) -> None:
    related, state.related = state.related, []
    _record_fan_out(session, config, related)


def _record_fan_out(session: Session, config: Config,
                    related: list[tuple[registry.Dependency, Any]]) -> None:
    by_dep: dict[registry.Dependency, list[Any]] = {}
    for dep, obj in related:
        key = inspect(obj).identity or [getattr(obj, k) for k in registry.pk_keys(dep.related)]
        if key is not None and None not in key:
            by_dep.setdefault(dep, []).append(key[0])
    for dep, ids in by_dep.items():
        _record_dependents(session, config, dep, ids)


def _record_dependents(session: Session, config: Config, dep: registry.Dependency,
                       related_ids: list[Any]) -> None:
    info = registry.info_for(dep.dependent)
    if info is None or not related_ids:
        return
    state = session_sync(session)
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    related_pk = next(iter(inspect(dep.related).primary_key))
    mode = resolve_mode(config.default_mode, session)
    state.pending.extend(outbox.record_dependents(
        conn, info.name, info.index, dep.dependent, dep.path, related_pk,
        list(dict.fromkeys(related_ids)), mode))
    state.engine = conn.engine


def _related_statement(state: ORMExecuteState, config: Config, mapper: Mapper[Any],
                       run: Callable[[], Any]) -> Any:
    """ORM bulk ``update()``/``delete()`` of rows that documents read: the rows it
    touches are found first; a delete fans out before it runs, an update after.
    ``run`` runs the statement (recording the rows' own events when their model is
    Searchable too)."""
    session = state.session
    conn = session.connection(bind_arguments={"mapper": mapper})
    stmt: Any = state.statement
    pk = next(iter(mapper.primary_key))
    params = state.parameters
    if isinstance(params, list):
        ids = [key[0] for key in _keys_from_params(mapper, params) or []]
    else:
        query = select(pk)
        if stmt.whereclause is not None:
            query = query.where(stmt.whereclause)
        ids = list(conn.execute(query).scalars())
    deps = registry.dependencies_on(mapper.class_)
    if state.is_delete:
        for dep in deps:
            _record_dependents(session, config, dep, ids)
        return run()
    result = run()
    for dep in deps:
        _record_dependents(session, config, dep, ids)
    return result


# ---------------------------------------------- ORM insert() (bulk, upserts, from_select)

def _orm_insert(state: ORMExecuteState, config: Config, info: registry.ModelInfo,
                mapper: Mapper[Any]) -> Any:
    """ORM-enabled ``insert()``: one row, many (``session.execute(insert(M), rows)``),
    ``ON CONFLICT DO UPDATE/NOTHING`` and ``from_select``. The keys of the rows written
    come back through RETURNING (a conflict that did nothing returns none); without
    RETURNING, from the parameters."""
    session = state.session
    conn = session.connection(bind_arguments={"mapper": mapper})
    stmt: Any = state.statement
    pk_cols = list(mapper.primary_key)
    if not getattr(stmt, "_returning", ()) and conn.dialect.insert_returning:
        result = state.invoke_statement(statement=stmt.returning(*pk_cols))
        keys = [list(row) for row in result.all()]
        result = _rows_result(result, keys)
    else:
        result = state.invoke_statement()
        keys = _keys_from_params(mapper, state.parameters) or []
    _record_keys(session, config, conn, info, keys, Operation.UPSERT)
    return result


def _rows_result(result: Any, rows: list[list[Any]]) -> Any:
    """Hand the caller a result like the one it would have had: the rows RETURNING
    brought are read already; its count stays."""
    frozen = result.freeze()
    out = frozen()
    out.rowcount = len(rows)
    return out


def _keys_from_params(mapper: Mapper[Any], params: Any) -> list[list[Any]] | None:
    """Primary keys given in a statement's parameters (by attribute or column key, or
    as the ``<table>_<column>`` bind names bulk updates use); None when any is missing."""
    rows = params if isinstance(params, list | tuple) else [params] if params else []
    names = [(c.key, f"{c.table.name}_{c.key}") for c in mapper.primary_key]
    attrs = registry.pk_keys(mapper.class_)
    keys = []
    for row in rows:
        key = []
        for attr, (column, bind) in zip(attrs, names, strict=True):
            for name in (attr, column, bind):
                if name in row:
                    key.append(row[name])
                    break
            else:
                return None
        keys.append(key)
    return keys or None


def _record_keys(session: Session, config: Config, conn: Connection,
                 info: registry.ModelInfo, keys: list[list[Any]], op: Operation) -> None:
    """Record one event per written row, by primary key, in the data's transaction
    (custom document ids are read from the rows; for a delete, before it runs)."""
    events: dict[tuple[str, str], NewEvent] = {}
    default_ids = registry.uses_default_ids(info.cls)
    rows = ({} if default_ids or not keys else documents.rows_by_key(
        session, info, keys, load_options=False))
    for key in keys:
        safe = documents.json_safe_key(key)
        if default_ids:
            document_id = documents.pk_document_id(safe)
        else:
            obj = rows.get(tuple(safe))
            if obj is None:
                continue  # gone: its document id cannot be known (reconcile finds it)
            document_id = str(obj.search_document_id())
        events[(info.index, document_id)] = NewEvent(info.name, info.index, document_id,
                                                     safe, op)
    if events:
        _remember(session, config, conn, list(events.values()), info.mapper)


# ------------------------------------------------ the legacy bulk_* Session methods

_DML = (Insert, Update, Delete)
_bulk_capture_installed = False


def install_bulk_capture() -> None:
    """``bulk_insert_mappings``, ``bulk_update_mappings`` and ``bulk_save_objects`` run
    no flush and no ``do_orm_execute``: they all go through one Session method, which
    is wrapped (once) to record their rows' events when the session is configured.
    (Listening to every Core statement instead cost a sixth more per commit.)"""
    global _bulk_capture_installed
    original = getattr(Session, "_bulk_save_mappings", None)
    if _bulk_capture_installed or original is None:
        if original is None:
            log.warning("scrypath_sa: this SQLAlchemy has no Session._bulk_save_mappings: "
                        "bulk_*_mappings and bulk_save_objects are not recorded")
        return

    signature = pyinspect.signature(original)

    def _bulk_save_mappings(self: Session, *args: Any, **kwargs: Any) -> None:
        # Positional in SQLAlchemy 2.0, keyword-only in 2.1: bound by name.
        call = signature.bind(self, *args, **kwargs)
        given = call.arguments
        mapper = inspect(given["mapper"])
        info = registry.info_for(mapper.class_)
        config = None
        if info is not None:
            conn = self.connection(bind_arguments={"mapper": mapper})  # begins: after_begin
            config = session_sync(self).config
        if info is None or config is None or not config.enabled:
            original(*call.args, **call.kwargs)
            return
        state = session_sync(self)
        mappings = given["mappings"] = list(given["mappings"])
        if info.by_trigger:
            # Bulk INSERTs without return_defaults go as executemany, keys given or not.
            rows = [len(mappings), 0, 0] if given["isupdate"] else [0, len(mappings), 0]
            _choose_capture(self, config, state, {mapper.class_: rows})
            if mapper.class_ in state.to_trigger:  # the trigger records the rows
                original(*call.args, **call.kwargs)
                state.triggered += len(mappings)
                return
        isupdate, isstates = given["isupdate"], given["isstates"]
        # Inserted rows' keys come back into the mappings (or states) this way.
        given["return_defaults"] = given["return_defaults"] or not isupdate
        original(*call.args, **call.kwargs)
        keys = []
        for m in mappings:
            if isstates:
                keys.append([getattr(m.obj(), k) for k in registry.pk_keys(mapper.class_)])
            else:
                keys.append([m.get(k) for k in registry.pk_keys(mapper.class_)])
        known = [k for k in keys if None not in k]
        if len(known) < len(keys):
            log.warning("scrypath_sa: %d rows inserted into %s came back without their "
                        "keys, so they were not recorded: call scrypath_sa.mark_changed() "
                        "or reconcile", len(keys) - len(known), info.index)
        _record_keys(self, config, conn, info, known, Operation.UPSERT)

    Session._bulk_save_mappings = _bulk_save_mappings  # type: ignore[method-assign]
    _bulk_capture_installed = True


def mark_changed(session: Session, model: type, keys: Iterable[Any]) -> None:
    """Record that the rows of ``model`` with these primary keys changed, in
    ``session``'s transaction (a write the library cannot see: raw SQL, a stored
    procedure). A key is a value, or a tuple for a composite key."""
    info = registry.info_for(model)
    if info is None:
        raise ConfigurationError(f"{model.__name__} is not a Searchable model")
    config = session_sync(session).config
    if config is not None and not config.enabled:
        return
    if config is None:
        raise NotConfiguredError(
            "this session's target is not configured, or it has not begun a transaction "
            "yet: call scrypath_sa.configure() on it, and mark changes inside a transaction")
    conn = session.connection(bind_arguments={"mapper": info.mapper})
    rows = [list(k) if isinstance(k, tuple | list) else [k] for k in keys]
    _record_keys(session, config, conn, info, rows, Operation.UPSERT)


# ------------------------------------------------------------- bulk update() / delete()

def _bulk_statement(state: ORMExecuteState, config: Config, info: registry.ModelInfo,
                    mapper: Mapper[Any]) -> Any:
    session = state.session
    conn = session.connection(bind_arguments={"mapper": mapper})
    op = Operation.DELETE if state.is_delete else Operation.UPSERT
    pk_cols = list(mapper.primary_key)
    stmt: Any = state.statement
    params = state.parameters
    if isinstance(params, list):  # bulk UPDATE by primary key: ids are in the parameters
        keys = [[p[k] for k in registry.pk_keys(mapper.class_)] for p in params]
        result = state.invoke_statement()
    elif _can_return(conn, state) and not getattr(stmt, "_returning", ()):
        result = state.invoke_statement(
            statement=stmt.returning(*pk_cols),
            execution_options={"synchronize_session": _sync_option(state)},
        )
        keys = [list(row) for row in result.all()]
        # The caller asked for a plain UPDATE/DELETE: give back the count it would have had.
        result.rowcount = len(keys)  # type: ignore[attr-defined]
    else:
        where = stmt.whereclause
        query = select(*pk_cols)
        if where is not None:
            query = query.where(where)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        keys = [list(row) for row in conn.execute(query)]
        result = state.invoke_statement()
    _record_keys(session, config, conn, info, keys, op)
    return result


def _can_return(conn: Connection, state: ORMExecuteState) -> bool:
    dialect = conn.dialect
    return bool(dialect.delete_returning if state.is_delete else dialect.update_returning)


def _sync_option(state: ORMExecuteState) -> Any:
    return state.execution_options.get("synchronize_session", "auto")
