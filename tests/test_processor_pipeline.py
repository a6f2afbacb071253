"""The processor's pipeline plumbing (pure logic) and its failure path on real services."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

import scrypath_sa
from scrypath_sa import State, sync_events, visibility
from scrypath_sa.threads import ahead
from scrypath_sa.visibility import Visibility
from tests.faults import states
from tests.models import make_world
from tests.test_modes import Hold


def test_ahead_yields_everything_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(ahead(items(), 3)) == list(range(50))
    assert threads == {"scrypath-read"}


def test_ahead_hands_the_producers_exception_to_the_caller() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise ValueError("the database went away")

    running = ahead(items(), 2)
    assert next(running) == 1
    with pytest.raises(ValueError, match="went away"):
        next(running)


def test_ahead_stops_the_producer_when_the_caller_stops() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1_000_000):
            produced.append(i)
            yield i

    for item in ahead(items(), 2):
        if item == 5:
            break
    # the generator was closed: its thread is gone and it stopped well short of the end
    assert not any(t.name == "scrypath-read" for t in threading.enumerate())
    assert len(produced) < 20


def held_events(engine: Engine, index_prefix: str, backend: Any,
                n: int) -> tuple[Any, list[int]]:
    """``n`` committed articles whose events wait in ``requested``, batches of two."""
    w = make_world(engine, index_prefix)
    config = scrypath_sa.configure(w.Session, backend=backend, batch_size=2, mode="hold",
                                   modes={"hold": Hold()})
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"doc {i}") for i in range(1, n + 1)])
        session.commit()
    with engine.connect() as conn:
        ids = list(conn.execute(select(sync_events.c.id).order_by(sync_events.c.id)).scalars())
    return config, ids


def test_a_failure_while_reading_rows_keeps_what_was_already_written(
        engine: Engine, index_prefix: str, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails part way (here: reading the third batch's rows) records every
    outcome it got; the events it claimed but never wrote stay ``processing`` for the
    claim expiry to hand back, nothing reads ``completed`` that was not written."""
    from scrypath_sa import processor

    config, ids = held_events(engine, index_prefix, backend, 8)

    real = processor.load_documents
    calls = 0

    def flaky(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("connection reset while reading rows")
        return real(*args)

    monkeypatch.setattr(processor, "load_documents", flaky)
    with pytest.raises(RuntimeError, match="connection reset"):
        processor.process(config, ids, mode="manual", visibility=Visibility.NONE)
    with engine.connect() as conn:
        states = dict(conn.execute(select(sync_events.c.document_id, sync_events.c.state)).all())
    assert [states[str(i)] for i in range(1, 9)] == (
        [State.BACKEND_ACCEPTED.value] * 4 + [State.PROCESSING.value] * 4)


def test_an_error_while_sending_stops_the_reader_thread_at_once(
        engine: Engine, index_prefix: str, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller still holds the traceback (and with it the run's frame): the reader
    thread must be gone anyway, not parked until the traceback is dropped."""
    from scrypath_sa import pipeline, processor

    config, ids = held_events(engine, index_prefix, backend, 20)

    real = pipeline.Writer.submit
    calls = 0

    def failing(self: Any, prepared: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the backend client blew up")
        real(self, prepared)

    monkeypatch.setattr(pipeline.Writer, "submit", failing)
    with pytest.raises(RuntimeError, match="blew up") as excinfo:
        processor.process(config, ids, mode="manual", visibility=Visibility.NONE)
    assert excinfo.traceback  # still referenced here
    assert not any(t.name == "scrypath-read" and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def gated_backend(opensearch_url: str) -> Iterator[Any]:
    """A real OpenSearch backend whose refreshes wait until ``backend.release`` is set
    (``backend.entered`` says one is waiting); ``backend.refreshes`` counts them.
    Released at teardown whatever happened: a failed test must not leave the process's
    confirmer waiting for the next one."""
    from scrypath_sa.backends import OpenSearchBackend

    class GatedRefresh(OpenSearchBackend):
        refreshes = 0
        entered, release = threading.Event(), threading.Event()

        def refresh(self, alias: str) -> None:
            self.refreshes += 1
            self.entered.set()
            assert self.release.wait(30)
            super().refresh(alias)

    backend = GatedRefresh(opensearch_url)
    yield backend
    backend.release.set()
    visibility.flush_confirmations(30)


def test_confirm_later_runs_share_refreshes_and_end_completed(
        engine: Engine, index_prefix: str, gated_backend: Any, os_client: Any) -> None:
    """Worker runs (``confirm_later``) return once their writes are accepted; the
    process's confirmer refreshes once for many of them and records them completed."""
    from scrypath_sa import processor

    backend = gated_backend  # held until every run has returned
    config, ids = held_events(engine, index_prefix, backend, 12)
    outcomes: list[Any] = []
    runs = [threading.Thread(target=lambda chunk=ids[i:i + 2]: outcomes.append(
        processor.process(config, chunk, mode="dramatiq", visibility=Visibility.DEFERRED)))
        for i in range(0, 12, 2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    # every run returned while the refresh was held: accepted, not yet visible
    assert [o.states for o in outcomes] == [{"backend_accepted": 2}] * 6, [
        o.failures for o in outcomes]
    with engine.connect() as conn:
        assert set(conn.execute(select(sync_events.c.state)).scalars()) == {"processing"}
    backend.release.set()
    assert visibility.flush_confirmations(30)
    with engine.connect() as conn:
        assert set(conn.execute(select(sync_events.c.state)).scalars()) == {"completed"}
    assert backend.refreshes <= 2  # one for the first run(s) it took, one for the rest
    assert os_client.count(index=f"{index_prefix}_articles")["count"] == 12


def test_confirm_later_with_a_failed_refresh_records_backend_accepted(
        engine: Engine, index_prefix: str, opensearch_url: str) -> None:
    from scrypath_sa import processor
    from scrypath_sa.backends import OpenSearchBackend
    from scrypath_sa.errors import BackendError

    class NoRefresh(OpenSearchBackend):
        def refresh(self, alias: str) -> None:
            raise BackendError("refresh timed out")

    config, ids = held_events(engine, index_prefix, NoRefresh(opensearch_url), 4)
    processor.process(config, ids, mode="dramatiq", visibility=Visibility.DEFERRED)
    assert visibility.flush_confirmations(30)
    with engine.connect() as conn:
        assert set(conn.execute(select(sync_events.c.state)).scalars()) == {
            "backend_accepted"}


def test_sweep_confirms_accepted_writes_whose_refresh_failed(
        engine: Engine, index_prefix: str, opensearch_url: str, os_client: Any) -> None:
    """Writes accepted by a worker whose refresh failed stay ``backend_accepted`` (the
    worker cannot tell they are visible). sweep() checks them as confirm() does: found
    at their version -> completed; lost -> written again. Manual mode's accepted writes
    are its caller's to confirm: sweep leaves them."""
    from scrypath_sa import processor
    from scrypath_sa.backends import OpenSearchBackend
    from scrypath_sa.backends.base import OK
    from scrypath_sa.errors import BackendError

    class BrokenRefresh(OpenSearchBackend):
        """Refreshes fail; while broken, the write of document 2 is acknowledged and
        lost (a node that died before its translog reached the disk, no replica)."""

        broken = True

        def refresh(self, alias: str) -> None:
            if self.broken:
                raise BackendError("refresh timed out")
            super().refresh(alias)

        def bulk(self, ops: Any, *, wait_for_visibility: bool) -> Any:
            if not self.broken:
                return super().bulk(ops, wait_for_visibility=wait_for_visibility)
            kept = [op for op in ops if op.id != "2"]
            answers = iter(super().bulk(kept, wait_for_visibility=wait_for_visibility))
            return [next(answers) if op.id != "2" else OK for op in ops]

    backend = BrokenRefresh(opensearch_url)
    config, ids = held_events(engine, index_prefix, backend, 5)
    processor.process(config, ids[:4], mode="inline", visibility=Visibility.DEFERRED)
    processor.process(config, ids[4:], mode="manual", visibility=Visibility.NONE)
    assert visibility.flush_confirmations(30)
    assert states(engine) == {"backend_accepted": 5}
    backend.broken = False

    report = scrypath_sa.sweep(config, older_than=dt.timedelta(0))
    assert (report.confirmed, report.dispatched) == (3, 1)
    assert report.to_dict()["confirmed"] == 3
    with engine.connect() as conn:
        by_doc = dict(conn.execute(select(sync_events.c.document_id, sync_events.c.state)).all())
    assert by_doc == {"1": "completed", "2": "completed", "3": "completed",
                      "4": "completed", "5": "backend_accepted"}
    assert os_client.exists(index=f"{index_prefix}_articles", id="2")


def test_a_dramatiq_worker_shutting_down_records_what_it_made_visible(
        engine: Engine, index_prefix: str, gated_backend: Any) -> None:
    """Dramatiq's forked worker processes skip atexit handlers: the mode's middleware
    waits for the pending confirmations when the worker stops."""
    from dramatiq.brokers.stub import StubBroker

    from scrypath_sa import processor
    from scrypath_sa.modes.dramatiq import DramatiqMode

    broker = StubBroker()
    DramatiqMode(broker, queue_name=f"q{index_prefix}")
    DramatiqMode(broker, queue_name=f"q{index_prefix}", actor_name="another")  # same broker
    hooks = [m for m in broker.middleware if hasattr(m, "after_worker_shutdown")
             and type(m).__module__ == "scrypath_sa.modes.dramatiq"]
    assert len(hooks) == 1
    backend = gated_backend
    config, ids = held_events(engine, index_prefix, backend, 2)
    processor.process(config, ids, mode="dramatiq", visibility=Visibility.DEFERRED)
    shutdown = threading.Thread(target=hooks[0].after_worker_shutdown, args=(broker, None))
    shutdown.start()
    shutdown.join(0.2)
    assert shutdown.is_alive()  # still waiting for the refresh it needs
    backend.release.set()
    shutdown.join(30)
    assert not shutdown.is_alive()
    with engine.connect() as conn:
        assert set(conn.execute(select(sync_events.c.state)).scalars()) == {"completed"}


def test_a_confirmation_that_fails_for_one_database_leaves_the_others_alone(
        engine: Engine, index_prefix: str, gated_backend: Any) -> None:
    from sqlalchemy import create_engine

    from scrypath_sa import processor
    from scrypath_sa.outbox import Transition

    backend = gated_backend
    config, ids = held_events(engine, index_prefix, backend, 4)
    run = dict(mode="dramatiq", visibility=Visibility.DEFERRED)
    processor.process(config, ids[:2], **run)
    assert backend.entered.wait(30)  # the confirmer took that run alone, holds its refresh
    dead = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    visibility.confirmer.put((config.backend, dead, {
        f"{index_prefix}_articles": [Transition(10**9, State.BACKEND_ACCEPTED, "upsert")]}))
    processor.process(config, ids[2:], **run)  # same batch as the dead database's
    backend.release.set()
    assert visibility.flush_confirmations(30)
    with engine.connect() as conn:
        assert set(conn.execute(select(sync_events.c.state)).scalars()) == {"completed"}
