"""Send prepared batches to the backend and settle their per-item results.

The processor hands :class:`Prepared` batches to a :class:`Writer`. One batch (a commit)
is sent in the caller's thread; a run of several is sent from :data:`SENDERS` threads, so
that reading rows overlaps with the backend's indexing. Every transition is kept for the
outcome; the final ones are written to the outbox as they come in. When the run's
:class:`~scrypath_sa.visibility.Visibility` asks for it, accepted writes become
``completed`` once a refresh that started after they were answered has finished.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from scrypath_sa import outbox, visibility
from scrypath_sa.backends.base import BulkOp, ItemResult, ItemStatus
from scrypath_sa.errors import BackendError
from scrypath_sa.outbox import Transition
from scrypath_sa.redaction import redact
from scrypath_sa.registry import ModelInfo
from scrypath_sa.schema import VERSION_SCALE, State, is_rebuild_version, utcnow, version_of
from scrypath_sa.sql import Bind, begin, connect
from scrypath_sa.threads import pool
from scrypath_sa.visibility import Visibility

if TYPE_CHECKING:
    from scrypath_sa.config import Config

SENDERS = 2
"""Requests in flight at once in a run of several batches. Two keep the cluster busy
while one request's answer is being read and the next one written."""

PIPELINE_DEPTH = SENDERS + 1
"""Requests handed to the sender threads, so that none waits for the caller."""

RECORD_EVERY = 2000
"""Final transitions are written once this many are waiting (fewer, larger UPDATEs)."""


@dataclass(slots=True)
class Doc:
    """All claimed events of one document, coalesced: their ids and the most attempts
    any of them had (ids rather than the claimed rows: a run holds its documents until
    it ends, and fewer live objects keep the cycle collector away)."""

    info: ModelInfo
    document_id: str
    pk: tuple[Any, ...]
    event_ids: tuple[int, ...]
    attempts: int

    @property
    def version(self) -> int:
        return version_of(max(self.event_ids))


@dataclass
class Prepared:
    """One batch of one model, ready to send."""

    info: ModelInfo
    batch: list[Doc]
    ops: list[BulkOp] = field(default_factory=list)
    sent: list[Doc] = field(default_factory=list)
    failed: list[Transition] = field(default_factory=list)


class Writer:
    """Sends prepared batches and records what became of them (see the module)."""

    def __init__(self, config: Config, bind: Bind, policy: Visibility,
                 pipelined: bool, deadline: float | None = None) -> None:
        self.config, self.bind, self.policy = config, bind, policy
        self.pipelined = pipelined
        self.deadline = deadline  # time.monotonic() after which nothing more is sent
        self.stopped: str | None = None  # why this run sends nothing more
        self.refreshes = policy.waits
        self.transitions: list[Transition] = []
        self.where: dict[int, Doc] = {}  # event id -> its document
        self.index_errors: dict[str, str | None] = {}
        self._unrecorded: list[Transition] = []
        self._awaiting_refresh: list[int] = []  # positions in transitions
        self._unrefreshed: set[str] = set()
        self._sent_since_refresh = 0
        self._sender: ThreadPoolExecutor | None = None
        self._refresher: ThreadPoolExecutor | None = None  # refreshes never hold a sender
        # (batch, its request) or (None, a refresh of the indices written before it)
        self._in_flight: deque[tuple[Prepared | None, Future[Any]]] = deque()

    def record(self, transitions: list[Transition]) -> None:
        for tr in transitions:
            if tr.state is State.BACKEND_ACCEPTED and self.refreshes:
                self._awaiting_refresh.append(len(self.transitions))
            else:
                self._unrecorded.append(tr)
            self.transitions.append(tr)

    def submit(self, prepared: Prepared) -> None:
        info = prepared.info
        if info.index not in self.index_errors:
            try:
                self.config.backend.ensure_index(info.index, info.contract, info.name)
                self.index_errors[info.index] = None
            except BackendError as exc:
                self.index_errors[info.index] = redact(exc)
        for doc in prepared.batch:
            for event_id in doc.event_ids:
                self.where[event_id] = doc
        self.record(prepared.failed)
        if not self.pipelined:  # one small batch (a commit): no thread to start
            results = self.send(prepared.ops, self.index_errors[info.index])
            self.record(settle(self.config, self.bind, prepared, results))
            return
        if self._sender is None:
            self._sender = pool("scrypath-bulk", SENDERS)
        self._in_flight.append((prepared, self._sender.submit(
            self.send, prepared.ops, self.index_errors[info.index])))
        if self.refreshes:
            self._unrefreshed.add(info.index)
            self._sent_since_refresh += len(prepared.ops)
            if self._sent_since_refresh >= visibility.REFRESH_EVERY:
                # Starts once the requests before it are answered: then it makes all of
                # them visible, while the senders go on with the next ones.
                before = [future for _, future in self._in_flight]
                if self._refresher is None:
                    self._refresher = pool("scrypath-refresh", 1)
                self._in_flight.append((None, self._refresher.submit(
                    self._refresh_after, before, sorted(self._unrefreshed))))
                self._unrefreshed, self._sent_since_refresh = set(), 0
        while len(self._in_flight) > PIPELINE_DEPTH:
            self._settle_oldest()
        if len(self._unrecorded) >= RECORD_EVERY:
            self._write()

    def _settle_oldest(self) -> None:
        prepared, future = self._in_flight.popleft()
        if prepared is None:
            self._complete(future.result())
        else:
            self.record(settle(self.config, self.bind, prepared, future.result()))

    def _write(self) -> None:
        if self._unrecorded:
            with begin(self.bind) as conn:
                outbox.apply(conn, self._unrecorded)
            self._unrecorded = []

    def finish(self) -> list[Transition]:
        """Settle what is in flight, make the remaining accepted writes visible as the
        policy says, record everything not recorded yet; returns every transition."""
        try:
            while self._in_flight:
                self._settle_oldest()
            if self._awaiting_refresh and self.policy is Visibility.DEFERRED:
                assert isinstance(self.bind, Engine)  # plan() defers for engines only
                visibility.confirmer.put((self.config.backend, self.bind, self._by_index(
                    self.transitions[i] for i in self._awaiting_refresh)))
                self._awaiting_refresh = []
            elif self._awaiting_refresh:
                indices = {self.where[self.transitions[i].event_id].info.index
                           for i in self._awaiting_refresh}
                self._complete(visibility.refresh_all(self.config.backend, sorted(indices)))
        finally:
            for executor in (self._sender, self._refresher):
                if executor is not None:
                    executor.shutdown(wait=True)
            self._unrecorded.extend(self.transitions[i] for i in self._awaiting_refresh)
            self._write()
        return self.transitions

    def _by_index(self, transitions: Any) -> dict[str, list[Transition]]:
        by_index: dict[str, list[Transition]] = {}
        where = self.where
        for tr in transitions:
            index = where[tr.event_id].info.index
            group = by_index.get(index)
            if group is None:
                group = by_index[index] = []
            group.append(tr)
        return by_index

    def _complete(self, visible: dict[str, bool]) -> None:
        """The accepted writes settled so far were followed by a refresh: those in an
        index it reached are visible and read ``completed``; the others stay
        ``backend_accepted``, which is the truth."""
        for i in self._awaiting_refresh:
            tr = self.transitions[i]
            if visible.get(self.where[tr.event_id].info.index, False):
                tr = self.transitions[i] = Transition(tr.event_id, State.COMPLETED, *tr[2:])
            self._unrecorded.append(tr)
        self._awaiting_refresh = []

    def _refresh_after(self, requests: list[Future[Any]],
                       indices: list[str]) -> dict[str, bool]:
        wait(requests)
        return visibility.refresh_all(self.config.backend, indices)


    def send(self, ops: Sequence[BulkOp], index_error: str | None) -> list[ItemResult]:
        """One request (from a sender thread in a pipelined run). Once a request of the
        run got no answer, or the run's deadline passed, the rest are not sent: their
        events are ``retrying`` with the reason, and the caller waits about one request
        timeout for a stalled cluster, not one per batch."""
        if not ops:
            return []
        if index_error is not None:
            return [ItemResult(ItemStatus.RETRYABLE, "index_unavailable", index_error)] * len(ops)
        if self.stopped is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.stopped = "not sent: the run's deadline passed before this batch's turn"
        if self.stopped is not None:
            return [ItemResult(ItemStatus.RETRYABLE, "not_sent", self.stopped)] * len(ops)
        results = self.config.backend.bulk(ops, wait_for_visibility=False)
        if results and all(r.error_kind == "connection_error" for r in results):
            self.stopped = (f"not sent: an earlier request of this run got no answer "
                            f"({results[0].error})")
        return results


def settle(config: Config, bind: Bind, prepared: Prepared,
           results: list[ItemResult]) -> list[Transition]:
    """Turn one request's per-item results into transitions (success is
    ``backend_accepted``: a refresh after it makes it ``completed``).

    A version conflict is success when the index holds a version this database issued
    for a newer event of the document: the newer write wins. A version above every one
    it issued is drift (see :func:`ahead_of_database`), and so is one just above this
    write's own, which only a delete or an edit made in the index directly produces.

    A conflict with a rebuild's copy (see :func:`~scrypath_sa.schema.is_rebuild_version`)
    is neither: the rebuild may have read the row before this write's transaction
    committed (ids are taken at flush, so this event's id can be below the rebuild's
    high-water mark). The document, read after that commit, is sent again at the
    rebuild's version, which it may replace; that is its outcome."""
    judged = _Judge(config, bind, prepared.info.index)
    transitions: list[Transition] = []
    again: list[tuple[Doc, BulkOp]] = []
    for doc, op, result in zip(prepared.sent, prepared.ops, results, strict=True):
        stored = result.stored_version
        if (result.status is ItemStatus.CONFLICT and stored is not None
                and stored > op.version and is_rebuild_version(stored)
                and stored <= judged.ceiling()):
            again.append((doc, BulkOp(op.index, op.id, stored, op.document)))
        else:
            transitions.extend(judged(doc, op, result))
    if again:
        answers = config.backend.bulk([op for _, op in again], wait_for_visibility=False)
        for (doc, op), result in zip(again, answers, strict=True):
            transitions.extend(judged(doc, op, result))
    return transitions


class _Judge:
    """What one item's result makes of its document's events."""

    def __init__(self, config: Config, bind: Bind, index: str) -> None:
        self.config, self.bind, self.index = config, bind, index
        self.retry_at: dict[int, dt.datetime] = {}  # one jittered time per attempt count
        self._ceiling: int | None = None

    def ceiling(self) -> int:
        """The highest version this database issued, read at the first conflict."""
        if self._ceiling is None:
            with connect(self.bind) as conn:
                self._ceiling = outbox.highest_issued_version(conn)
        return self._ceiling

    def __call__(self, doc: Doc, op: BulkOp, result: ItemResult) -> list[Transition]:
        operation = "delete" if op.is_delete else "upsert"
        if result.status is ItemStatus.CONFLICT and result.stored_version is not None:
            drift = _conflict_drift(self.index, op.version, result.stored_version,
                                    self.ceiling())
            if drift is not None:
                kind, reason = drift
                return each(doc, State.DISCARDED, operation=operation, version=op.version,
                            error_kind=kind, error=reason)
        if result.status in (ItemStatus.OK, ItemStatus.CONFLICT):
            return each(doc, State.BACKEND_ACCEPTED, operation=operation, version=op.version)
        if result.status is ItemStatus.RETRYABLE and doc.attempts < self.config.max_attempts:
            return each(doc, State.RETRYING, operation=operation, version=op.version,
                        error_kind=result.error_kind, error=result.error,
                        next_attempt_at=self.retry_at.setdefault(
                            doc.attempts, utcnow() + backoff(self.config, doc.attempts)))
        error = result.error
        if result.status is ItemStatus.RETRYABLE:
            error = f"gave up after {doc.attempts} attempts: {error}"
        return each(doc, State.DISCARDED, operation=operation, version=op.version,
                    error_kind=result.error_kind, error=error)


def _conflict_drift(index: str, sent: int, stored: int,
                    ceiling: int) -> tuple[str, str] | None:
    """(error kind, reason) when a conflict is not a newer write of this database's:
    the index holds a version above every one it issued, or one just above this very
    write's own (no event's or rebuild's version: a delete or an edit made in the
    index directly). None when the newer write simply wins."""
    if stored > ceiling:
        return "index_ahead", ahead_of_database(index, stored, ceiling)
    if sent < stored < sent + VERSION_SCALE - 1:
        return "index_changed", (
            f"{index} holds this document at version {stored}: it was deleted or edited in "
            "the index directly after this write; `scrypath-sa backfill` (or reconcile) "
            "writes it again")
    return None


def ahead_of_database(index: str, stored: int, ceiling: int) -> str:
    """The reason given for a write that the index refused with a version above every
    version this database issued."""
    return (f"{index} holds this document at version {stored}, above every version this "
            f"database issued ({ceiling}): the database was restored from an older backup, "
            "or another writer uses the index. Nothing this database writes can replace "
            "it: `scrypath-sa reconcile --action reindex` rebuilds the index from the "
            "database, after which changes sync again.")


def each(doc: Doc, state: State, *, operation: str | None = None, version: int | None = None,
         error_kind: str | None = None, error: str | None = None,
         next_attempt_at: dt.datetime | None = None) -> list[Transition]:
    """The same transition for every event of ``doc``."""
    return [Transition(event_id, state, operation, version, error_kind, error, next_attempt_at)
            for event_id in doc.event_ids]


def backoff(config: Config, attempts: int) -> dt.timedelta:
    """Exponential backoff with full jitter on the upper half: base * 2**(n-1), capped."""
    ceiling = min(config.backoff_max, config.backoff_base * 2 ** max(attempts - 1, 0))
    return dt.timedelta(seconds=ceiling / 2 + random.random() * ceiling / 2)
