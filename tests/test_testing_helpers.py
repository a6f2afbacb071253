"""scrypath_sa.testing: what our users test their apps with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

import scrypath_sa
from scrypath_sa import sync_events
from scrypath_sa.testing import InMemoryBackend, capture, drain, process_pending
from tests.models import make_world


def test_in_memory_backend_and_capture(engine: Engine, prefix: str) -> None:
    backend = InMemoryBackend()
    w = make_world(engine, prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with capture() as ops, w.Session() as session:
        session.add(w.Article(id=1, title="Hello running world"))
        session.commit()
        session.delete(session.get(w.Article, 1))
        session.add(w.Article(id=2, title="second"))
        session.commit()
    assert [(op.action, op.id) for op in ops] == [("index", "1"), ("delete", "1"),
                                                 ("index", "2")]
    assert ops[0].document is not None and ops[0].document["title"] == "Hello running world"
    with w.Session() as session:
        assert [a.id for a in scrypath_sa.search(session, w.Article, "second").items] == [2]


def test_process_pending_inside_a_test_transaction(engine: Engine, prefix: str,
                                                   scrypath_backend: Any) -> None:
    w = make_world(engine, prefix)
    if engine.dialect.name == "sqlite":
        # pysqlite needs SQLAlchemy's documented recipe for real SAVEPOINTs: without it
        # releasing the savepoint commits, and the test transaction would not exist.
        event.listen(engine, "connect",
                     lambda dbapi, _: setattr(dbapi, "isolation_level", None))
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        engine.dispose()
    connection = engine.connect()
    outer = connection.begin()  # the usual "wrap each test in a transaction" pattern
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    scrypath_sa.configure(session, backend=scrypath_backend, bind=engine)
    try:
        session.add(w.Article(id=1, title="inside a test transaction"))
        session.commit()  # only releases a savepoint: the data never really commits
        assert scrypath_backend.count(f"{prefix}_articles") == 0  # nothing reached it
        outcome = process_pending(session)
        assert outcome.states == {"completed": 1}
        assert scrypath_backend.count(f"{prefix}_articles") == 1
        state = session.execute(select(sync_events.c.state)).scalar_one()
        assert state == "completed"
    finally:
        session.close()
        outer.rollback()
        connection.close()
    with engine.connect() as conn:  # rolled back: no row, no event left behind
        assert conn.execute(select(sync_events.c.id)).all() == []


# ------------------------------------------------------------ recording, composed

def test_recording_backend_wraps_without_patching(engine: Engine, prefix: str) -> None:
    from scrypath_sa.backends import EmbeddedBackend
    from scrypath_sa.testing import RecordingBackend

    inner = InMemoryBackend()
    backend = RecordingBackend(inner)
    w = make_world(engine, prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        session.add(w.Article(id=1, title="recorded"))
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
    assert [(op.action, op.index, op.id) for op in backend.ops] == [
        ("index", f"{prefix}_articles", "1")]
    assert "bulk" not in vars(inner)  # the wrapped backend was not patched
    assert type(inner).bulk is EmbeddedBackend.bulk
    assert inner.count(f"{prefix}_articles") == 1  # the write reached it
    (status,) = scrypath_sa.status([w.Article]).models  # the operator part passes through
    assert status.documents == 1 and status.backend_error is None


def test_capture_restores_the_configured_backend(engine: Engine, prefix: str) -> None:
    backend = InMemoryBackend()
    w = make_world(engine, prefix)
    config = scrypath_sa.configure(w.Session, backend=backend)
    with capture() as ops:
        assert config.backend is not backend
    assert config.backend is backend and ops == []


# ---------------------------------------------------------- draining dramatiq mode

def on_stub_broker(engine: Engine, prefix: str, backend: Any) -> tuple[Any, Any]:
    """A world configured in dramatiq mode on Dramatiq's StubBroker, as a user's test."""
    from dramatiq.brokers.stub import StubBroker

    from scrypath_sa.modes.dramatiq import DramatiqMode

    w = make_world(engine, prefix)
    config = scrypath_sa.configure(
        w.Session, backend=backend, mode="dramatiq", backoff_base=0.05,
        modes={"dramatiq": DramatiqMode(StubBroker(), max_retries=3)})
    return w, config


def test_drain_runs_dramatiq_mode_work_to_completion(engine: Engine, prefix: str) -> None:
    backend = InMemoryBackend()
    w, config = on_stub_broker(engine, prefix, backend)
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"drained {i}") for i in range(1, 6)])
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "enqueued"
    assert backend.count(f"{prefix}_articles") == 0  # nothing written yet
    drain(config)
    assert backend.count(f"{prefix}_articles") == 5
    with engine.connect() as conn:
        assert set(conn.execute(select(sync_events.c.state)).scalars()) == {"completed"}


def test_drain_runs_the_retries_a_failure_scheduled(engine: Engine, prefix: str) -> None:
    from scrypath_sa.backends import BulkOp, ItemResult, ItemStatus
    from scrypath_sa.testing import RecordingBackend

    class BusyOnce(RecordingBackend):
        busy = True

        def bulk(self, ops: Sequence[BulkOp], *,
                 wait_for_visibility: bool) -> list[ItemResult]:
            if self.busy:
                self.busy = False
                return [ItemResult(ItemStatus.RETRYABLE, "http_503", "busy")] * len(ops)
            return super().bulk(ops, wait_for_visibility=wait_for_visibility)

    backend = BusyOnce(InMemoryBackend())
    w, config = on_stub_broker(engine, prefix, backend)
    with w.Session() as session:
        session.add(w.Article(id=1, title="retried"))
        session.commit()
    drain(config)
    with engine.connect() as conn:
        row = conn.execute(select(sync_events.c.state, sync_events.c.attempts)).one()
    assert tuple(row) == ("completed", 2)
    assert [op.id for op in backend.ops] == ["1"]  # the second attempt wrote it


def test_drain_says_what_it_needs(engine: Engine, prefix: str) -> None:
    from scrypath_sa.errors import ConfigurationError

    w = make_world(engine, prefix)
    config = scrypath_sa.configure(w.Session, backend=InMemoryBackend())
    with pytest.raises(ConfigurationError, match="drain\\(\\) runs a DramatiqMode"):
        drain(config, mode="inline")
