"""The one place sync work is done: claim events, read rows, build documents, write, record.

A mode decides *when and where* :func:`process` runs, never *what* it does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from scrypath_sa import outbox
from scrypath_sa.backends.base import Backend, BulkOp, ItemResult, ItemStatus
from scrypath_sa.errors import BackendError
from scrypath_sa.handoff import HandOff
from scrypath_sa.outbox import Event, State, Transition
from scrypath_sa.outcome import Failure, Outcome
from scrypath_sa.redaction import redact
from scrypath_sa.registry import (
    ModelInfo,
    column_query_parts,
    info_for_index,
    json_safe,
    plain_json_type,
    primary_key,
    uses_default_documents,
)

if TYPE_CHECKING:
    from scrypath_sa.config import Config
    from scrypath_sa.outbox import Bind

log = logging.getLogger("scrypath_sa")
CLAIM_CHUNK = 2000


@dataclass(slots=True)
class _Doc:
    """All claimed events of one document, coalesced: their ids and the most attempts
    any of them had.

    (Ids, not the claimed events: a run holds its documents until it ends, and every
    object it holds per event brings the cycle collector's full collections, each a walk
    of the whole process, closer.)"""

    info: ModelInfo
    document_id: str
    pk: tuple[Any, ...]
    event_ids: tuple[int, ...]
    attempts: int

    @property
    def version(self) -> int:
        return outbox.version_of(max(self.event_ids))


def process(config: Config, event_ids: Sequence[int], *, mode: str,
            wait_for_visibility: bool, engine: Bind | None = None,
            worker: str | None = None, confirm_later: bool = False) -> Outcome:
    """Claim ``event_ids``, write their documents, and record every outcome.

    With ``wait_for_visibility`` a successful write is ``completed`` (visible to search);
    without it, ``backend_accepted``. Ids that are not claimable (unknown, rolled back,
    already done, claimed by someone else) are reported as ``skipped`` and left alone.

    Work streams: events are claimed a few thousand at a time and written in batches of
    ``config.batch_size``. In a run of several batches a sender thread sends them back
    to back, a reader thread (not on SQLite, nor on a caller's connection) claims, reads
    rows and builds documents ahead of it, and this thread records the outcomes that are
    final as they come in (so an interrupted run keeps what it finished; events claimed
    but not written when a run fails stay ``processing`` until their claim expires).

    Visibility comes from ``refresh=wait_for`` on the request when everything fits in
    one request (cheap for the cluster; the inline commit), otherwise from explicit
    refreshes (one per ``REFRESH_EVERY`` documents and one at the end). With
    ``confirm_later`` (worker threads) the run does not wait for visibility: its accepted
    writes go to this process's confirmer thread, which refreshes once for the runs of
    many threads and records them ``completed`` (until then they read ``processing``; if
    the process dies first, their claims expire and they are written again).
    """
    engine = engine or config.require_bind()
    # The confirmer thread opens its own connections: not for a caller's connection.
    confirm_later = confirm_later and isinstance(engine, Engine)
    ids = list(dict.fromkeys(event_ids))
    outcome = Outcome(mode=mode, event_ids=ids)
    # One request per model carries refresh=wait_for when everything fits in one batch
    # (the common inline commit); larger runs get explicit refreshes (see _Writer).
    single = len(ids) <= config.batch_size and not confirm_later
    writer = _Writer(config, engine, wait_for_visibility, per_request_wait=single,
                     pipelined=len(ids) > config.batch_size, confirm_later=confirm_later)
    with _confirmer.run() if confirm_later else contextlib.nullcontext():
        return _process(config, engine, ids, outcome, writer, mode, worker)


def _process(config: Config, engine: Bind, ids: list[int], outcome: Outcome, writer: _Writer,
             mode: str, worker: str | None) -> Outcome:
    claimed: set[int] = set()
    docs_total = 0
    items = _read(config, engine, ids, mode, worker)
    if writer.pipelined and isinstance(engine, Engine) and engine.dialect.name != "sqlite":
        # Claims and row reads wait on the database most of the time: a reader thread
        # does them ahead, this thread hands batches to the senders and records outcomes.
        items = _ahead(items, PIPELINE_DEPTH)
    try:
        for item in items:
            if isinstance(item, _Claimed):
                outcome.locked.extend(item.locked)
                claimed.update(item.ids)
                writer.record(item.unknown)
            else:
                docs_total += len(item.batch)
                writer.submit(item)
    finally:
        items.close()  # on an error, stop the reader now, not when the traceback goes
        transitions = writer.finish()

    outcome.skipped = [i for i in ids if i not in claimed]
    outcome.documents = docs_total
    for tr in transitions:
        outcome.states[tr.state.value] += 1
        if tr.state in (State.RETRYING, State.DISCARDED):
            doc = writer.where.get(tr.event_id)
            index, document_id = (doc.info.index, doc.document_id) if doc else ("?", "?")
            outcome.failures.append(Failure(tr.event_id, index, document_id, tr.state.value,
                                            tr.error_kind, tr.error))
    if outcome.failures:
        log.warning("scrypath_sa: %s", outcome.describe())
    return outcome


@dataclass
class _Claimed:
    ids: list[int]
    locked: list[int]
    unknown: list[Transition]


def _read(config: Config, engine: Bind, ids: list[int], mode: str,
          worker: str | None) -> Generator[_Claimed | _Prepared, None, None]:
    """Claim ``ids`` a chunk at a time; for each chunk, what was claimed, then its
    batches with rows read and documents built."""
    # Claims go in larger chunks than batches: one claim statement per few thousand
    # events costs far less than one per batch.
    claim_size = max(config.batch_size, CLAIM_CHUNK)
    for start in range(0, len(ids), claim_size):
        events, locked = _claim(engine, ids[start:start + claim_size], mode, worker)
        groups, unknown = _coalesce(events)
        yield _Claimed([e.id for e in events], locked, unknown)
        del events  # the documents carry what the rest of the run needs
        for group in groups.values():
            for first in range(0, len(group), config.batch_size):
                yield _prepare(engine, group[0].info, group[first:first + config.batch_size])


_T = TypeVar("_T")


def _ahead(items: Iterator[_T], depth: int) -> Generator[_T, None, None]:
    """Run ``items`` in a thread of its own, up to ``depth`` items ahead of the caller.
    Its exceptions reach the caller; when the caller stops, so does the thread."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            put(("error", exc))
            return
        put(("done", None))

    thread = threading.Thread(target=produce, name="scrypath-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _claim(engine: Bind, ids: list[int], mode: str,
           worker: str | None) -> tuple[list[Event], list[int]]:
    """Claim ``ids``; returns (claimed events, ids still locked by someone else).

    ``SKIP LOCKED`` also skips rows that a non-claimer (the ``enqueued`` marker, a
    sweep) holds for a moment. Such ids are still claimable: try them again briefly,
    then give them back as locked so the caller can redeliver them later.
    """
    with outbox.begin(engine) as conn:
        events = outbox.claim(conn, ids, mode, worker)
    missing = sorted(set(ids) - {e.id for e in events})
    delay = 0.01
    while missing:
        with outbox.connect(engine) as conn:
            missing = outbox.claimable(conn, missing)
        if not missing or delay > 0.5:
            break
        time.sleep(delay)
        delay *= 2
        with outbox.begin(engine) as conn:
            more = outbox.claim(conn, missing, mode, worker)
        events.extend(more)
        missing = sorted(set(missing) - {e.id for e in more})
    return events, missing


def _coalesce(events: list[Event]) -> tuple[dict[str, list[_Doc]], list[Transition]]:
    """Group claimed events per model and per document; events of unknown models are
    discarded with the reason."""
    unknown: list[Transition] = []
    docs: dict[str, dict[str, _Doc]] = {}  # index -> document id -> document
    infos: dict[str, ModelInfo | None] = {}
    for event in events:
        if event.index_name in infos:
            info = infos[event.index_name]
        else:
            info = infos[event.index_name] = info_for_index(event.index_name)
        if info is None:
            unknown.append(Transition(
                event.id, State.DISCARDED, error_kind="unknown_model",
                error=f"no Searchable model for index {event.index_name!r} ({event.model}) "
                      "is defined in this process: import the model before processing",
            ))
            continue
        of_index = docs.get(event.index_name)
        if of_index is None:
            of_index = docs[event.index_name] = {}
        doc = of_index.get(event.document_id)
        if doc is None:
            of_index[event.document_id] = _Doc(info, event.document_id, event.pk,
                                               (event.id,), event.attempts)
        else:
            doc.event_ids += (event.id,)
            doc.attempts = max(doc.attempts, event.attempts)
    return {index: list(of_index.values()) for index, of_index in docs.items()}, unknown


def _load_rows(engine: Bind, info: ModelInfo, docs: list[_Doc]) -> dict[tuple[Any, ...], Any]:
    """Primary key -> built document for the batch's rows that still exist."""
    if uses_default_documents(info.cls):
        return _load_columns(engine, info, docs)
    mapper = info.mapper
    pk_cols = list(mapper.primary_key)
    rows: dict[tuple[Any, ...], Any] = {}
    with Session(engine, expire_on_commit=False) as session:
        for start in range(0, len(docs), 1000):
            keys = [d.pk for d in docs[start:start + 1000]]
            where = outbox.key_filter(session.connection(), pk_cols, keys)
            query = select(info.cls).where(where).options(*info.cls.search_load_options())
            for obj in session.scalars(query):
                rows[tuple(primary_key(obj))] = obj
        # Documents are built while the session is open, so lazy loads still work.
        built = {key: build_document(obj) for key, obj in rows.items()}
        if isinstance(engine, Engine):
            session.commit()  # rather than the close's ROLLBACK (see outbox.connect)
        return built


def _load_columns(engine: Bind, info: ModelInfo,
                  docs: list[_Doc]) -> dict[tuple[Any, ...], Any]:
    """The same documents for models with default documents, from a plain column query
    (no ORM objects to build)."""
    pk_cols = list(info.mapper.primary_key)
    columns, keys, pk_keys = column_query_parts(info)
    pk_positions = [keys.index(k) for k in pk_keys]
    convert = [i for i, column in enumerate(columns) if not plain_json_type(column.type)]
    built: dict[tuple[Any, ...], Any] = {}
    with outbox.connect(engine) as conn:
        for start in range(0, len(docs), 1000):
            chunk = [d.pk for d in docs[start:start + 1000]]
            where = outbox.key_filter(conn, pk_cols, chunk)
            # Each document a dict of plain values, which the cycle collector does not
            # track; rows a part at a time (see outbox.rows).
            for row in outbox.rows(conn.execute(select(*columns).where(where))):
                values: Any = row
                if convert:
                    values = list(row)
                    for i in convert:
                        values[i] = json_safe(values[i])
                built[tuple([values[p] for p in pk_positions])] = (
                    "upsert", {k: v for k, v in zip(keys, values, strict=True)})
    return built


def build_document(obj: Any) -> tuple[str, Any]:
    """('upsert', document) | ('delete', None) | ('error', message) for one row."""
    name = type(obj).__name__
    try:
        if not obj.should_index():
            return ("delete", None)
    except Exception as exc:  # noqa: BLE001 - user code; recorded, not raised
        return ("error", f"{name}.should_index() raised {type(exc).__name__}: {redact(exc)}")
    try:
        document = obj.search_document()
    except Exception as exc:  # noqa: BLE001 - user code; recorded, not raised
        return ("error", f"{name}.search_document() raised {type(exc).__name__}: {redact(exc)}")
    if not isinstance(document, dict):
        return ("error", f"{name}.search_document() must return a dict, "
                         f"got {type(document).__name__}")
    return ("upsert", document)


class _SharedRefresh:
    """Group refresh: concurrent callers that need ``index`` visible share refreshes.

    A caller needs a refresh that *starts* after it arrived (its writes were acknowledged
    before that). If one is running, the caller waits for the next one; whoever finds no
    refresh running starts it for everybody waiting. So N threads cost about one or two
    refreshes, not N, and no caller is told "visible" before it is.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started: dict[tuple[int, str], int] = {}
        self._finished: dict[tuple[int, str], int] = {}
        self._running: set[tuple[int, str]] = set()

    def refresh(self, backend: Backend, index: str) -> None:
        key = (id(backend), index)
        with self._cond:
            needed = self._started.get(key, 0) + 1
            while True:
                if self._finished.get(key, 0) >= needed:
                    return
                if key not in self._running:
                    self._running.add(key)
                    ticket = self._started[key] = self._started.get(key, 0) + 1
                    break
                self._cond.wait()
        try:
            backend.refresh(index)
        except BaseException:
            with self._cond:
                self._running.discard(key)
                self._started[key] = self._finished.get(key, 0)
                self._cond.notify_all()
            raise
        with self._cond:
            self._finished[key] = ticket
            self._running.discard(key)
            self._cond.notify_all()


_refreshes = _SharedRefresh()


SENDERS = 2
"""Requests in flight at once in a run of several batches. Two keep the cluster busy
while one request's answer is being read and the next one written."""

PIPELINE_DEPTH = SENDERS + 1
"""Requests handed to the sender threads, so that none waits for this thread."""

REFRESH_EVERY = 10_000
"""In long runs that must end visible, one refresh per this many documents: their
events can read ``completed`` while the run goes on (progress an operator can see, and
a short tail) at the price of a few more, small refreshes."""


class _Writer:
    """Sends prepared batches: in the caller's thread for a single batch, otherwise from
    ``SENDERS`` sender threads, so that reading rows overlaps with the backend's indexing.

    Every transition is kept for the outcome; the final ones are written to the outbox
    as they come in. Accepted writes that must become visible wait for a refresh that a
    sender thread runs once they were answered, then are recorded ``completed``."""

    def __init__(self, config: Config, engine: Bind, wait_for_visibility: bool,
                 per_request_wait: bool, pipelined: bool, confirm_later: bool = False) -> None:
        self.config, self.engine = config, engine
        self.confirm_later = confirm_later
        self.per_request_wait = wait_for_visibility and per_request_wait
        self.needs_refresh = wait_for_visibility and not per_request_wait
        self.pipelined = pipelined
        self.transitions: list[Transition] = []
        self.where: dict[int, _Doc] = {}  # event id -> its document
        self.index_errors: dict[str, str | None] = {}
        self._unrecorded: list[Transition] = []
        self._awaiting_refresh: list[int] = []  # positions in transitions
        self._unrefreshed: set[str] = set()
        self._sent_since_refresh = 0
        self._sender: ThreadPoolExecutor | None = None
        self._refresher: ThreadPoolExecutor | None = None  # refreshes never hold a sender
        # (batch, its request) or (None, a refresh of the indices written before it)
        self._in_flight: deque[tuple[_Prepared | None, Future[Any]]] = deque()

    def record(self, transitions: list[Transition]) -> None:
        for tr in transitions:
            if tr.state is State.BACKEND_ACCEPTED and self.needs_refresh:
                self._awaiting_refresh.append(len(self.transitions))
            else:
                self._unrecorded.append(tr)
            self.transitions.append(tr)

    def submit(self, prepared: _Prepared) -> None:
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
            results = _send(self.config, prepared.ops, self.per_request_wait,
                            self.index_errors[info.index])
            self.record(_settle(self.config, prepared, results, self.per_request_wait))
            return
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=SENDERS,
                                              thread_name_prefix="scrypath-bulk")
        self._in_flight.append((prepared, self._sender.submit(
            _send, self.config, prepared.ops, self.per_request_wait,
            self.index_errors[info.index])))
        if self.needs_refresh:
            self._unrefreshed.add(info.index)
            self._sent_since_refresh += len(prepared.ops)
            if self._sent_since_refresh >= REFRESH_EVERY:
                # Starts once the requests before it are answered: then it makes all of
                # them visible, while the senders go on with the next ones.
                before = [future for _, future in self._in_flight]
                if self._refresher is None:
                    self._refresher = ThreadPoolExecutor(max_workers=1,
                                                         thread_name_prefix="scrypath-refresh")
                self._in_flight.append((None, self._refresher.submit(
                    self._refresh_after, before, sorted(self._unrefreshed))))
                self._unrefreshed, self._sent_since_refresh = set(), 0
        while len(self._in_flight) > PIPELINE_DEPTH:
            self._settle_oldest()
        if len(self._unrecorded) >= CLAIM_CHUNK:  # fewer, larger UPDATEs are cheaper
            self._write()

    def _settle_oldest(self) -> None:
        prepared, future = self._in_flight.popleft()
        if prepared is None:
            self._complete(future.result())
        else:
            self.record(_settle(self.config, prepared, future.result(), self.per_request_wait))

    def _write(self) -> None:
        if self._unrecorded:
            with outbox.begin(self.engine) as conn:
                outbox.apply(conn, self._unrecorded)
            self._unrecorded = []

    def finish(self) -> list[Transition]:
        """Settle what is in flight, make the remaining accepted writes visible if asked,
        record everything not recorded yet; returns every transition."""
        try:
            while self._in_flight:
                self._settle_oldest()
            if self._awaiting_refresh and self.confirm_later:
                _confirmer.put((self, [self.transitions[i] for i in self._awaiting_refresh]))
                self._awaiting_refresh = []
            elif self._awaiting_refresh:
                indices = {self.where[self.transitions[i].event_id].info.index
                           for i in self._awaiting_refresh}
                self._complete(self._refresh_all(sorted(indices)))
        finally:
            for pool in (self._sender, self._refresher):
                if pool is not None:
                    pool.shutdown(wait=True)
            self._unrecorded.extend(self.transitions[i] for i in self._awaiting_refresh)
            self._write()
        return self.transitions

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
        return self._refresh_all(indices)

    def _refresh_all(self, indices: list[str]) -> dict[str, bool]:
        visible: dict[str, bool] = {}
        for index in indices:
            try:
                _refreshes.refresh(self.config.backend, index)
                visible[index] = True
            except BackendError as exc:
                log.warning("scrypath_sa: writes to %s were accepted but the refresh "
                            "failed; they stay backend_accepted: %s", index, redact(exc))
                visible[index] = False
        return visible


CONFIRM_EVERY = 0.1
"""Under load, the confirmer refreshes at most this often (seconds)."""


class _Confirmer(HandOff[tuple["_Writer", list[Transition]]]):
    """Accepted writes of ``confirm_later`` runs, made visible and recorded off the
    runs' threads: one thread per process takes everything handed over so far,
    refreshes each index once, and records those events ``completed`` in one
    transaction (``backend_accepted`` where the refresh failed: the truth). Under load,
    refreshes and UPDATEs are shared by many runs, and worker threads no longer queue
    behind each other's refreshes."""

    thread_name = "scrypath-confirm"

    def __init__(self) -> None:
        super().__init__()
        self._runs = 0  # confirm_later runs in progress in this process

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """Around a ``confirm_later`` run: while none is in progress, nothing more is
        coming soon, and the confirmer does not wait for more."""
        with self.cond:
            self._runs += 1
        try:
            yield
        finally:
            with self.cond:
                self._runs -= 1
                self.cond.notify_all()

    def work(self) -> None:
        last = 0.0
        while True:
            first = self.next_item()
            # Refreshes cost the cluster a segment each: while runs are in progress,
            # one per CONFIRM_EVERY seconds, shared by everything that arrives meanwhile.
            with self.cond:
                self.cond.wait_for(lambda: self._runs == 0,
                                   last + CONFIRM_EVERY - time.monotonic())
            last = time.monotonic()
            batch = [first, *self.pending()]
            # Grouped by (backend, database): one refresh per index, one transaction per
            # database; a failure in one group leaves the others alone.
            by_target: dict[tuple[int, int], list[tuple[_Writer, list[Transition]]]] = {}
            for writer, transitions in batch:
                key = (id(writer.config.backend), id(writer.engine))
                by_target.setdefault(key, []).append((writer, transitions))
            for items in by_target.values():
                try:
                    self._confirm(items)
                except Exception as exc:  # noqa: BLE001 - they stay processing; claims expire
                    log.warning("scrypath_sa: could not record %d visible writes; their "
                                "claims will expire and they will be written again: %s",
                                sum(len(transitions) for _, transitions in items), redact(exc))
            self.done(len(batch))

    @staticmethod
    def _confirm(items: list[tuple[_Writer, list[Transition]]]) -> None:
        """Refresh the indices ``items`` wrote (one backend, one database) and record them."""
        by_index: dict[str, list[Transition]] = {}
        for writer, transitions in items:
            where = writer.where
            for tr in transitions:
                index = where[tr.event_id].info.index
                group = by_index.get(index)
                if group is None:
                    group = by_index[index] = []
                group.append(tr)
        first = items[0][0]
        visible = first._refresh_all(sorted(by_index))
        with outbox.begin(first.engine) as conn:
            for index, group in by_index.items():
                outbox.apply(conn, group,
                             as_state=State.COMPLETED if visible[index] else None)


_confirmer = _Confirmer()


def flush_confirmations(timeout: float | None = 30.0) -> bool:
    """Wait until the accepted writes of this process's ``confirm_later`` runs are
    recorded (``completed``, or ``backend_accepted`` if their refresh failed); False on
    timeout. Called when a Dramatiq worker shuts down."""
    return _confirmer.flush(timeout)


@dataclass
class _Prepared:
    """One batch of one model, ready to send."""

    info: ModelInfo
    batch: list[_Doc]
    ops: list[BulkOp] = field(default_factory=list)
    sent: list[_Doc] = field(default_factory=list)
    failed: list[Transition] = field(default_factory=list)


def _prepare(engine: Bind, info: ModelInfo, batch: list[_Doc]) -> _Prepared:
    """Read the batch's rows and build its operations (documents that cannot be built
    are discarded here, with the reason)."""
    prepared = _Prepared(info, batch)
    built = _load_rows(engine, info, batch)
    for doc in batch:
        action, payload = built.get(doc.pk, ("delete", None))
        if action == "error":
            prepared.failed.extend(_each(doc, State.DISCARDED, error_kind="document_error",
                                         error=str(payload)))
            continue
        prepared.ops.append(BulkOp(info.index, doc.document_id, doc.version, payload))
        prepared.sent.append(doc)
    return prepared


def _send(config: Config, ops: list[BulkOp], wait_for_visibility: bool,
          index_error: str | None) -> list[ItemResult]:
    if not ops:
        return []
    if index_error is not None:
        return [ItemResult(ItemStatus.RETRYABLE, "index_unavailable", index_error)] * len(ops)
    return config.backend.bulk(ops, wait_for_visibility=wait_for_visibility)


def _settle(config: Config, prepared: _Prepared, results: list[ItemResult],
            wait_for_visibility: bool) -> list[Transition]:
    """Turn one request's per-item results into transitions."""
    transitions: list[Transition] = []
    success = State.COMPLETED if wait_for_visibility else State.BACKEND_ACCEPTED
    retry_at: dict[int, dt.datetime] = {}  # one jittered time per attempt count and batch
    for doc, op, result in zip(prepared.sent, prepared.ops, results, strict=True):
        operation = "delete" if op.is_delete else "upsert"
        if result.status in (ItemStatus.OK, ItemStatus.CONFLICT):
            transitions.extend(_each(doc, success, operation=operation, version=op.version))
        elif result.status is ItemStatus.RETRYABLE and doc.attempts < config.max_attempts:
            transitions.extend(_each(
                doc, State.RETRYING, operation=operation, version=op.version,
                error_kind=result.error_kind, error=result.error,
                next_attempt_at=retry_at.setdefault(
                    doc.attempts, outbox.utcnow() + backoff(config, doc.attempts)),
            ))
        else:
            error = result.error
            if result.status is ItemStatus.RETRYABLE:
                error = f"gave up after {doc.attempts} attempts: {error}"
            transitions.extend(_each(doc, State.DISCARDED, operation=operation,
                                     version=op.version, error_kind=result.error_kind,
                                     error=error))
    return transitions


def _each(doc: _Doc, state: State, *, operation: str | None = None, version: int | None = None,
          error_kind: str | None = None, error: str | None = None,
          next_attempt_at: dt.datetime | None = None) -> list[Transition]:
    return [Transition(event_id, state, operation, version, error_kind, error, next_attempt_at)
            for event_id in doc.event_ids]


def backoff(config: Config, attempts: int) -> dt.timedelta:
    """Exponential backoff with full jitter on the upper half: base * 2**(n-1), capped."""
    ceiling = min(config.backoff_max, config.backoff_base * 2 ** max(attempts - 1, 0))
    return dt.timedelta(seconds=ceiling / 2 + random.random() * ceiling / 2)
