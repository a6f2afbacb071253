"""SharedRefresh's logic, on a backend that only records when refreshes ran (the real
refreshes are tested against OpenSearch in tests/test_sync_inline.py)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from scrypath_sa.visibility import SharedRefresh


class Clocked:
    """Records the start and end of each refresh; each takes ``takes`` seconds."""

    def __init__(self, takes: float = 0.002) -> None:
        self.takes = takes
        self.runs: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def refresh(self, index: str) -> None:
        began = time.monotonic()
        time.sleep(self.takes)
        with self.lock:
            self.runs.append((began, time.monotonic()))


def test_concurrent_callers_share_paced_refreshes_that_start_after_they_arrived() -> None:
    shared = SharedRefresh(pace=0.05)
    backend: Any = Clocked()
    served: list[tuple[float, float]] = []  # (arrived, returned)
    stop = time.monotonic() + 0.6

    def caller() -> None:
        while time.monotonic() < stop:
            arrived = time.monotonic()
            shared.refresh(backend, "i")
            served.append((arrived, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts = sorted(began for began, _ in backend.runs)
    # Paced: consecutive refreshes start at least a pace apart (a little slack for the
    # clock), so about 12 in 0.6 s, however many callers.
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.045, gaps
    assert len(starts) <= 0.6 / 0.05 + 2
    assert len(served) > 3 * len(starts)  # shared: many callers per refresh
    # Never early: every caller returned after a refresh that started after it arrived
    # had ended.
    for arrived, returned in served:
        assert any(arrived <= began and ended <= returned for began, ended in backend.runs), (
            arrived, returned)


def test_a_lone_caller_is_never_held_by_the_pace() -> None:
    shared = SharedRefresh(pace=0.05)
    backend: Any = Clocked(takes=0.001)
    began = time.monotonic()
    for _ in range(10):
        shared.refresh(backend, "i")
    # Ten refreshes back to back: ~10 ms, where pacing would have taken 450 ms or more.
    assert time.monotonic() - began < 0.3
    assert len(backend.runs) == 10


def test_a_failed_refresh_is_raised_and_the_next_caller_refreshes_again() -> None:
    shared = SharedRefresh(pace=0.0)

    class Flaky(Clocked):
        def refresh(self, index: str) -> None:
            if not self.runs:
                self.runs.append((0.0, 0.0))
                raise RuntimeError("cluster said no")
            super().refresh(index)

    backend: Any = Flaky()
    try:
        shared.refresh(backend, "i")
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure was swallowed")
    shared.refresh(backend, "i")
    assert len(backend.runs) == 2
