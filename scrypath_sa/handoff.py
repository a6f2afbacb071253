"""Work handed to one background thread per owner, started when first needed.

The ``dramatiq`` mode's relay (sends and ``enqueued`` marks) and the processor's
confirmer (refreshes and ``completed``) both work this way; they differ only in how
their thread batches what it takes.
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


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
