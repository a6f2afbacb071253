"""Every thread the library starts, in one place.

=====================  ==========================================  =====================
thread name            what it does                                started by
=====================  ==========================================  =====================
``scrypath-relay``     sends ``dramatiq`` messages in the          :class:`HandOff`
                       background and records ``enqueued``         (``modes.dramatiq``)
``scrypath-confirm``   refreshes for many worker runs at once and  :class:`HandOff`
                       records ``completed``                       (``visibility``)
``scrypath-read``      claims and reads rows ahead of a long run   :func:`ahead`
``scrypath-bulk``      sends a long run's batches (two at once)    :func:`pool`
``scrypath-refresh``   a long run's periodic refreshes             :func:`pool`
``scrypath-backfill``  sends a backfill's pages                    :func:`pool`
``scrypath-async``     ``AsyncSession`` commits' work after        :func:`async_pool`
                       commit, off the event loop                  (``modes.dispatch``)
=====================  ==========================================  =====================

The hand-off threads are daemons started on first use (and again if one died); their
queued work is flushed at interpreter exit. The ``scrypath-async`` pool lives for the
process. The others live for one run.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections import Counter
from collections.abc import Callable, Generator, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
ItemT = TypeVar("ItemT")
R = TypeVar("R")


class HandOff(Generic[T]):
    """Items for :meth:`work` in a daemon thread started by the first :meth:`put` (and
    again if it died). :meth:`flush` waits until everything put so far is done; it also
    runs at interpreter exit. ``work`` takes items with :meth:`next_item` and
    :meth:`pending` and reports them with :meth:`done`."""

    thread_name = "scrypath-handoff"

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self.cond = threading.Condition()
        self._queued = self._done = 0
        self._thread: threading.Thread | None = None

    def put(self, item: T) -> None:
        with self.cond:
            self._queued += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self.work, name=self.thread_name,
                                                daemon=True)
                self._thread.start()
                atexit.register(self.flush, 10.0)
        self.queue.put(item)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every item put so far is done; False on timeout."""
        with self.cond:
            target = self._queued
        self.hurry()
        with self.cond:
            return self.cond.wait_for(lambda: self._done >= target, timeout)

    def hurry(self) -> None:
        """Called by :meth:`flush` before it waits: a thread that lingers for more items
        can be told to stop lingering."""

    def next_item(self) -> T:
        """The next item, waiting for it."""
        item = self.queue.get()
        while item is None:  # a wake-up with nothing to do
            item = self.queue.get()
        return item

    def pending(self) -> list[T]:
        """Every item queued now, without waiting."""
        items: list[T] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def done(self, count: int) -> None:
        with self.cond:
            self._done += count
            self.cond.notify_all()

    def work(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError


def ahead(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """Run ``items`` in a ``scrypath-read`` thread, up to ``depth`` items ahead of the
    caller. Its exceptions reach the caller; when the caller stops, so does the thread."""
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


def pool(name: str, workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads named ``name`` for one run (shut it down after)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


class Together(Generic[ItemT, R]):
    """Callers with the same key share calls of one function (group commit): while
    ``slots`` calls for a key are in flight, arriving callers wait, and the next call
    carries every caller waiting then. A lone caller's call starts at once. ``fn``
    takes the callers' items and returns one result each.

    A thread calls :meth:`run`: it waits, and may make the call for the others. An
    event loop's caller must not wait: it hands its item to :meth:`put` with a callback,
    and a thread of the executor it names makes the call.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.cond = threading.Condition()
        self.waiting: dict[Hashable, list[_Seat[ItemT, R]]] = {}
        self.busy: Counter[Hashable] = Counter()

    def run(self, key: Hashable, item: ItemT, fn: Callable[[list[ItemT]], list[R]]) -> R:
        """``fn``'s result for ``item``, from a call this thread or another one makes."""
        seat: _Seat[ItemT, R] = _Seat(item)
        with self.cond:
            self.waiting.setdefault(key, []).append(seat)
            while not seat.done and (seat.taken or self.busy[key] >= self.slots):
                self.cond.wait()  # another caller's call carries this one, or no slot
            if seat.done:
                return seat.result
            batch = self._take(key)
        self._call(key, batch, fn, seat)
        return seat.result

    def put(self, key: Hashable, item: ItemT, fn: Callable[[list[ItemT]], list[R]],
            settled: Callable[[R | None, BaseException | None], None],
            executor: ThreadPoolExecutor) -> None:
        """Have ``fn`` called for ``item`` in a thread of ``executor``; ``settled`` gets
        the result, or the error the call raised, in that thread."""
        with self.cond:
            self.waiting.setdefault(key, []).append(_Seat(item, settled))
        executor.submit(self._drain, key, fn)

    def _drain(self, key: Hashable, fn: Callable[[list[ItemT]], list[R]]) -> None:
        """In an executor's thread: calls while callers wait and a slot is free (the
        drains of later ``put`` calls find nothing left)."""
        while True:
            with self.cond:
                if not self.waiting.get(key) or self.busy[key] >= self.slots:
                    return
                batch = self._take(key)
            self._call(key, batch, fn, None)

    def _take(self, key: Hashable) -> list[_Seat[ItemT, R]]:
        batch = self.waiting.pop(key)
        for seat in batch:
            seat.taken = True
        self.busy[key] += 1
        return batch

    def _call(self, key: Hashable, batch: list[_Seat[ItemT, R]],
              fn: Callable[[list[ItemT]], list[R]], caller: _Seat[ItemT, R] | None) -> None:
        """Call ``fn`` for ``batch``. If it raises, ``caller`` (a :meth:`run`) gets the
        error, so do ``put`` callers; other ``run`` callers wait for a slot again."""
        results: list[R] | None = None
        try:
            results = fn([seat.item for seat in batch])
        except BaseException as exc:
            for seat in batch:
                if seat.settled is not None:
                    seat.settled(None, exc)
            raise
        finally:
            with self.cond:
                self.busy[key] -= 1
                if not self.busy[key]:
                    del self.busy[key]
                if results is None:
                    again = [s for s in batch if s is not caller and s.settled is None]
                    for seat in again:
                        seat.taken = False
                    if again:
                        self.waiting[key] = again + self.waiting.get(key, [])
                else:
                    for seat, result in zip(batch, results, strict=True):
                        seat.result, seat.done = result, True
                self.cond.notify_all()
        for seat, result in zip(batch, results, strict=True):
            if seat.settled is not None:
                seat.settled(result, None)


class _Seat(Generic[ItemT, R]):
    __slots__ = ("done", "item", "result", "settled", "taken")

    def __init__(self, item: ItemT,
                 settled: Callable[[R | None, BaseException | None], None] | None = None,
                 ) -> None:
        self.item = item
        self.settled = settled
        self.done = self.taken = False
        self.result: R


ASYNC_THREADS = 2
"""Threads that run AsyncSession commits' work after commit (see :mod:`scrypath_sa.aio`),
each call carrying every commit waiting then (:class:`Together`): their waits overlap;
their Python work competes with the event loop (measured in docs/performance.md: with
6, 100 concurrent commits finished sooner and stalled the loop longer)."""

_async_pool: ThreadPoolExecutor | None = None
_async_pool_lock = threading.Lock()


def async_pool() -> ThreadPoolExecutor:
    """The process's ``scrypath-async`` threads, started on first use."""
    global _async_pool
    with _async_pool_lock:
        if _async_pool is None:
            _async_pool = ThreadPoolExecutor(max_workers=ASYNC_THREADS,
                                             thread_name_prefix="scrypath-async")
        return _async_pool
