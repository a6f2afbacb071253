"""On psycopg, a transaction's events go with its COMMIT (one round trip): held until
the commit, written with it or not at all, and the commit's outcome names them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import scrypath_sa
from scrypath_sa import sync_events
from scrypath_sa.testing import InMemoryBackend
from tests.models import World, make_world


@pytest.fixture
def world(pg: Engine, prefix: str) -> World:
    w = make_world(pg, prefix)
    scrypath_sa.configure(w.Session, backend=InMemoryBackend(), mode="inline")
    return w


def recorded(world: World) -> list[Any]:
    with world.engine.connect() as conn:
        return conn.execute(select(sync_events.c.id, sync_events.c.model,
                                   sync_events.c.document_id, sync_events.c.pk,
                                   sync_events.c.operation, sync_events.c.mode)
                            .order_by(sync_events.c.id)).all()


def in_transaction(session: Session) -> int:
    return session.execute(select(func.count()).select_from(sync_events)).scalar_one()


def test_the_events_are_written_by_the_commit_and_named_by_its_outcome(world: World) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="one"))
        session.flush()
        assert in_transaction(session) == 0  # held for the COMMIT
        session.add_all([world.Article(id=2, title="two"), world.Article(id=3, title="3")])
        session.flush()
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    rows = recorded(world)
    assert [(r.model, r.document_id, r.pk, r.operation, r.mode) for r in rows] == [
        ("Article", str(i), [i], "upsert", "inline") for i in (1, 2, 3)]
    assert outcome is not None and sorted(outcome.event_ids) == [r.id for r in rows]
    assert outcome.states == {"completed": 3}

    with world.Session() as session:  # one event: the single-row statement
        session.delete(session.get(world.Article, 2))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    last = recorded(world)[-1]
    assert (last.document_id, last.operation) == ("2", "delete")
    assert outcome is not None and outcome.event_ids == [last.id]


def test_an_engine_configured_before_it_connects_records_with_its_commit(
        pg: Engine, prefix: str) -> None:
    """The COMMIT is met in the engine's dialect, even one configured before its first
    connection (whose first ROLLBACK runs on a connection the pool has not wrapped yet);
    the engine gets no event listeners of the library's, which SQLAlchemy would look up
    around every statement of the application's (about 25 us a single-row commit)."""
    world = make_world(pg, prefix)
    fresh = create_engine(pg.url.render_as_string(hide_password=False))
    try:
        factory = sessionmaker(fresh)
        scrypath_sa.configure(factory, backend=InMemoryBackend(), mode="inline")
        with factory() as session:
            session.add(world.Article(id=1, title="first"))
            session.flush()
            assert in_transaction(session) == 0  # held for the COMMIT
            session.commit()
            outcome = scrypath_sa.last_outcome(session)
        assert outcome is not None and outcome.states == {"completed": 1}
        assert [r.document_id for r in recorded(world)] == ["1"]
        assert not (fresh.dispatch.commit or fresh.dispatch.rollback
                    or fresh.dispatch.before_cursor_execute)
    finally:
        fresh.dispose()


def test_a_rollback_drops_what_was_held(world: World) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="never"))
        session.flush()
        session.rollback()
        session.add(world.Article(id=2, title="kept"))
        session.commit()
    assert [r.document_id for r in recorded(world)] == ["2"]


def test_a_savepoint_records_at_once_and_its_rollback_takes_its_events(world: World) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="before"))
        session.flush()
        with session.begin_nested() as savepoint:
            session.add(world.Article(id=2, title="inside"))
            session.flush()
            assert in_transaction(session) == 1  # written in the savepoint
            savepoint.rollback()
        with session.begin_nested():
            session.add(world.Article(id=3, title="released"))
        session.commit()
    assert sorted(r.document_id for r in recorded(world)) == ["1", "3"]


def test_an_outer_transaction_gets_its_events_at_once(world: World) -> None:
    """A session joined to a test's connection: the outer transaction decides, so the
    events are written with the flush, where that transaction can see them."""
    with world.engine.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        scrypath_sa.configure(session, backend=InMemoryBackend(), mode="inline")
        session.add(world.Article(id=1, title="in a test"))
        session.commit()
        assert conn.execute(select(func.count()).select_from(sync_events)).scalar_one() == 1
        session.close()
        outer.rollback()
    assert recorded(world) == []


def test_statement_listeners_see_the_insert(world: World) -> None:
    """Tracing and SQL logging see every statement: with a listener, the INSERT goes
    through SQLAlchemy with the flush."""
    seen: list[str] = []

    @event.listens_for(world.engine, "before_cursor_execute")
    def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    with world.Session() as session:
        session.add(world.Article(id=1, title="watched"))
        session.flush()
        assert in_transaction(session) == 1
        session.commit()
    assert any("INSERT INTO sync_events" in s for s in seen)


def test_a_failed_insert_fails_the_commit_and_keeps_the_connection_usable(
        world: World) -> None:
    """The INSERT fails at the COMMIT: the server skips the COMMIT, the data is not
    written, the error says why, and the pooled connection works afterwards."""
    with world.engine.begin() as conn:  # a constraint only this test's rows break
        conn.execute(text("ALTER TABLE sync_events ADD CONSTRAINT no_sevens "
                          "CHECK (document_id <> '7')"))
    with world.Session() as session:
        session.add(world.Article(id=7, title="refused"))
        with pytest.raises(IntegrityError, match="no_sevens"):
            session.commit()
        session.rollback()
        session.add(world.Article(id=8, title="fine"))
        session.commit()
    with world.engine.connect() as conn:
        titles = conn.execute(select(world.Article.title)).scalars().all()
    assert titles == ["fine"]
    assert [r.document_id for r in recorded(world)] == ["8"]


def test_a_commit_sent_by_hand_still_gets_its_events_written(world: World) -> None:
    """A COMMIT sent as SQL mid-transaction writes the data: its held events are
    written after it (alone), not lost."""
    with world.Session() as session:
        session.add(world.Article(id=1, title="committed by hand"))
        session.flush()
        session.execute(text("COMMIT"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert [r.document_id for r in recorded(world)] == ["1"]
    assert outcome is not None and len(outcome.event_ids) == 1


def test_a_connection_lost_at_the_commit_is_invalidated_and_the_pool_recovers(
        world: World) -> None:
    from sqlalchemy.exc import OperationalError

    with world.Session() as session:
        session.add(world.Article(id=1, title="lost"))
        session.flush()
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with world.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as raised:
            session.commit()
        assert raised.value.connection_invalidated
    with world.Session() as session:  # a fresh connection
        session.add(world.Article(id=2, title="next"))
        session.commit()
    assert [r.document_id for r in recorded(world)] == ["2"]


def test_several_models_and_flushes_in_one_transaction_are_all_written(world: World) -> None:
    """One statement per (model, flush) group, all in the COMMIT's pipeline."""
    with world.Session() as session:
        article = world.Article(id=1, title="a")
        article.comments = [world.Comment(id=10, body="c"), world.Comment(id=11, body="d")]
        session.add(article)
        session.add(world.Translation(article_id=1, lang="en", text="t"))
        session.flush()
        session.add(world.Article(id=2, title="b"))
        session.flush()
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    rows = recorded(world)
    assert sorted((r.model, r.pk) for r in rows) == [
        ("Article", [1]), ("Article", [2]), ("Comment", [10]), ("Comment", [11]),
        ("Translation", [1, "en"])]
    assert outcome is not None and sorted(outcome.event_ids) == [r.id for r in rows]


def test_values_that_need_quoting_arrive_as_they_were(world: World) -> None:
    """Quotes, backslashes and non-ASCII text in a key arrive unchanged through the
    COMMIT's pipeline, alone (VALUES) and in a group (one JSON array)."""
    tricky = ["o'k", "\\'x", "é\\n", "';--"]
    with world.Session() as session:
        session.add(world.Translation(article_id=1, lang=tricky[0], text="one"))
        session.flush()
        session.add_all([world.Translation(article_id=2, lang=lang, text="t")
                         for lang in tricky[1:]])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    rows = recorded(world)
    assert [r.pk for r in rows] == [[1, tricky[0]], *[[2, lang] for lang in tricky[1:]]]
    assert all(r.document_id.endswith(lang) for r, lang in zip(rows, tricky, strict=True))
    assert outcome is not None and sorted(outcome.event_ids) == [r.id for r in rows]
    assert outcome.states == {"completed": 4}


def test_process_pending_on_the_session_sees_its_held_events(world: World) -> None:
    """A test that flushes and processes inside its own transaction (never
    committing): ``process_pending(session)`` writes the held events first."""
    from scrypath_sa.testing import process_pending

    with world.Session() as session:
        session.add(world.Article(id=1, title="never committed"))
        session.flush()
        assert in_transaction(session) == 0
        outcome = process_pending(session)
        assert outcome.states == {"completed": 1}
        assert in_transaction(session) == 1
        session.rollback()
    assert recorded(world) == []
