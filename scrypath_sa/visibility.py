"""When an accepted write counts as visible, and who makes it so.

A mode declares one :class:`Visibility`; :func:`plan` fits it to one run:

``NONE``
    Nothing waits: accepted writes stay ``backend_accepted`` (``manual``; ``confirm()``
    verifies them later).
``VISIBLE``
    The run ends visible: after its writes are answered, one refresh of each index it
    wrote makes them searchable, shared with every concurrent caller of this process
    (an ``inline`` commit returns in milliseconds instead of waiting for the index's
    next scheduled refresh). A run of several batches also refreshes once per
    :data:`REFRESH_EVERY` documents, so its events turn ``completed`` as it goes.
``DEFERRED``
    As ``VISIBLE`` while the run goes on; what is left at its end goes to this process's
    :class:`Confirmer`, which refreshes once for the runs of many threads and records
    them ``completed`` (``dramatiq`` workers). Until then they read ``processing``.

Refreshes of one index by many threads are shared and paced (:class:`SharedRefresh`:
at most one per :data:`REFRESH_PACE` seconds per index and process); a refresh that
fails leaves its writes ``backend_accepted``, which is the truth.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Sequence

from sqlalchemy import Engine

from scrypath_sa import outbox, telemetry
from scrypath_sa.backends.base import Backend
from scrypath_sa.errors import BackendError
from scrypath_sa.outbox import Transition
from scrypath_sa.redaction import redact
from scrypath_sa.schema import State
from scrypath_sa.sql import Bind, begin
from scrypath_sa.threads import HandOff

log = logging.getLogger("scrypath_sa")

REFRESH_EVERY = 10_000
"""In long runs that must end visible, one refresh per this many documents: their
events can read ``completed`` while the run goes on (progress an operator can see, and
a short tail) at the price of a few more, small refreshes."""

CONFIRM_EVERY = 0.5
"""The confirmer refreshes at most this often (seconds): twice as often as an index
refreshes by itself by default. Each refresh costs the cluster a segment; at 8-10 a
second they were a third of a streaming worker's OpenSearch CPU; at most 2 a second
(rather than 1) a stream's last writes wait half as long to be visible, for a few more
refreshes (docs/performance.md). The first writes after a quiet half second are
refreshed at once."""

REFRESH_PACE = 0.05
"""While several callers need one index visible, its refreshes from this process start
at least this far apart (seconds) and are shared: 20 threads committing cost about 20
refreshes a second, not one per commit. A lone caller's refresh starts at once."""


class Visibility(enum.Enum):
    NONE = "none"
    VISIBLE = "visible"
    DEFERRED = "deferred"

    @property
    def waits(self) -> bool:
        """True when the run's writes end ``completed`` (now or through the confirmer)."""
        return self is not Visibility.NONE


def plan(wanted: Visibility, bind: Bind) -> Visibility:
    """The policy for one run: a mode's wish, fitted to it. The confirmer opens
    connections of its own, so it serves engines only."""
    if wanted is Visibility.DEFERRED and not isinstance(bind, Engine):
        return Visibility.VISIBLE
    return wanted


class SharedRefresh:
    """Group refresh: concurrent callers that need ``index`` visible share refreshes.

    A caller needs a refresh that *starts* after it arrived (its writes were acknowledged
    before that). If one is running, the caller waits for the next one; whoever finds no
    refresh running leads the next one for everybody waiting. When other callers are
    inside too (concurrent commits), or another thread led the previous one, it starts
    no sooner than :data:`REFRESH_PACE` after the previous one started, and callers
    arriving meanwhile are served by it. So N threads cost a refresh per pace, not N;
    a lone caller (one thread committing) is never held; and no caller is told
    "visible" before it is.
    """

    def __init__(self, pace: float = REFRESH_PACE) -> None:
        self.pace = pace
        self._cond = threading.Condition()
        self._started: dict[tuple[int, str], int] = {}
        self._finished: dict[tuple[int, str], int] = {}
        self._running: set[tuple[int, str]] = set()  # led: pacing or refreshing
        self._last_start: dict[tuple[int, str], float] = {}
        self._inside: dict[tuple[int, str], int] = {}  # callers in refresh() now
        self._peak: dict[tuple[int, str], int] = {}  # most inside since the last start
        self._busy: dict[tuple[int, str], bool] = {}  # the last refresh was shared
        self._leader: dict[tuple[int, str], int] = {}  # the thread that led the last

    def refresh(self, backend: Backend, index: str) -> None:
        key = (id(backend), index)
        with self._cond:
            inside = self._inside[key] = self._inside.get(key, 0) + 1
            self._peak[key] = max(self._peak.get(key, 0), inside)
        try:
            self._refresh(backend, index, key)
        finally:
            with self._cond:
                self._inside[key] -= 1

    def _refresh(self, backend: Backend, index: str, key: tuple[int, str]) -> None:
        with self._cond:
            needed = self._started.get(key, 0) + 1
            while True:
                if self._finished.get(key, 0) >= needed:
                    return
                if key not in self._running:
                    self._running.add(key)
                    break
                self._cond.wait()
            # The leader: with others inside now or during the last refresh, or when
            # another thread led the last one (concurrent commits whose shared runs
            # reach here one at a time), this one starts once the pace allows (and
            # counts as started only then, so callers arriving meanwhile share it).
            me = threading.get_ident()
            while (self._inside[key] > 1 or self._busy.get(key, False)
                   or self._leader.get(key, me) != me) and (
                    delay := self._last_start.get(key, -self.pace) + self.pace
                    - time.monotonic()) > 0:
                self._cond.wait(delay)
            ticket = self._started[key] = self._started.get(key, 0) + 1
            self._last_start[key] = time.monotonic()
            self._leader[key] = me
            self._busy[key] = self._peak.get(key, 0) > 1
            self._peak[key] = self._inside[key]
        began = time.perf_counter()
        try:
            with telemetry.span("scrypath_sa.refresh", index=index):
                backend.refresh(index)
        except BaseException:
            telemetry.refresh(index, time.perf_counter() - began, False)
            with self._cond:
                self._running.discard(key)
                self._started[key] = self._finished.get(key, 0)
                self._cond.notify_all()
            raise
        telemetry.refresh(index, time.perf_counter() - began, True)
        with self._cond:
            self._finished[key] = ticket
            self._running.discard(key)
            self._cond.notify_all()


_shared = SharedRefresh()


def refresh(backend: Backend, index: str) -> None:
    """Make every write to ``index`` acknowledged before this call visible (a refresh
    shared with concurrent callers); raises :class:`BackendError`."""
    _shared.refresh(backend, index)


def refresh_all(backend: Backend, indices: Sequence[str]) -> dict[str, bool]:
    """Refresh each index (shared with concurrent callers); index -> whether it worked."""
    visible: dict[str, bool] = {}
    for index in indices:
        try:
            refresh(backend, index)
            visible[index] = True
        except BackendError as exc:
            log.warning("scrypath_sa: writes to %s were accepted but the refresh failed; "
                        "until one works they stay backend_accepted (sweep confirms them "
                        "later): %s", index, redact(exc))
            visible[index] = False
    return visible


Accepted = tuple[Backend, Engine, dict[str, list[Transition]]]
"""What a deferred run hands over: its backend, its database, and its accepted writes
by index."""


class Confirmer(HandOff[Accepted]):
    """Accepted writes of ``DEFERRED`` runs, made visible and recorded off the runs'
    threads: one thread per process takes everything handed over so far, refreshes each
    index once, and records those events ``completed`` in one transaction per database
    (``backend_accepted`` where the refresh failed), at most once per
    :data:`CONFIRM_EVERY`. Under load, refreshes and UPDATEs are shared by many runs, and
    worker threads do not queue behind each other's refreshes."""

    thread_name = "scrypath-confirm"

    def work(self) -> None:
        last = 0.0
        while True:
            first = self.next_item()
            # Refreshes cost the cluster a segment each: at most one per CONFIRM_EVERY
            # seconds, shared by everything that arrives meanwhile (the first after a
            # quiet second at once).
            time.sleep(max(0.0, last + CONFIRM_EVERY - time.monotonic()))
            last = time.monotonic()
            batch = [first, *self.pending()]
            # Grouped by (backend, database): one refresh per index, one transaction per
            # database; a failure in one group leaves the others alone.
            groups: dict[tuple[int, int], Accepted] = {}
            for backend, engine, by_index in batch:
                key = (id(backend), id(engine))
                if key not in groups:
                    groups[key] = (backend, engine, {})
                merged = groups[key][2]
                for index, transitions in by_index.items():
                    merged.setdefault(index, []).extend(transitions)
            for backend, engine, by_index in groups.values():
                try:
                    _confirm(backend, engine, by_index)
                except Exception as exc:  # noqa: BLE001 - they stay processing; claims expire
                    log.warning("scrypath_sa: could not record %d visible writes; their "
                                "claims will expire and they will be written again: %s",
                                sum(map(len, by_index.values())), redact(exc))
            self.done(len(batch))


def _confirm(backend: Backend, engine: Engine, by_index: dict[str, list[Transition]]) -> None:
    visible = refresh_all(backend, sorted(by_index))
    failed = [index for index, ok in visible.items() if not ok]
    if failed:  # once more, after a pause: a node that refused is out of the client's pool
        time.sleep(CONFIRM_EVERY)
        visible.update(refresh_all(backend, failed))
    with begin(engine) as conn:
        for index, group in by_index.items():
            outbox.apply(conn, group, as_state=State.COMPLETED if visible[index] else None)


confirmer = Confirmer()


def flush_confirmations(timeout: float | None = 30.0) -> bool:
    """Wait until the accepted writes of this process's deferred runs are recorded
    (``completed``, or ``backend_accepted`` if their refresh failed); False on timeout.
    Called when a Dramatiq worker shuts down."""
    return confirmer.flush(timeout)
