"""Helpers for testing *your* app: no search server needed, and sync you can see.

* :class:`InMemoryBackend`: the embedded backend in memory (same contract as OpenSearch:
  aliases, external versions, text search).
* :func:`capture`: record every write a block sends to the backend.
* :func:`process_pending`: process recorded events now, in this thread; it works inside
  a test wrapped in a transaction (where ``after_commit`` never reaches a real commit,
  so nothing is dispatched), because it runs on that test's own connection.

A pytest plugin ships too (``scrypath_sa.pytest_plugin``): fixtures
``scrypath_backend`` and ``scrypath_capture``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scrypath_sa import outbox, processor
from scrypath_sa.backends.base import Backend, BulkOp, ItemResult
from scrypath_sa.backends.embedded import EmbeddedBackend
from scrypath_sa.config import Config
from scrypath_sa.ops.common import config_or_current
from scrypath_sa.outbox import CLAIMABLE, in_states, sync_events
from scrypath_sa.outcome import Outcome


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


@contextlib.contextmanager
def capture(config: Config | None = None) -> Iterator[list[CapturedOp]]:
    """Collect the writes sent to the backend inside the block (they still happen)."""
    backend = config_or_current(config).backend
    captured: list[CapturedOp] = []
    original = backend.bulk

    def recording(ops: Sequence[BulkOp], *, wait_for_visibility: bool) -> list[ItemResult]:
        captured.extend(CapturedOp("delete" if op.is_delete else "index", op.index, op.id,
                                   dict(op.document) if op.document is not None else None)
                        for op in ops)
        return original(ops, wait_for_visibility=wait_for_visibility)

    backend.bulk = recording  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        backend.bulk = original  # type: ignore[method-assign]


def process_pending(session: Session | None = None, *, config: Config | None = None,
                    wait_for_visibility: bool = True) -> Outcome:
    """Process every event still waiting (requested, enqueued, retrying) right now.

    With ``session`` it runs on that session's connection, so it sees events of a
    transaction that will never commit (a test wrapped in one); without, on the
    configured engine.
    """
    config = config_or_current(config)
    bind: outbox.Bind = session.connection() if session is not None else config.require_bind()
    with outbox.connect(bind) as conn:
        ids = list(conn.execute(select(sync_events.c.id).where(
            in_states(CLAIMABLE)).order_by(
            sync_events.c.id)).scalars())
    return processor.process(config, ids, mode="inline",
                             wait_for_visibility=wait_for_visibility, engine=bind)


__all__ = ["Backend", "CapturedOp", "InMemoryBackend", "capture", "process_pending"]
