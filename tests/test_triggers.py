"""Capture by trigger (``__search_capture__ = "trigger"``, PostgreSQL): the table records
every write in ``sync_events``, a ``dramatiq`` session leaves its rows to the trigger and
wakes the workers, a session in another mode records its own and the trigger stands
aside; against a real PostgreSQL, Redis and a real worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, Float, String, create_engine, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import scrypath_sa
from scrypath_sa import documents, sync_events, triggers
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.modes.dramatiq import DramatiqMode
from scrypath_sa.testing import InMemoryBackend
from tests.faults import Workers, all_terminal, states, wait_for
from tests.models import World, make_broker, make_world


def recorded(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(sync_events.c.model, sync_events.c.document_id,
                                   sync_events.c.pk, sync_events.c.operation,
                                   sync_events.c.mode, sync_events.c.state)
                            .order_by(sync_events.c.id)).all()


def test_the_trigger_records_writes_no_session_sees(pg: Engine, prefix: str) -> None:
    """Raw SQL writes: inserts, updates that change the row, deletes; a composite key
    gets the document id the library computes; an UPDATE that changes nothing, none."""
    world = make_world(pg, prefix, capture="trigger")
    with pg.begin() as conn:
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "VALUES (7, 'raw', '0', true)"))
        conn.execute(text("INSERT INTO translations (article_id, lang, text) "
                          "VALUES (7, 'a:b%', 'x')"))
    with pg.begin() as conn:
        conn.execute(text("UPDATE articles SET title = 'changed' WHERE id = 7"))
        conn.execute(text("UPDATE articles SET title = 'changed' WHERE id = 7"))  # same
        conn.execute(text("DELETE FROM translations"))
    composite = documents.pk_document_id([7, "a:b%"])
    assert composite == "7:a%3Ab%25"
    assert recorded(world.engine) == [
        ("Article", "7", [7], "upsert", "dramatiq", "requested"),
        ("Translation", composite, [7, "a:b%"], "upsert", "dramatiq", "requested"),
        ("Article", "7", [7], "upsert", "dramatiq", "requested"),
        ("Translation", composite, [7, "a:b%"], "delete", "dramatiq", "requested"),
    ]
    with pg.begin() as conn:  # nothing is recorded for a write that rolls back
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "VALUES (8, 'gone', '0', true)"))
        conn.rollback()
    assert len(recorded(world.engine)) == 4


def test_one_statement_of_many_rows_records_each_written_row_once(
        pg: Engine, prefix: str) -> None:
    """Statements of many rows: a 500-row INSERT records 500 events, an UPDATE only
    the rows it changed, a key change an upsert of the new key, an INSERT ... ON
    CONFLICT DO UPDATE each row it inserted or changed, an INSERT of no rows nothing."""
    world = make_world(pg, prefix, capture="trigger")
    with pg.begin() as conn:
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "SELECT g, 't' || g, '0', true FROM generate_series(1, 500) g"))
        conn.execute(text("UPDATE articles SET title = 'even' WHERE id % 2 = 0"))
        conn.execute(text("UPDATE articles SET title = title WHERE id <= 10"))
        conn.execute(text("UPDATE articles SET id = 1000 WHERE id = 1"))
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "VALUES (3, 'upserted', '0', true), (2000, 'new', '0', true) "
                          "ON CONFLICT (id) DO UPDATE SET title = excluded.title"))
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "SELECT id, title, views, published FROM articles WHERE false"))
    rows = recorded(world.engine)
    assert len(rows) == 500 + 250 + 1 + 2
    assert sorted(int(r.document_id) for r in rows[:500]) == list(range(1, 501))
    assert sorted(int(r.document_id) for r in rows[500:750]) == list(range(2, 501, 2))
    assert (rows[750].document_id, rows[750].operation) == ("1000", "upsert")
    assert sorted((r.document_id, r.operation) for r in rows[751:]) == [
        ("2000", "upsert"), ("3", "upsert")]


def test_a_session_in_another_mode_records_its_own_and_the_trigger_stands_aside(
        pg: Engine, prefix: str) -> None:
    """``inline`` waits for its own events, so it records them (named, completed) and the
    trigger writes nothing for that transaction; outside it, the trigger records again."""
    world = make_world(pg, prefix, capture="trigger")
    backend = InMemoryBackend()
    scrypath_sa.configure(world.Session, backend=backend, mode="inline")
    with world.Session() as session:
        session.add(world.Article(id=1, title="inline"))
        session.add(world.Translation(article_id=1, lang="en", text="t"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None and outcome.state == "completed"
    assert len(outcome.event_ids) == 2 and outcome.unnamed == 0
    assert [(r.model, r.mode, r.state) for r in recorded(world.engine)] == [
        ("Article", "inline", "completed"), ("Translation", "inline", "completed")]
    with pg.begin() as conn:
        conn.execute(text("UPDATE articles SET title = 'by hand' WHERE id = 1"))
    assert [(r.model, r.mode, r.state) for r in recorded(world.engine)][-1] == (
        "Article", "dramatiq", "requested")


@pytest.fixture
def dramatiq_world(pg: Engine, prefix: str, redis_url: str, opensearch_url: str,
                   tmp_path: Path) -> Iterator[tuple[World, Workers]]:
    world = make_world(pg, prefix, capture="trigger")
    queue = f"q{prefix}"
    broker = make_broker(redis_url)
    scrypath_sa.configure(world.Session, backend=InMemoryBackend(), mode="dramatiq",
                          modes={"dramatiq": DramatiqMode(broker, queue_name=queue)})
    workers = Workers(tmp_path, {
        "SCRYPATH_TEST_PREFIX": prefix, "SCRYPATH_TEST_BROKER_URL": redis_url,
        "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url,
        "SCRYPATH_TEST_DATABASE_URL": pg.url.render_as_string(hide_password=False),
        "SCRYPATH_TEST_QUEUE": queue, "SCRYPATH_TEST_CAPTURE": "trigger"})
    yield world, workers
    workers.stop_all()
    assert isinstance(broker, RedisBroker)
    broker.client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.DQ", f"dramatiq:{queue}.XQ")
    broker.close()


def test_a_dramatiq_session_leaves_its_rows_to_the_trigger_and_a_worker_writes_them(
        dramatiq_world: Any, os_client: Any) -> None:
    world, workers = dramatiq_world
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"by trigger {i}") for i in (1, 2, 3)])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None
    assert (outcome.mode, outcome.state, outcome.event_ids, outcome.unnamed) == (
        "dramatiq", "enqueued", [], 3)
    assert "3 recorded by triggers" in outcome.describe()
    with world.engine.begin() as conn:  # a write no session sees: the next wake takes it
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "VALUES (4, 'raw sql', '0', true)"))
    with world.Session() as session:
        session.get(world.Article, 1).title = "changed"
        session.commit()
    assert [r.mode for r in recorded(world.engine)] == ["dramatiq"] * 5
    workers.start()
    wait_for(all_terminal(world.engine), "the worker to finish")
    assert states(world.engine) == {"completed": 5}, workers.logs()
    alias = f"{world.prefix}_articles"
    os_client.indices.refresh(index=alias)
    hits = os_client.search(index=alias, body={"query": {"match_all": {}}, "size": 10})
    assert {h["_id"]: h["_source"]["title"] for h in hits["hits"]["hits"]} == {
        "1": "changed", "2": "by trigger 2", "3": "by trigger 3", "4": "raw sql"}


def test_a_flush_of_many_statements_is_recorded_by_the_session_and_its_transaction_stays_so(
        dramatiq_world: Any, os_client: Any) -> None:
    """A flush sending SESSION_RECORDS_FROM statements or more (a trigger runs once
    per statement): one set-based INSERT beats as many trigger runs, so the session
    records them (named events) and the triggers stand aside for the rest of the
    transaction: a small flush after it is recorded by the session too, never left to
    triggers that write nothing. The next transaction's small flush goes back to the
    trigger. As many new rows whose keys the database makes are one INSERT statement,
    recorded set-based by the statement trigger: they stay with it. No row is recorded
    twice or lost."""
    world, workers = dramatiq_world
    many = triggers.SESSION_RECORDS_FROM
    with world.Session() as session:  # keys by the database: one INSERT ... RETURNING
        new = [world.Article(title=f"many {i}") for i in range(many)]
        session.add_all(new)
        session.commit()
        inserted = scrypath_sa.last_outcome(session)
        keys = sorted(a.id for a in new)
    with world.Session() as session:  # an UPDATE statement per row
        for article in session.scalars(select(world.Article)):
            article.title = f"changed {article.id}"
        session.flush()
        session.add(world.Article(id=1000, title="after"))
        session.commit()
        large = scrypath_sa.last_outcome(session)
    with world.Session() as session:
        session.add(world.Article(id=2000, title="small"))
        session.commit()
        small = scrypath_sa.last_outcome(session)
    with world.Session() as session:
        session.bulk_update_mappings(world.Article, [
            {"id": i, "title": f"bulk {i}"} for i in keys])
        session.commit()
        bulk_update = scrypath_sa.last_outcome(session)
    with world.Session() as session:  # keys given: psycopg sends an INSERT per row
        session.add_all([world.Article(id=3000 + i, title=f"keyed {i}") for i in range(many)])
        session.commit()
        keyed = scrypath_sa.last_outcome(session)
    assert inserted is not None and large is not None and small is not None
    assert bulk_update is not None and keyed is not None
    assert (inserted.event_ids, inserted.unnamed) == ([], many)
    assert (len(large.event_ids), large.unnamed, large.state) == (many + 1, 0, "enqueued")
    assert (small.event_ids, small.unnamed, small.state) == ([], 1, "enqueued")
    assert (len(bulk_update.event_ids), bulk_update.unnamed) == (many, 0)
    if world.engine.dialect.use_insertmanyvalues_wo_returning:  # psycopg2: one statement
        assert (keyed.event_ids, keyed.unnamed) == ([], many)
    else:
        assert (len(keyed.event_ids), keyed.unnamed) == (many, 0)
    assert sorted(int(r.document_id) for r in recorded(world.engine)) == sorted(
        [*keys, *keys, *keys, 1000, 2000, *range(3000, 3000 + many)])
    workers.start()
    wait_for(all_terminal(world.engine), "the worker to finish")
    assert states(world.engine) == {"completed": 4 * many + 2}, workers.logs()
    alias = f"{world.prefix}_articles"
    os_client.indices.refresh(index=alias)
    assert os_client.count(index=alias)["count"] == 2 * many + 2
    found = os_client.search(index=alias, body={"query": {"match": {"title": "bulk"}},
                                                 "size": 0})
    assert found["hits"]["total"]["value"] == many  # the bulk updates' titles arrived


def test_running_ddl_again_replaces_an_older_versions_two_triggers(
        pg: Engine, prefix: str) -> None:
    """A table with an older version's capture (one row trigger for INSERT and DELETE,
    one for UPDATE) is not taken for installed: sessions record meanwhile and status
    says to run ``ddl`` again, which replaces it without leaving a trigger that records
    twice."""
    world = make_world(pg, prefix, capture="trigger")
    names = triggers._names(world.Article.__table__, None)
    with pg.begin() as conn:
        conn.execute(text(f"DROP TRIGGER {names['insert']} ON articles"))
        conn.execute(text(f"DROP TRIGGER {names['delete']} ON articles"))
        conn.execute(text(f"CREATE TRIGGER {names['insert']} AFTER INSERT OR DELETE ON "
                          f"articles FOR EACH ROW EXECUTE FUNCTION {names['row_function']}()"))
        assert not triggers.installed(conn, world.Article)
    triggers.install(pg, [world.Article])
    with pg.begin() as conn:
        assert triggers.installed(conn, world.Article)
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "VALUES (1, 'a', '0', true), (2, 'b', '0', true)"))
        conn.execute(text("DELETE FROM articles WHERE id = 1"))
    assert [(r.document_id, r.operation) for r in recorded(world.engine)] == [
        ("1", "upsert"), ("2", "upsert"), ("1", "delete")]


def test_orm_statements_and_bulk_methods_are_left_to_the_trigger(
        dramatiq_world: Any) -> None:
    """``update()`` by WHERE and ``bulk_insert_mappings`` in a ``dramatiq`` session: the
    trigger records each row once, the outcome counts the rows written."""
    world, _ = dramatiq_world
    with world.Session() as session:
        session.bulk_insert_mappings(world.Article, [
            {"id": i, "title": f"bulk {i}", "views": "0", "published": True}
            for i in (1, 2, 3)])
        session.commit()
        assert scrypath_sa.last_outcome(session).unnamed == 3
        session.execute(update(world.Article).where(world.Article.id < 3)
                        .values(title="renamed"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None and (outcome.unnamed, outcome.state) == (2, "enqueued")
    assert [(r.document_id, r.operation) for r in recorded(world.engine)] == [
        ("1", "upsert"), ("2", "upsert"), ("3", "upsert"), ("1", "upsert"), ("2", "upsert")]


def test_missing_triggers_are_noticed_the_session_records_meanwhile_and_status_says_so(
        dramatiq_world: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Triggers never created (or dropped): a ``dramatiq`` session does not leave its
    rows to nothing. It records them itself (named events), the log says what to run,
    and ``status`` calls it a problem."""
    world, _ = dramatiq_world
    with world.engine.begin() as conn:
        for sql in triggers.drop_ddl(world.Article):
            conn.execute(text(sql))
    with caplog.at_level("WARNING", logger="scrypath_sa"), world.Session() as session:
        session.add(world.Article(id=1, title="kept"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None and len(outcome.event_ids) == 1 and outcome.unnamed == 0
    assert "triggers.ddl(Article)" in caplog.text
    assert [(r.mode, r.state) for r in recorded(world.engine)] == [("dramatiq", "requested")]
    report = scrypath_sa.status([world.Article, world.Translation])
    article, translation = report.models
    assert article.capture_trigger_missing and not translation.capture_trigger_missing
    assert any("capture triggers are missing or out of date" in p
               for p in article.problems)
    assert report.needs_attention


def test_a_broker_that_refuses_the_wake_leaves_them_requested_and_says_so(
        pg: Engine, prefix: str) -> None:
    world = make_world(pg, prefix, capture="trigger")
    broker = make_broker("redis://127.0.0.1:1/0")  # nothing listens there
    scrypath_sa.configure(world.Session, backend=InMemoryBackend(), mode="dramatiq",
                          modes={"dramatiq": DramatiqMode(broker, queue_name=f"q{prefix}")})
    with world.Session() as session:
        session.add(world.Article(id=1, title="waits"))
        session.commit()  # the data commits
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None
    assert (outcome.state, outcome.unnamed) == ("requested", 1)
    assert outcome.error is not None and "broker" in outcome.error
    assert states(world.engine) == {"requested": 1}


def test_search_fields_limit_which_updates_are_recorded(pg: Engine, prefix: str) -> None:
    class Base(DeclarativeBase):
        pass

    class Product(scrypath_sa.Searchable, Base):
        __tablename__ = "products"
        __search_index__ = f"{prefix}_products"
        __search_capture__ = "trigger"
        __search_fields__ = ("name",)
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        stock: Mapped[int] = mapped_column(default=0)

    Base.metadata.create_all(pg)
    scrypath_sa.metadata.create_all(pg)
    triggers.install(pg, [Product])
    with pg.begin() as conn:
        conn.execute(text("INSERT INTO products (id, name, stock) VALUES (1, 'a', 0)"))
        conn.execute(text("UPDATE products SET stock = 5"))  # not in the document
        conn.execute(text("UPDATE products SET name = 'b'"))
    assert [r.operation for r in recorded(pg)] == ["upsert", "upsert"]
    with pg.begin() as conn:  # and the triggers go away again (as a migration would)
        for sql in triggers.drop_ddl(Product):
            conn.execute(text(sql))
    with pg.begin() as conn:
        conn.execute(text("UPDATE products SET name = 'c'"))
    assert len(recorded(pg)) == 2


def test_what_capture_by_trigger_cannot_do_is_refused_with_the_fix(prefix: str) -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"'session'.*'trigger'"):
        class Odd(scrypath_sa.Searchable, Base):
            __tablename__ = "odd"
            __search_index__ = f"{prefix}_odd"
            __search_capture__ = "wal"
            id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError, match="default document ids"):
        class Custom(scrypath_sa.Searchable, Base):
            __tablename__ = "custom"
            __search_index__ = f"{prefix}_custom"
            __search_capture__ = "trigger"
            id: Mapped[int] = mapped_column(primary_key=True)

            def search_document_id(self) -> str:
                return f"c{self.id}"

    class Measured(scrypath_sa.Searchable, Base):
        __tablename__ = "measured"
        __search_index__ = f"{prefix}_measured"
        __search_capture__ = "trigger"
        id: Mapped[float] = mapped_column(Float, primary_key=True)

    with pytest.raises(ConfigurationError, match="integer, text or UUID"):
        triggers.ddl(Measured)
    sqlite = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        triggers.install(sqlite, [Measured])
