"""``AsyncSession`` support. An ``AsyncSession`` runs a plain ``Session`` in a greenlet
on the event loop's thread: the library's session handlers run there too, so events are
recorded with the data by the async driver, as for a sync session. What must not run on
the loop is the work after commit (a backend request, a broker send): it runs in a
thread, on a sync engine on the same database, while the commit awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from scrypath_sa.errors import ConfigurationError

T = TypeVar("T")

# The sync driver for each async one, for the engine that work after commit runs on.
SYNC_DRIVERS = {
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
}


_ext: Any = False  # not looked up yet


def _asyncio_ext() -> Any:
    """SQLAlchemy's asyncio extension, or None without greenlet (then no AsyncSession
    exists in this process). Looked up once: every commit asks."""
    global _ext
    if _ext is False:
        try:
            from sqlalchemy.ext import asyncio as sa_asyncio
        except ImportError:
            _ext = None
        else:
            _ext = sa_asyncio
    return _ext


def is_async(target: Any) -> bool:
    """An ``async_sessionmaker``, an ``AsyncSession`` subclass or one ``AsyncSession``."""
    ext = _asyncio_ext()
    if ext is None:
        return False
    return isinstance(target, ext.async_sessionmaker | ext.AsyncSession) or (
        isinstance(target, type) and issubclass(target, ext.AsyncSession))


def sync_target(target: Any) -> Any:
    """Where the session handlers of an async ``target`` are listened on: its sessions'
    sync ``Session`` class, made its own subclass (so that no other factory's sessions
    are touched), or one ``AsyncSession``'s sync session."""
    ext = _asyncio_ext()
    if isinstance(target, ext.AsyncSession):
        return target.sync_session
    factory = isinstance(target, ext.async_sessionmaker)
    base = target.kw.get("sync_session_class", Session) if factory else (
        target.sync_session_class)
    own = type(f"{base.__name__}ForScrypath", (base,), {})
    if factory:
        target.configure(sync_session_class=own)
    else:
        target.sync_session_class = own
    return own


def sync_engine_for(target: Any) -> Engine | None:
    """A sync engine on the database an async ``target`` is bound to (asyncpg ->
    psycopg, aiosqlite -> pysqlite); None when the target has no bind."""
    ext = _asyncio_ext()
    bind = (target.kw.get("bind") if isinstance(target, ext.async_sessionmaker)
            else getattr(target, "bind", None))
    if bind is None:
        return None
    url = bind.url
    driver = SYNC_DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigurationError(
            f"no sync driver is known for {url.drivername}: pass bind= a sync engine on the "
            "same database to scrypath_sa.configure()")
    return create_engine(url.set(drivername=driver))


def in_async_commit() -> bool:
    """True inside an ``AsyncSession``'s greenlet (the event loop's thread)."""
    if _asyncio_ext() is None:
        return False
    from sqlalchemy.util.concurrency import in_greenlet

    return bool(in_greenlet())


def off_the_loop(start: Callable[[Callable[[T | None, BaseException | None], None]], None],
                 ) -> T:
    """Wait, without blocking the event loop (from inside an ``AsyncSession``'s
    greenlet), for the result that ``start`` has another thread hand to the callback it
    is given (or the error it hands instead)."""
    from sqlalchemy.util.concurrency import await_only

    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def settled(result: T | None, exc: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    start(settled)
    result: T = await_only(future)
    return result
