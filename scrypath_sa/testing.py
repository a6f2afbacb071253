"""Helpers for testing *your* app: no search server needed, and sync you can see.

* :class:`InMemoryBackend`: the embedded backend in memory (same contract as OpenSearch:
  aliases, external versions, text search).
* :class:`RecordingBackend`: wraps any backend and records every write sent through it;
  :func:`capture` puts one around the configured backend for a block.
* :func:`process_pending`: process recorded events now, in this thread; it works inside
  a test wrapped in a transaction (where ``after_commit`` never reaches a real commit,
  so nothing is dispatched), because it runs on that test's own connection.
* :func:`drain`: run ``dramatiq``-mode work to completion inside the test, on Dramatiq's
  ``StubBroker`` with an in-process worker.

A pytest plugin ships too (``scrypath_sa.pytest_plugin``): fixtures
``scrypath_backend`` and ``scrypath_capture``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from scrypath_sa import outbox, processor, with_commit
from scrypath_sa.backends.base import (
    AdminBackend,
    Backend,
    BulkOp,
    IndexPosture,
    ItemResult,
    PhysicalIndex,
    SearchHits,
    admin_of,
)
from scrypath_sa.backends.embedded import EmbeddedBackend
from scrypath_sa.config import Config
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.install import resolve_config
from scrypath_sa.outcome import Outcome
from scrypath_sa.registry import Contract
from scrypath_sa.sql import Bind, connect
from scrypath_sa.visibility import Visibility, flush_confirmations


class InMemoryBackend(EmbeddedBackend):
    """A private, in-process index with the real backend contract."""

    def __init__(self) -> None:
        super().__init__(":memory:")


@dataclass(frozen=True)
class CapturedOp:
    action: str  # "index" or "delete"
    index: str
    id: str
    document: dict[str, Any] | None


class RecordingBackend(AdminBackend):
    """Every call goes to ``inner``; every write sent through ``bulk`` is also appended
    to :attr:`ops` (thread-safe, in the order sent)::

        backend = RecordingBackend(InMemoryBackend())
        scrypath_sa.configure(Session, backend=backend)
        ...
        assert [op.id for op in backend.ops] == ["1"]
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.ops: list[CapturedOp] = []
        self._lock = threading.Lock()

    def bulk(self, ops: Sequence[BulkOp], *, wait_for_visibility: bool) -> list[ItemResult]:
        with self._lock:
            self.ops.extend(CapturedOp("delete" if op.is_delete else "index", op.index, op.id,
                                       dict(op.document) if op.document is not None else None)
                            for op in ops)
        return self.inner.bulk(ops, wait_for_visibility=wait_for_visibility)

    def ensure_index(self, alias: str, contract: Contract, model: str,
                     fresh: bool = False) -> None:
        self.inner.ensure_index(alias, contract, model, fresh)

    def refresh(self, alias: str) -> None:
        self.inner.refresh(alias)

    def versions(self, alias: str, ids: Sequence[str]) -> dict[str, int | None]:
        return self.inner.versions(alias, ids)

    def search(self, index: str, query: str | dict[str, Any], *, offset: int = 0,
               limit: int = 20, fields: Sequence[str] | None = None) -> SearchHits:
        return self.inner.search(index, query, offset=offset, limit=limit, fields=fields)

    def close(self) -> None:
        self.inner.close()

    # The operator part, when ``inner`` has one.
    def posture(self, alias: str) -> IndexPosture | None:
        return admin_of(self.inner).posture(alias)

    def documents(self, alias: str, ids: Sequence[str]) -> dict[str, tuple[int, Any] | None]:
        return admin_of(self.inner).documents(alias, ids)

    def count(self, index: str) -> int:
        return admin_of(self.inner).count(index)

    def scan_ids(self, index: str, page_size: int = 1000) -> Iterator[list[tuple[str, int]]]:
        return admin_of(self.inner).scan_ids(index, page_size)

    def physical_indices(self, alias: str) -> list[PhysicalIndex]:
        return admin_of(self.inner).physical_indices(alias)

    def create_index(self, name: str, contract: Contract, model: str,
                     alias: str | None = None, alias_for: str | None = None) -> None:
        admin_of(self.inner).create_index(name, contract, model, alias, alias_for)

    def swap_alias(self, alias: str, new_index: str) -> list[str]:
        return admin_of(self.inner).swap_alias(alias, new_index)

    def delete_index(self, name: str) -> None:
        admin_of(self.inner).delete_index(name)

    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        admin_of(self.inner).set_refresh_interval(index, interval)


@contextlib.contextmanager
def capture(config: Config | None = None) -> Iterator[list[CapturedOp]]:
    """Collect the writes sent to the configured backend inside the block (they still
    happen): the configuration's backend is wrapped in a :class:`RecordingBackend` for
    the block and restored after it."""
    config = resolve_config(config)
    original = config.backend
    recording = RecordingBackend(original)
    config.backend = recording
    try:
        yield recording.ops
    finally:
        config.backend = original


def process_pending(session: Session | None = None, *, config: Config | None = None,
                    wait_for_visibility: bool = True) -> Outcome:
    """Process every event still waiting (requested, enqueued, retrying) right now.

    With ``session`` it runs on that session's connection, so it sees events of a
    transaction that will never commit (a test wrapped in one); without, on the
    configured engine.
    """
    config = resolve_config(config)
    bind: Bind = config.bind
    if session is not None:
        bind = session.connection()
        with_commit.write_held(bind)  # events held for the COMMIT (psycopg): now
    with connect(bind) as conn:
        ids = outbox.claimable_ids(conn)
    policy = Visibility.VISIBLE if wait_for_visibility else Visibility.NONE
    return processor.process(config, ids, mode="inline", visibility=policy, bind=bind)


def drain(config: Config | None = None, *, mode: str = "dramatiq",
          timeout: float = 30.0) -> None:
    """Run everything ``mode`` (a ``DramatiqMode`` on Dramatiq's ``StubBroker``) has sent
    so far to completion, in this process, and return once its events are recorded::

        broker = StubBroker()
        config = scrypath_sa.configure(Session, backend=..., mode="dramatiq",
                                       modes={"dramatiq": DramatiqMode(broker)})
        with Session() as session:
            session.add(Article(id=1, title="Hello"))
            session.commit()             # outcome: enqueued
        scrypath_sa.testing.drain(config)  # a worker wrote it; events are completed

    Retries scheduled by a failing write are run too (after their backoff, within
    ``timeout`` seconds); a message that fails for good raises its exception here.
    """
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from scrypath_sa.modes.dramatiq import DramatiqMode

    config = resolve_config(config)
    dramatiq_mode = config.mode(mode)
    if not isinstance(dramatiq_mode, DramatiqMode):
        raise ConfigurationError(f"drain() runs a DramatiqMode; mode {mode!r} is "
                                 f"{type(dramatiq_mode).__name__}")
    broker = dramatiq_mode.broker
    if not isinstance(broker, StubBroker):
        raise ConfigurationError(
            "drain() runs on Dramatiq's StubBroker: in tests, build the mode with "
            "DramatiqMode(StubBroker()) instead of a Redis or RabbitMQ broker")
    if not dramatiq_mode.flush(timeout):  # background sends and enqueued marks
        raise TimeoutError(f"the dramatiq relay did not finish within {timeout}s")
    worker = dramatiq.Worker(broker, worker_timeout=10)
    worker.start()
    try:
        broker.join(dramatiq_mode.queue_name, timeout=int(timeout * 1000))
        worker.join()
    finally:
        worker.stop()
    if not flush_confirmations(timeout):
        raise TimeoutError(f"visible writes were not recorded within {timeout}s")


# ------------------------------------------------------------------ from async tests

async def process_pending_async(session: Any = None, *, config: Config | None = None,
                                wait_for_visibility: bool = True) -> Outcome:
    """:func:`process_pending` for async tests. With an ``AsyncSession`` it runs on the
    session's connection (a test wrapped in a transaction); without, in a thread on the
    configured engine, so the event loop stays free."""
    if session is None:
        return await asyncio.to_thread(process_pending, config=config,
                                       wait_for_visibility=wait_for_visibility)
    outcome: Outcome = await session.run_sync(
        lambda sync: process_pending(sync, config=config,
                                     wait_for_visibility=wait_for_visibility))
    return outcome


async def drain_async(config: Config | None = None, *, mode: str = "dramatiq",
                      timeout: float = 30.0) -> None:
    """:func:`drain` for async tests: the in-process worker runs in a thread."""
    await asyncio.to_thread(drain, config, mode=mode, timeout=timeout)


__all__ = ["Backend", "CapturedOp", "InMemoryBackend", "RecordingBackend", "capture", "drain",
           "drain_async", "process_pending", "process_pending_async"]
