"""Session event wiring: capture changed rows, record them in the outbox, dispatch after commit.

Per-transaction state lives in ``Session.info``:

* ``before_flush`` opens a capture list; mapper events (update/delete, which see
  cascades and orphans) and the session's modified objects fill it;
* ``after_flush`` adds the session's new objects (their keys are assigned by then) and
  writes one ``sync_events`` row per (index, document id) in one INSERT per model on the
  flush's connection, so a rollback removes both data and events;
* ORM-enabled bulk ``update()``/``delete()`` are captured in ``do_orm_execute`` (with
  RETURNING where the database has it);
* the root ``after_commit`` marks the ids as committed; once the transaction is fully
  closed (``after_transaction_end``) they go to the mode, outside the caller's
  transaction. A root rollback forgets them. Ids from a rolled-back savepoint are
  harmless: the processor skips ids it cannot find.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, object_session

from scrypath_sa import outbox, registry
from scrypath_sa.backends.base import Backend
from scrypath_sa.config import Config, build_modes, check_mode_name, resolve_mode
from scrypath_sa.errors import ConfigurationError, SyncIncompleteError
from scrypath_sa.mixin import Searchable
from scrypath_sa.modes.base import Mode
from scrypath_sa.outbox import NewEvent, Operation
from scrypath_sa.outcome import Outcome
from scrypath_sa.redaction import redact

log = logging.getLogger("scrypath_sa")

CONFIG = "scrypath_sa.config"
CAPTURE = "scrypath_sa.capture"
PENDING = "scrypath_sa.pending"
COMMITTED = "scrypath_sa.committed"
ENGINE = "scrypath_sa.engine"
OUTCOME = "scrypath_sa.outcome"
INTERNAL = "scrypath_sa_internal"

_installed: dict[int, tuple[Any, Config, list[tuple[str, Any]]]] = {}
_current: Config | None = None
_lock = threading.Lock()
_mapper_events_installed = False


# ------------------------------------------------------------------------- public entry

def configure(target: Any, *, backend: Backend, mode: str = "inline", bind: Engine | None = None,
              modes: Mapping[str, Mode] | None = None, batch_size: int = 500,
              max_attempts: int = 8, backoff_base: float = 1.0, backoff_max: float = 600.0,
              strict: bool = False) -> Config:
    """Install sync on ``target`` and return the configuration.

    ``target`` is a ``sessionmaker``, a ``Session`` subclass, a ``scoped_session`` (e.g.
    Flask-SQLAlchemy's ``db.session``) or one ``Session``. ``mode`` is the default mode;
    ``modes`` adds modes such as ``{"dramatiq": DramatiqMode(...)}``. ``bind`` is the
    engine used to process events outside a session (learned from the first flush when
    omitted). With ``strict=True`` a commit whose sync did not complete raises
    :class:`~scrypath_sa.errors.SyncIncompleteError` after the data committed.
    Configuring the same target again replaces the previous installation.
    """
    global _current
    if not isinstance(backend, Backend):
        raise ConfigurationError(f"backend must be a scrypath_sa Backend, got {backend!r}")
    if batch_size < 1 or max_attempts < 1:
        raise ConfigurationError("batch_size and max_attempts must be at least 1")
    all_modes = build_modes(modes)
    config = Config(target=target, backend=backend, default_mode=check_mode_name(mode),
                    bind=bind or _bind_of(target), modes=all_modes,
                    batch_size=batch_size, max_attempts=max_attempts,
                    backoff_base=backoff_base, backoff_max=backoff_max, strict=strict)
    config.mode(config.default_mode)  # fail now if the default mode is not available
    for mode_object in all_modes.values():
        mode_object.attach(config)
    with _lock:
        _install_mapper_events()
        unconfigure(target)
        handlers = _handlers(config)
        for name, fn in handlers:
            event.listen(target, name, fn)
        _installed[id(target)] = (target, config, handlers)
        _current = config
    return config


def unconfigure(target: Any) -> bool:
    """Remove what :func:`configure` installed on ``target``; True if anything was."""
    global _current
    entry = _installed.pop(id(target), None)
    if entry is None:
        return False
    _, config, handlers = entry
    for name, fn in handlers:
        event.remove(target, name, fn)
    if _current is config:
        _current = next((c for _, c, _ in reversed(_installed.values())), None)
    return True


def current_config() -> Config | None:
    return _current


def last_outcome(session: Session) -> Outcome | None:
    """The outcome of ``session``'s last commit with sync work (None if it had none)."""
    value = session.info.get(OUTCOME)
    return value if isinstance(value, Outcome) else None


def _bind_of(target: Any) -> Engine | None:
    factory = getattr(target, "session_factory", target)  # scoped_session -> sessionmaker
    bind = getattr(factory, "kw", {}).get("bind") if hasattr(factory, "kw") else None
    if bind is None and isinstance(target, Session):
        bind = target.bind
    if isinstance(bind, Connection):
        return bind.engine
    return bind if isinstance(bind, Engine) else None


# ------------------------------------------------------------------------ the handlers

def _handlers(config: Config) -> list[tuple[str, Any]]:
    def before_flush(session: Session, flush_context: Any, instances: Any) -> None:
        session.info[CONFIG] = config
        capture: dict[tuple[str, str], NewEvent] = {}
        session.info[CAPTURE] = capture
        for obj in session.dirty:
            if isinstance(obj, Searchable) and session.is_modified(obj):
                _capture(capture, obj, Operation.UPSERT)
        for obj in session.deleted:
            if isinstance(obj, Searchable):
                _capture(capture, obj, Operation.DELETE)

    def after_flush(session: Session, flush_context: Any) -> None:
        capture: dict[tuple[str, str], NewEvent] | None = session.info.pop(CAPTURE, None)
        if capture is None:
            return
        _capture_new(capture, session.new)
        if not capture:
            return
        first = next(iter(capture.values()))
        info = registry.info_for_index(first.index_name)
        conn = session.connection(bind_arguments={"mapper": info.mapper} if info else None)
        _remember(session, config, conn, list(capture.values()))

    def do_orm_execute(state: ORMExecuteState) -> Any:
        if not (state.is_update or state.is_delete) or state.execution_options.get(INTERNAL):
            return None
        mapper = state.bind_mapper
        info = registry.info_for(mapper.class_) if mapper is not None else None
        if info is None or mapper is None:
            return None
        return _bulk_statement(state, config, info, mapper)

    def after_commit(session: Session) -> None:
        if session.get_nested_transaction() is None:  # the root transaction committed
            session.info[COMMITTED] = session.info.pop(PENDING, [])

    def after_rollback(session: Session) -> None:
        if session.get_nested_transaction() is None:
            session.info.pop(PENDING, None)
            session.info.pop(CAPTURE, None)

    def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is not None:
            return
        ids: list[int] | None = session.info.pop(COMMITTED, None)
        if not ids:
            return
        engine = session.info.get(ENGINE) or config.bind
        outcome = dispatch(config, resolve_mode(config, session), ids, engine)
        session.info[OUTCOME] = outcome
        if config.strict and not _finished(outcome):
            raise SyncIncompleteError(outcome)

    return [
        ("before_flush", before_flush),
        ("after_flush", after_flush),
        ("do_orm_execute", do_orm_execute),
        ("after_commit", after_commit),
        ("after_rollback", after_rollback),
        ("after_transaction_end", after_transaction_end),
    ]


def dispatch(config: Config, mode_name: str, ids: list[int], engine: Engine | None) -> Outcome:
    """Hand committed ids to a mode. Never raises: a failure is logged and reported."""
    try:
        return config.mode(mode_name).dispatch(config, ids, engine=engine)
    except Exception as exc:  # noqa: BLE001 - the commit already happened: report, never raise
        message = redact(f"{type(exc).__name__}: {exc}")
        log.error("scrypath_sa: dispatch of %d committed events in mode %s failed; they stay "
                  "in sync_events for sweep(): %s", len(ids), mode_name, message)
        return Outcome(mode=mode_name, event_ids=list(ids), error=message)


def _finished(outcome: Outcome) -> bool:
    if outcome.error or outcome.failures:
        return False
    wanted = {"inline": {"completed"}, "manual": {"backend_accepted"},
              "dramatiq": {"enqueued"}}.get(outcome.mode, {"completed"})
    return set(outcome.states) <= wanted


def _remember(session: Session, config: Config, conn: Connection,
              events: list[NewEvent]) -> None:
    ids = outbox.record(conn, events, resolve_mode(config, session))
    session.info.setdefault(PENDING, []).extend(ids)
    session.info[ENGINE] = conn.engine
    if config.bind is None:
        config.bind = conn.engine


def _capture(capture: dict[tuple[str, str], NewEvent], obj: Any, op: Operation) -> None:
    info = registry.info_for(type(obj))
    if info is None:
        return
    pk = registry.primary_key(obj)
    document_id = registry.document_id(obj, pk)
    capture[(info.index, document_id)] = NewEvent(info.name, info.index, document_id, pk, op)


def _capture_new(capture: dict[tuple[str, str], NewEvent], objects: Iterable[Any]) -> None:
    """The session's new objects, in ``after_flush`` (their keys are assigned by then).
    One pass here, with the per-class work done once, costs far less than a mapper
    event per inserted row."""
    plans: dict[type, tuple[str, str, tuple[str, ...]] | None] = {}
    for obj in objects:
        cls = type(obj)
        if cls in plans:
            plan = plans[cls]
        else:
            info = registry.info_for(cls) if isinstance(obj, Searchable) else None
            plan = plans[cls] = None if info is None else (
                info.name, info.index, registry.pk_keys(cls))
        if plan is None:
            continue
        name, index, keys = plan
        pk = registry.json_safe_key([getattr(obj, k) for k in keys])
        if None in pk:  # no key yet: added during this flush; the next one writes it
            continue
        document_id = registry.document_id(obj, pk)
        capture[(index, document_id)] = NewEvent(name, index, document_id, pk,
                                                 Operation.UPSERT)


# ------------------------------------------------------------------------ mapper events

def _install_mapper_events() -> None:
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
            capture = session.info.get(CAPTURE) if session is not None else None
            if capture is None:
                return
            if op is Operation.UPSERT and not _inserted_or_changed(session, target):
                return
            _capture(capture, target, op)
        return on_write

    event.listen(Searchable, "after_update", hook(Operation.UPSERT), propagate=True)
    event.listen(Searchable, "after_delete", hook(Operation.DELETE), propagate=True)
    _mapper_events_installed = True


def _inserted_or_changed(session: Session | None, target: Any) -> bool:
    from sqlalchemy import inspect

    state = inspect(target)
    return state.key is None or session is None or session.is_modified(target)


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
    events: dict[tuple[str, str], NewEvent] = {}
    for key in keys:
        safe = [registry.json_safe(v) for v in key]
        document_id = registry.pk_document_id(safe)
        events[(info.index, document_id)] = NewEvent(info.name, info.index, document_id, safe, op)
    if events:
        _remember(session, config, conn, list(events.values()))
    return result


def _can_return(conn: Connection, state: ORMExecuteState) -> bool:
    dialect = conn.dialect
    return bool(dialect.delete_returning if state.is_delete else dialect.update_returning)


def _sync_option(state: ORMExecuteState) -> Any:
    return state.execution_options.get("synchronize_session", "auto")
