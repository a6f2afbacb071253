"""Installing sync on a session target, and finding what was installed.

:func:`configure` builds a :class:`~scrypath_sa.config.Config` and listens to the
target's session events; :func:`resolve_config` is how every operator call finds its
configuration: the one passed, else the only one installed. With several installed, a
call must say which (nothing picks one silently).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from scrypath_sa import aio, listeners, with_commit
from scrypath_sa.backends.base import Backend
from scrypath_sa.config import Config, SyncMode
from scrypath_sa.errors import ConfigurationError, NotConfiguredError
from scrypath_sa.modes import BUILTIN, Mode, selection
from scrypath_sa.outcome import Outcome

_installed: dict[Hashable, tuple[Any, Config | None, list[tuple[str, Any]]]] = {}
_scoped: dict[int, Scoped] = {}  # target id -> its per-scope configurations
_lock = threading.Lock()


def configure(target: Any, *, backend: Backend, mode: str = "inline", bind: Engine | None = None,
              modes: Mapping[str, Mode] | None = None, batch_size: int = 500,
              max_attempts: int = 8, backoff_base: float = 1.0, backoff_max: float = 600.0,
              strict: bool = False, inline_timeout: float | None = 30.0,
              enabled: bool = True) -> Config:
    """Install sync on ``target`` and return the configuration.

    ``target`` is a ``sessionmaker``, a ``Session`` subclass, a ``scoped_session`` (e.g.
    Flask-SQLAlchemy's ``db.session``; with several Flask apps, use
    :class:`scrypath_sa.flask.FlaskSearch`) or one ``Session``. ``mode`` is the default
    mode; ``modes`` adds modes such as ``{"dramatiq": DramatiqMode(...)}``. ``bind`` is
    the engine that work outside a session runs on (workers, the operator API); it may be
    left out when ``target`` is bound to one engine. With ``strict=True`` a commit whose
    outcome is not what its mode promises raises
    :class:`~scrypath_sa.errors.SyncIncompleteError` after the data committed.
    Configuring the same target again replaces the previous installation.
    ``inline_timeout`` bounds how long an inline commit sends writes (seconds; None:
    no bound); a run also stops sending after a request that got no answer, so a
    stalled cluster holds a commit for about one request timeout (two for a commit
    that arrived while other commits' runs were in flight: it waits for one of them
    first). What is not sent is ``retrying``. ``enabled=False`` installs it turned off
    (see :func:`disabled`).
    """
    config = build_config(
        target, backend=backend, mode=mode, bind=bind, modes=modes, batch_size=batch_size,
        max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max,
        strict=strict, inline_timeout=inline_timeout, enabled=enabled)
    with _lock:
        if id(target) in _scoped:
            raise ConfigurationError(
                "this session target has per-app configurations (FlaskSearch.init_app): "
                "configure each app there, not with scrypath_sa.configure()")
        unconfigure(target)
        _listen(id(target), target, config, lambda session: config)
    return config


def build_config(target: Any, *, backend: Backend, mode: str = "inline",
                 bind: Engine | None = None, modes: Mapping[str, Mode] | None = None,
                 **settings: Any) -> Config:
    """The checked :class:`Config` of :func:`configure`, not installed yet."""
    _check_target(target)
    if not isinstance(backend, Backend):
        raise ConfigurationError(
            f"backend must be a scrypath_sa Backend (e.g. OpenSearchBackend(url)), got a "
            f"{type(backend).__name__}")
    if settings.get("batch_size", 1) < 1 or settings.get("max_attempts", 1) < 1:
        raise ConfigurationError("batch_size and max_attempts must be at least 1")
    asynchronous = aio.is_async(target)
    engine = bind or (aio.sync_engine_for(target) if asynchronous else _bind_of(target))
    if engine is None:
        raise ConfigurationError(
            f"cannot tell which database this {type(target).__name__} uses: pass bind=engine to "
            "scrypath_sa.configure() (with Flask-SQLAlchemy, use scrypath_sa.flask.FlaskSearch, "
            "which takes the app's engine)")
    all_modes = build_modes(modes)
    config = Config(target=target, backend=backend, bind=engine, modes=all_modes,
                    default_mode=mode, **settings)
    config.mode(mode)  # fail now if the default mode is not available
    with_commit.listen(engine)  # now, before its sessions commit (holds add others)
    for mode_object in all_modes.values():
        mode_object.attach(config)
    return config


def _listen(key: Hashable, target: Any, config: Config | None, pick: listeners.Pick) -> None:
    """Listen to ``target``'s session events with ``pick`` (under ``_lock``)."""
    listeners.install_mapper_events()
    listeners.install_bulk_capture()
    handlers = listeners.handlers(pick)
    listened = aio.sync_target(target) if aio.is_async(target) else target
    for name, fn in handlers:
        event.listen(listened, name, fn)
    _installed[key] = (listened, config, handlers)
    if config is not None:
        selection.offer(config.modes)


class Scoped:
    """Configurations that share one session target, one per scope: several Flask apps
    in one process all use ``db.session``. ``current()`` names the scope a session's
    events happen in (the current app); scopes are held weakly."""

    def __init__(self, target: Any, current: Callable[[], Any]) -> None:
        self.target, self.current = target, current
        self.configs: weakref.WeakKeyDictionary[Any, Config] = weakref.WeakKeyDictionary()

    def pick(self, session: Any = None) -> Config | None:
        scope = self.current()
        return None if scope is None else self.configs.get(scope)


def configure_scoped(scope: Any, target: Any, current: Callable[[], Any],
                     config: Config) -> None:
    """Install ``config`` (from :func:`build_config`) for ``scope`` on ``target``: its
    sessions' events go to it while ``current()`` returns ``scope``. Other scopes'
    configurations on the same target stay."""
    with _lock:
        if id(target) in _installed:
            raise ConfigurationError(
                "this session target is already configured with scrypath_sa.configure() "
                "for every app: call scrypath_sa.unconfigure() on it first, or use one way")
        scoped = _scoped.get(id(target))
        if scoped is None:
            scoped = _scoped[id(target)] = Scoped(target, current)
            _listen(("scoped", id(target)), target, None, scoped.pick)
        scoped.configs[scope] = config
        selection.offer(config.modes)


def unconfigure(target: Any) -> bool:
    """Remove what :func:`configure` (or :class:`~scrypath_sa.flask.FlaskSearch`, for
    every app) installed on ``target``; True if anything was."""
    scoped = _scoped.pop(id(target), None)
    entry = _installed.pop(("scoped", id(target)) if scoped else id(target), None)
    if scoped is not None:
        for app_config in scoped.configs.values():
            selection.withdraw(app_config.modes)
    if entry is None:
        return False
    listened, config, handlers = entry
    for name, fn in handlers:
        event.remove(listened, name, fn)
    if config is not None:
        selection.withdraw(config.modes)
    return True


def installed() -> list[Config]:
    """Every configuration installed now, oldest first."""
    found = [config for _, config, _ in _installed.values() if config is not None]
    for scoped in _scoped.values():
        found.extend(scoped.configs.values())
    return found


def resolve_config(config: Config | None = None) -> Config:
    """``config`` when given, else the current scope's (the current Flask app's), else
    the only installed configuration."""
    if config is not None:
        return config
    for scoped in _scoped.values():
        current = scoped.pick()
        if current is not None:
            return current
    found = installed()
    if not found:
        raise NotConfiguredError("call scrypath_sa.configure(...) first, or pass config=")
    if len(found) > 1:
        targets = ", ".join(type(c.target).__name__ for c in found)
        raise ConfigurationError(
            f"{len(found)} configurations are installed (on a {targets}): pass config= "
            "(the Config that configure() returned) to say which one to use")
    return found[0]


def current_config() -> Config | None:
    """The only installed configuration; None when there is none. With several
    installed, raises :class:`~scrypath_sa.errors.ConfigurationError`."""
    return resolve_config() if installed() else None


@contextlib.contextmanager
def disabled(config: Config | None = None) -> Iterator[Config]:
    """Turn sync off for ``config`` (default: the only installed one) inside the block:
    commits record no events and write nothing, in every thread. For a test that does
    not look at search, or an app that must not sync for a while; what changes
    meanwhile is drift that ``reconcile`` finds. ``configure(..., enabled=False)``
    installs a configuration turned off."""
    config = resolve_config(config)
    was, config.enabled = config.enabled, False
    try:
        yield config
    finally:
        config.enabled = was


class _HasInfo(Protocol):
    @property
    def info(self) -> dict[Any, Any]: ...


def last_outcome(session: _HasInfo) -> Outcome | None:
    """The outcome of ``session``'s last commit with sync work (None if it had none); a
    ``Session`` or an ``AsyncSession``."""
    found = session.info.get(listeners.STATE_KEY)
    return found.outcome if isinstance(found, listeners.SessionSync) else None


def build_modes(extra: Mapping[str, Mode] | None) -> dict[str, SyncMode]:
    modes: dict[str, SyncMode] = {name: cls() for name, cls in BUILTIN.items()}
    for name, mode in (extra or {}).items():
        if not isinstance(mode, Mode):
            raise ConfigurationError(
                f"modes[{name!r}] must be a scrypath_sa Mode, got a {type(mode).__name__}")
        modes[name] = mode
    return modes


def _check_target(target: Any) -> None:
    """``target`` must be something sessions come from (the events are listened on it)."""
    if isinstance(target, (sessionmaker, scoped_session, Session)) or (
            isinstance(target, type) and issubclass(target, Session)) or aio.is_async(target):
        return
    hint = (": pass the engine as bind=, and sessionmaker(engine) (or your Session class) "
            "as the target" if isinstance(target, (Engine, Connection)) else "")
    raise ConfigurationError(
        "configure() installs sync on where your sessions come from: a sessionmaker, a "
        "Session subclass, a scoped_session (Flask-SQLAlchemy's db.session), one Session, "
        f"or their async forms; got a {type(target).__name__}{hint}")


def _bind_of(target: Any) -> Engine | None:
    factory = getattr(target, "session_factory", target)  # scoped_session -> sessionmaker
    bind = getattr(factory, "kw", {}).get("bind") if hasattr(factory, "kw") else None
    if bind is None and isinstance(target, Session):
        bind = target.bind
    if isinstance(bind, Connection):
        return bind.engine
    return bind if isinstance(bind, Engine) else None
