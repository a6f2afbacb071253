"""scrypath_sa.testing: what our users test their apps with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

import scrypath_sa
from scrypath_sa import sync_events
from scrypath_sa.testing import InMemoryBackend, capture, process_pending
from tests.models import make_world


def test_in_memory_backend_and_capture(engine: Engine, index_prefix: str) -> None:
    backend = InMemoryBackend()
    w = make_world(engine, index_prefix)
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


def test_process_pending_inside_a_test_transaction(engine: Engine, index_prefix: str,
                                                   scrypath_backend: Any) -> None:
    w = make_world(engine, index_prefix)
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
        assert scrypath_backend.count(f"{index_prefix}_articles") == 0  # nothing reached it
        outcome = process_pending(session)
        assert outcome.states == {"completed": 1}
        assert scrypath_backend.count(f"{index_prefix}_articles") == 1
        state = session.execute(select(sync_events.c.state)).scalar_one()
        assert state == "completed"
    finally:
        session.close()
        outer.rollback()
        connection.close()
    with engine.connect() as conn:  # rolled back: no row, no event left behind
        assert conn.execute(select(sync_events.c.id)).all() == []
