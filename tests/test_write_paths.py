"""Every ORM and Core write path on a Searchable model through a configured session
records its events in the data's transaction: real PostgreSQL and SQLite, the real
OpenSearch node. Each case ends with the index equal to the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

import scrypath_sa
from scrypath_sa import sync_events
from tests.faults import assert_in_step, states
from tests.models import World, make_world


@pytest.fixture
def world(engine: Engine, index_prefix: str, backend: Any) -> World:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:  # rows 1-3 exist and are indexed
        session.add_all([w.Article(title=f"seed {i}") for i in (1, 2, 3)])  # keys 1-3
        session.commit()
    return w


def _upsert(session: Session, w: World) -> Any:
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(w.Article).values([{"id": 2, "title": "upserted"},
                                             {"id": 107, "title": "inserted by upsert"}])
    return session.execute(stmt.on_conflict_do_update(
        index_elements=["id"], set_={"title": stmt.excluded.title}))


def _upsert_nothing(session: Session, w: World) -> Any:
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    return session.execute(dialect.insert(w.Article).on_conflict_do_nothing(),
                           [{"id": 1, "title": "ignored"}, {"id": 108, "title": "new"}])


def _merge(session: Session, w: World) -> None:
    session.merge(w.Article(id=2, title="merged"))
    session.merge(w.Article(id=109, title="merged new"))


WRITES: list[tuple[str, Callable[[Session, World], Any]]] = [
    ("ORM bulk insert", lambda s, w: s.execute(
        insert(w.Article), [{"id": 104, "title": "bulk a"}, {"id": 105, "title": "bulk b"}])),
    ("ORM bulk insert with generated keys", lambda s, w: s.execute(
        insert(w.Article), [{"title": "generated a"}, {"title": "generated b"}])),
    ("ORM insert values", lambda s, w: s.execute(insert(w.Article).values(title="one"))),
    ("ORM insert from_select", lambda s, w: s.execute(
        insert(w.Article).from_select(["id", "title"], select(
            w.Article.id + 200, w.Article.title + " copy")))),
    ("upsert: ON CONFLICT DO UPDATE", _upsert),
    ("upsert: ON CONFLICT DO NOTHING", _upsert_nothing),
    ("bulk_insert_mappings", lambda s, w: s.bulk_insert_mappings(
        w.Article, [{"id": 110, "title": "mapping"}, {"title": "mapping, generated key"}])),
    ("bulk_save_objects", lambda s, w: s.bulk_save_objects(
        [w.Article(id=111, title="saved"), w.Article(title="saved, generated key")])),
    ("bulk_update_mappings", lambda s, w: s.bulk_update_mappings(
        w.Article, [{"id": 1, "title": "mapped update"}, {"id": 3, "title": "again"}])),
    ("Core insert of the table", lambda s, w: s.execute(
        w.Article.__table__.insert(), [{"id": 112, "title": "core"}, {"id": 113, "title": "b"}])),
    ("Core insert of the table, generated keys", lambda s, w: s.execute(
        w.Article.__table__.insert(), [{"title": "core gen"}, {"title": "core gen b"}])),
    ("Core update of the table", lambda s, w: s.execute(
        w.Article.__table__.update().where(w.Article.__table__.c.id >= 2)
        .values(title="core update"))),
    ("Core delete of the table", lambda s, w: s.execute(
        w.Article.__table__.delete().where(w.Article.__table__.c.id == 3))),
    ("ORM bulk update by key", lambda s, w: s.execute(
        update(w.Article), [{"id": 1, "title": "by key"}, {"id": 2, "title": "by key"}])),
    ("ORM update where", lambda s, w: s.execute(
        update(w.Article).where(w.Article.id > 1).values(title="where"))),
    ("ORM delete where", lambda s, w: s.execute(delete(w.Article).where(w.Article.id == 1))),
    ("merge", _merge),
]


@pytest.mark.parametrize(("path", "write"), WRITES, ids=[w[0] for w in WRITES])
def test_every_write_path_reaches_the_index(world: World, os_client: Any, path: str,
                                            write: Callable[[Session, World], Any]) -> None:
    with world.Session() as session:
        write(session, world)
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None and outcome.state == "completed", path
    assert set(states(world.engine)) == {"completed"}
    assert_in_step(world, os_client)


def test_a_rolled_back_bulk_write_records_nothing(world: World) -> None:
    with world.Session() as session:
        session.execute(insert(world.Article), [{"id": 120, "title": "never"}])
        session.bulk_insert_mappings(world.Article, [{"id": 121, "title": "never"}])
        session.rollback()
    with world.engine.connect() as conn:
        assert conn.execute(select(sync_events.c.document_id)
                            .where(sync_events.c.document_id.in_(["120", "121"]))).all() == []


def test_mark_changed_records_a_write_the_library_cannot_see(world: World,
                                                             os_client: Any) -> None:
    with world.Session() as session:
        session.execute(text("UPDATE articles SET title = 'raw' WHERE id IN (1, 2)"))
        scrypath_sa.mark_changed(session, world.Article, [1, 2])
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
    assert_in_step(world, os_client)


def test_a_plain_connection_on_the_same_pool_is_not_captured(world: World) -> None:
    """After a session ended, its pooled connection serves engine.begin(): that Core
    insert belongs to no session and records nothing."""
    with world.Session() as session:
        session.execute(insert(world.Article), [{"id": 130, "title": "session"}])
        session.commit()
    with world.engine.begin() as conn:
        conn.execute(world.Article.__table__.insert(), [{"id": 131, "title": "no session"}])
    with world.engine.connect() as conn:
        recorded = set(conn.execute(select(sync_events.c.document_id)).scalars())
    assert "130" in recorded and "131" not in recorded


@pytest.mark.parametrize(("path", "write"), WRITES, ids=[w[0] for w in WRITES])
def test_every_write_path_on_sqlite_with_the_embedded_backend(
        tmp_path: Any, path: str, write: Callable[[Session, World], Any]) -> None:
    """The newcomer's setup, no server at all: SQLite and the embedded backend."""
    from sqlalchemy import create_engine

    from scrypath_sa.backends import EmbeddedBackend

    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    backend = EmbeddedBackend(tmp_path / "search.sqlite3")
    w = make_world(engine, "embedded")
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        session.add_all([w.Article(title=f"seed {i}") for i in (1, 2, 3)])
        session.commit()
    with w.Session() as session:
        write(session, w)
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed", path
    with w.Session() as session:
        rows = {str(a.id): a.title for a in session.scalars(select(w.Article))}
    found = backend.documents("embedded_articles", list(rows))
    assert {i: hit[1]["title"] for i, hit in found.items() if hit} == rows
    assert backend.count("embedded_articles") == len(rows)
    backend.close()
    engine.dispose()


def test_statement_listeners_and_sql_logging_see_the_outbox_insert(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """On PostgreSQL a single-row commit's outbox INSERT goes straight to the driver's
    cursor, unless something watches the engine's statements: then it goes through
    SQLAlchemy, so that listeners (tracing, query counters) and SQL logging see it."""
    import logging

    from sqlalchemy import event

    seen: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(world.engine, "before_cursor_execute", spy)
    try:
        with world.Session() as session:
            session.add(world.Article(id=140, title="watched"))
            session.commit()
    finally:
        event.remove(world.engine, "before_cursor_execute", spy)
    assert any(s.lstrip().upper().startswith("INSERT INTO SYNC_EVENTS") for s in seen)
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"), \
            world.Session() as session:
        session.add(world.Article(id=141, title="logged"))
        session.commit()
    assert any("INSERT INTO sync_events" in r.getMessage() for r in caplog.records)
    assert set(states(world.engine)) == {"completed"}


def test_without_the_sync_tables_a_commit_fails_naming_the_fix_and_writes_nothing(
        world: World) -> None:
    """The outbox INSERT's error (raised by the driver on PostgreSQL's direct path)
    becomes the library's ConfigurationError; the data's transaction rolls back."""
    from scrypath_sa.errors import ConfigurationError

    sync_events.drop(world.engine)
    try:
        with world.Session() as session:
            session.add(world.Article(id=150, title="no outbox"))
            with pytest.raises(ConfigurationError, match="create_all"):
                session.commit()
        with world.engine.connect() as conn:
            assert conn.execute(select(world.Article.id).where(
                world.Article.id == 150)).all() == []
    finally:
        scrypath_sa.metadata.create_all(world.engine)
