"""Together's logic (group commit), with plain functions: the commits that share runs
are tested against PostgreSQL and OpenSearch in tests/test_sync_inline.py and
tests/test_async.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from scrypath_sa.threads import Together


class Held:
    """``fn`` for a Together: records each call's items (sorted); the call for ``[1]``
    holds until :attr:`release` is set (:attr:`inside` says it is held); a call for
    which ``fails(items)`` is true raises ``error``."""

    def __init__(self, fails: Callable[[list[int]], bool] = lambda items: False,
                 error: BaseException | None = None) -> None:
        self.calls: list[list[int]] = []
        self.inside, self.release = threading.Event(), threading.Event()
        self.fails, self.error = fails, error

    def __call__(self, items: list[int]) -> list[str]:
        self.calls.append(sorted(items))
        if items == [1]:
            self.inside.set()
            assert self.release.wait(5)
        if self.error is not None and self.fails(items):
            raise self.error
        return [f"r{i}" for i in items]


def _wait_until_waiting(together: Together[int, str], key: str, n: int) -> None:
    """Until ``n`` callers wait under ``key`` (their state, polled; bounded)."""
    deadline = time.monotonic() + 5
    while True:
        with together.cond:
            if len(together.waiting.get(key, [])) >= n:
                return
        assert time.monotonic() < deadline, "the callers never came to wait"
        time.sleep(0.001)


def _threads_run(together: Together[int, str], fn: Held, later: tuple[int, ...],
                 ) -> dict[int, str]:
    """Caller 1 calls (held); callers ``later`` arrive and wait; then 1 is released.
    Each caller's result, or "interrupted"."""
    results: dict[int, str] = {}

    def caller(i: int) -> None:
        try:
            results[i] = together.run("k", i, fn)
        except KeyboardInterrupt:
            results[i] = "interrupted"

    first = threading.Thread(target=caller, args=(1,))
    first.start()
    assert fn.inside.wait(5)
    others = [threading.Thread(target=caller, args=(i,)) for i in later]
    for thread in others:
        thread.start()
    _wait_until_waiting(together, "k", len(later))
    fn.release.set()
    for thread in [first, *others]:
        thread.join(5)
    return results


def test_callers_arriving_during_a_call_share_the_next_and_each_gets_its_own_result(
        ) -> None:
    together: Together[int, str] = Together(slots=1)
    fn = Held()
    results = _threads_run(together, fn, (2, 3, 4))
    assert fn.calls == [[1], [2, 3, 4]]  # one call for the three that waited
    assert results == {1: "r1", 2: "r2", 3: "r3", 4: "r4"}
    assert together.run("k", 5, fn) == "r5"  # a lone caller calls at once
    assert together.run("other key", 9, fn) == "r9"
    assert together.waiting == {} and not +together.busy


def test_when_a_call_raises_its_caller_gets_the_error_and_the_others_run_again() -> None:
    together: Together[int, str] = Together(slots=1)
    # Not an Exception: nothing in between may swallow it.
    fn = Held(fails=lambda items: len(items) > 1, error=KeyboardInterrupt())
    results = _threads_run(together, fn, (2, 3))
    # The two that waited shared a call that raised: its caller got the error, the
    # other one ran again on its own and got its result.
    assert fn.calls[:2] == [[1], [2, 3]] and len(fn.calls) == 3
    [alone] = fn.calls[2]
    assert results[1] == "r1" and results[alone] == f"r{alone}"
    assert results[5 - alone] == "interrupted"
    assert together.waiting == {} and not +together.busy


@pytest.mark.parametrize("slots", [1, 2])
def test_no_more_calls_in_flight_than_slots(slots: int) -> None:
    together: Together[int, int] = Together(slots=slots)
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    def fn(items: list[int]) -> list[int]:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.002)  # a call that takes a moment, so that callers pile up
        with lock:
            in_flight[0] -= 1
        return items

    got: list[int] = []
    threads = [threading.Thread(target=lambda i=i: got.append(together.run("k", i, fn)))
               for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(got) == list(range(40))
    assert in_flight[1] <= slots


def test_put_callers_are_carried_by_the_executors_thread_and_hear_results_or_errors(
        ) -> None:
    """An event loop's callers: ``put`` returns at once; the executor's thread makes
    one call for the items that arrived while a call was in flight, and hands each
    callback its own result, or the error the call raised."""
    together: Together[int, str] = Together(slots=1)
    fn = Held(fails=lambda items: 4 in items, error=RuntimeError("backend gone"))
    heard: dict[int, tuple[str | None, str | None]] = {}
    three_heard, all_heard = threading.Event(), threading.Event()

    def settled(i: int) -> Callable[[str | None, BaseException | None], None]:
        def hear(result: str | None, exc: BaseException | None) -> None:
            heard[i] = (result, None if exc is None else str(exc))
            if len(heard) == 3:
                three_heard.set()
            if len(heard) == 5:
                all_heard.set()
        return hear

    with ThreadPoolExecutor(max_workers=1) as executor:
        together.put("k", 1, fn, settled(1), executor)
        assert fn.inside.wait(5)
        for i in (2, 3):
            together.put("k", i, fn, settled(i), executor)
        fn.release.set()
        assert three_heard.wait(5)
        together.put("k", 4, fn, settled(4), executor)
        together.put("k", 5, fn, settled(5), executor)
        assert all_heard.wait(5)
    assert fn.calls[:2] == [[1], [2, 3]], fn.calls
    assert heard[1] == ("r1", None) and heard[2] == ("r2", None) and heard[3] == ("r3", None)
    assert heard[4] == (None, "backend gone")
    assert heard[5] in {("r5", None), (None, "backend gone")}  # alone, or with 4
    assert together.waiting == {} and not +together.busy
