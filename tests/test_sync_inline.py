"""The core sync path end to end against real OpenSearch, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, String, delete, event, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import scrypath_sa
from scrypath_sa import Searchable, sync_events
from scrypath_sa.errors import SyncIncompleteError
from tests.models import World, make_world


@pytest.fixture
def world(engine: Engine, index_prefix: str, backend: Any) -> World:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend, mode="inline")
    return w


def events(world: World) -> list[Any]:
    with world.engine.connect() as conn:
        return conn.execute(select(sync_events).order_by(sync_events.c.id)).all()


def get(os_client: Any, world: World, doc_id: str, index: str = "articles") -> Any:
    found = os_client.get(index=f"{world.prefix}_{index}", id=doc_id, ignore=404)
    return found["_source"] if found.get("found") else None


def test_inline_commit_is_completed_and_visible(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="Running foxes", views=3))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None
    assert (outcome.mode, outcome.state, outcome.documents) == ("inline", "completed", 1)
    rows = events(world)
    assert [(r.state, r.operation, r.mode, r.attempts) for r in rows] == [
        ("completed", "upsert", "inline", 1)]
    assert rows[0].version_sent == scrypath_sa.schema.version_of(rows[0].id)
    assert rows[0].completed_at is not None and rows[0].accepted_at is None
    # visible: a search right after commit finds it without an explicit refresh
    hits = os_client.search(index=f"{world.prefix}_articles",
                            body={"query": {"match": {"title": "run"}}})
    assert [h["_id"] for h in hits["hits"]["hits"]] == ["1"]
    doc = hits["hits"]["hits"][0]["_source"]
    assert doc["title"] == "Running foxes" and doc["views"] == "3"


def test_concurrent_inline_commits_share_runs_and_paced_refreshes(
        world: World, os_client: Any, engine: Engine, process_runs: list[int]) -> None:
    """20 threads committing single rows in inline mode: each commit's document is
    searchable the moment its commit returns; commits that wait at once share runs
    (far fewer than commits), each hearing its own events' outcome (one document the
    index rejects is discarded in its own commit's outcome only); and the index is
    refreshed far fewer times than there are commits, no more often than the pace
    allows."""
    import threading
    import time

    from scrypath_sa.visibility import REFRESH_PACE

    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises writers: the threads could not commit at once")
    alias = f"{world.prefix}_articles"
    with world.Session() as session:  # the index exists before the threads start
        session.add(world.Article(id=1, title="first"))
        session.commit()

    def refreshes() -> int:
        stats = os_client.indices.stats(index=alias, metric="refresh")
        total: int = stats["_all"]["primaries"]["refresh"]["external_total"]
        return total

    unseen: list[int] = []
    states: list[str] = []
    failed: list[tuple[int, list[str]]] = []
    start = threading.Barrier(20)
    rejected = 172

    def committer(slot: int) -> None:
        start.wait()
        for k in range(5):
            i = 100 + slot * 10 + k
            with world.Session() as session:
                session.add(world.Article(id=i, title=f"t{i}",
                                          views="not a number" if i == rejected else "1"))
                session.commit()
                outcome = scrypath_sa.last_outcome(session)
                assert outcome is not None and len(outcome.event_ids) == 1
                states.append(outcome.state)
                if outcome.failures:
                    failed.append((i, [f.document_id for f in outcome.failures]))
            if i == rejected:
                continue
            found = os_client.search(index=alias, body={"query": {"ids": {"values": [str(i)]}}})
            if found["hits"]["total"]["value"] != 1:
                unseen.append(i)

    before = refreshes()
    began = time.monotonic()
    threads = [threading.Thread(target=committer, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    refreshed = refreshes() - before
    assert sorted(states) == ["completed"] * 99 + ["discarded"]
    assert failed == [(rejected, [str(rejected)])]
    assert unseen == []
    # Shared runs: 101 runs (one per commit) without them; 21-23 here.
    assert sum(process_runs) == 101 and len(process_runs) <= 60, process_runs
    # Shared: far fewer refreshes than commits; paced: none closer than REFRESH_PACE
    # while others wait, plus the index's own (one a second: the default interval) and
    # the few a lone caller may start at once (the first commits, the last ones).
    assert refreshed < 50, refreshed
    assert refreshed <= elapsed / REFRESH_PACE + elapsed / 1.0 + 5, (refreshed, elapsed)


def test_alias_points_at_index_built_from_contract(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="x"))
        session.commit()
    alias = f"{world.prefix}_articles"
    (physical,) = os_client.indices.get_alias(name=alias)
    assert physical != alias
    mapping = os_client.indices.get_mapping(index=physical)[physical]["mappings"]
    assert mapping["properties"]["title"]["analyzer"] == "english"
    expected = scrypath_sa.registry.info_for(world.Article).contract.hash
    assert mapping["_meta"]["scrypath"]["contract_hash"] == expected


def test_update_then_delete_in_one_transaction(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="first"))
        session.commit()
        article = session.get(world.Article, 1)
        article.title = "second"
        session.flush()
        session.delete(article)
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
    assert get(os_client, world, "1") is None
    last_two = events(world)[-2:]
    assert [r.operation for r in last_two] == ["delete", "delete"]  # what was actually sent
    assert {r.state for r in last_two} == {"completed"}


def test_rollback_records_nothing_and_sends_nothing(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="never"))
        session.flush()
        session.rollback()
        assert scrypath_sa.last_outcome(session) is None
    assert events(world) == []
    assert not os_client.indices.exists_alias(name=f"{world.prefix}_articles")


def test_savepoint_rollback_keeps_outer_work_only(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="kept"))
        nested = session.begin_nested()
        session.add(world.Article(id=2, title="rolled back"))
        session.flush()
        nested.rollback()
        nested = session.begin_nested()
        session.add(world.Article(id=3, title="released"))
        nested.commit()
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "completed"
    assert get(os_client, world, "1")["title"] == "kept"
    assert get(os_client, world, "2") is None
    assert get(os_client, world, "3")["title"] == "released"
    assert sorted(r.document_id for r in events(world)) == ["1", "3"]


def test_cascade_and_orphan_deletes_are_captured(world: World, os_client: Any) -> None:
    with world.Session() as session:
        article = world.Article(id=1, title="a")
        article.comments = [world.Comment(id=10, body="x"), world.Comment(id=11, body="y")]
        session.add(article)
        session.commit()
        assert get(os_client, world, "10", "comments")["body"] == "x"
        article.comments.remove(article.comments[0])  # orphan
        session.commit()
        assert get(os_client, world, "10", "comments") is None
        session.delete(article)  # cascade
        session.commit()
    assert get(os_client, world, "11", "comments") is None
    assert get(os_client, world, "1") is None


def test_new_rows_are_captured_with_assigned_keys_and_late_additions(
        world: World, os_client: Any) -> None:
    """New rows are read from the session once the flush wrote them: keys the database
    assigned, and objects another before_flush listener added, are captured too."""
    from sqlalchemy import event

    def add_audit_comment(session: Any, flush_context: Any, instances: Any) -> None:
        for obj in list(session.new):
            if isinstance(obj, world.Article) and obj.title == "with audit":
                session.add(world.Comment(id=99, article=obj, body="audit"))

    event.listen(world.Session, "before_flush", add_audit_comment)
    with world.Session() as session:
        first, second = world.Article(title="auto one"), world.Article(title="with audit")
        session.add_all([first, second])
        session.commit()
        keys = sorted(str(a.id) for a in (first, second))
    rows = events(world)
    assert sorted((r.index_name, r.document_id, r.state) for r in rows) == sorted(
        [(f"{world.prefix}_articles", k, "completed") for k in keys]
        + [(f"{world.prefix}_comments", "99", "completed")])
    assert get(os_client, world, keys[0])["title"] in ("auto one", "with audit")
    assert get(os_client, world, "99", "comments")["body"] == "audit"


def test_an_object_added_during_a_flush_is_captured_by_the_flush_that_writes_it(
        world: World) -> None:
    """An after_flush listener that runs before ours adds an object: it is new but not
    written yet (no key), so it belongs to the next flush, not to this one."""
    from sqlalchemy import event

    def add_follow_up(session: Any, flush_context: Any) -> None:
        if not session.info.get("added"):
            session.info["added"] = True
            session.add(world.Article(title="follow-up"))

    event.listen(world.Session, "after_flush", add_follow_up, insert=True)
    with world.Session() as session:
        session.add(world.Article(id=100, title="first"))
        session.commit()
        follow_up = session.scalars(select(world.Article).where(
            world.Article.title == "follow-up")).one()
    assert sorted(r.document_id for r in events(world)) == sorted(["100", str(follow_up.id)])


def test_unchanged_dirty_object_records_nothing(world: World) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="same"))
        session.commit()
        before = len(events(world))
        article = session.get(world.Article, 1)
        article.title = "same"
        session.commit()
    assert len(events(world)) == before


def test_one_flush_writes_one_event_per_document(world: World) -> None:
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"t{i}") for i in range(1, 6)])
        session.commit()
        for article in session.scalars(select(world.Article)):
            article.views = 7
            article.title = article.title + "!"
        session.commit()
    rows = events(world)
    assert len(rows) == 10
    assert sorted(r.document_id for r in rows[5:]) == ["1", "2", "3", "4", "5"]


def test_should_index_false_deletes_the_document(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add(world.Article(id=1, title="visible"))
        session.commit()
        assert get(os_client, world, "1") is not None
        session.get(world.Article, 1).published = False
        session.commit()
        assert get(os_client, world, "1") is None
        assert events(world)[-1].operation == "delete"
        session.get(world.Article, 1).published = True
        session.commit()
    assert get(os_client, world, "1")["title"] == "visible"


def test_composite_keys(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add_all([world.Translation(article_id=1, lang="en", text="hello"),
                         world.Translation(article_id=1, lang="fr", text="bonjour")])
        session.commit()
        assert get(os_client, world, "1:fr", "translations")["text"] == "bonjour"
        session.delete(session.get(world.Translation, (1, "fr")))
        session.commit()
    assert get(os_client, world, "1:fr", "translations") is None
    assert get(os_client, world, "1:en", "translations")["text"] == "hello"


def test_integer_arrays_reach_psycopg_as_one_literal_and_select_exactly(
        postgres_url: str) -> None:
    """Ids and integer keys in ``= ANY(...)`` go to psycopg preformatted (its list dumper
    works element by element in Python) and still select exactly the rows asked for,
    negative and 64-bit values included. (Arrays are PostgreSQL's.)"""
    from sqlalchemy import BigInteger, Column, MetaData, Table, create_engine, event

    from scrypath_sa import sql

    engine = create_engine(postgres_url)
    table = Table(f"ints_{uuid.uuid4().hex[:8]}", MetaData(),
                  Column("id", BigInteger, primary_key=True))
    table.create(engine)
    try:
        wanted = [-5, 0, 7, 2**62, 2**63 - 1]
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": v} for v in [*wanted, 8, -6]])
        sent: list[type] = []

        @event.listens_for(engine, "before_cursor_execute")
        def spy(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            sent.extend(type(value) for value in parameters.values())

        with engine.connect() as conn:
            found = conn.execute(select(table.c.id).where(
                sql.id_filter(conn, table.c.id, wanted))).scalars().all()
        assert sorted(found) == sorted(wanted)
        assert sent == [sql.IntList]
    finally:
        table.drop(engine)
        engine.dispose()


def test_json_safe_default_document(world: World, os_client: Any) -> None:
    import datetime as dt
    import decimal

    from tests.models import Colour

    with world.Session() as session:
        session.add(world.Article(id=1, title="t", price=decimal.Decimal("9.50"),
                                  created=dt.datetime(2026, 1, 2, 3, 4, 5),
                                  colour=Colour.BLUE))
        session.commit()
    doc = get(os_client, world, "1")
    assert doc["price"] == 9.5
    assert doc["created"] == "2026-01-02T03:04:05"
    assert doc["colour"] == "blue"  # the enum value, JSON-safe


def test_bulk_update_and_delete_statements_are_captured(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"t{i}", views=i) for i in range(1, 5)])
        session.commit()
        result = session.execute(
            update(world.Article).where(world.Article.id >= 3).values(title="bulk"))
        assert result.rowcount == 2
        session.commit()
        assert get(os_client, world, "3")["title"] == "bulk"
        assert get(os_client, world, "4")["title"] == "bulk"
        assert get(os_client, world, "2")["title"] == "t2"
        session.execute(delete(world.Article).where(world.Article.id <= 2))
        session.commit()
    assert get(os_client, world, "1") is None and get(os_client, world, "2") is None
    assert get(os_client, world, "3") is not None


def test_bulk_update_by_primary_key_parameters(world: World, os_client: Any) -> None:
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"t{i}") for i in range(1, 4)])
        session.commit()
        session.execute(update(world.Article), [{"id": 1, "title": "one"},
                                                {"id": 3, "title": "three"}])
        session.commit()
    assert get(os_client, world, "1")["title"] == "one"
    assert get(os_client, world, "3")["title"] == "three"


def test_mapping_violation_is_discarded_and_batch_mates_land(world: World,
                                                             os_client: Any) -> None:
    with world.Session() as session:
        session.add_all([world.Article(id=1, title="good one", views=1),
                         world.Article(id=2, title="bad", views="not a number"),
                         world.Article(id=3, title="good three", views=3)])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.states == {"completed": 2, "discarded": 1}
    (failure,) = outcome.failures
    assert failure.document_id == "2" and failure.error_kind == "mapper_parsing_exception"
    bad = next(r for r in events(world) if r.document_id == "2")
    assert bad.state == "discarded" and "views" in bad.last_error
    assert get(os_client, world, "1") is not None and get(os_client, world, "3") is not None
    assert get(os_client, world, "2") is None


def test_search_document_that_raises_is_discarded(engine: Engine, index_prefix: str,
                                                  backend: Any, os_client: Any) -> None:
    w = make_world(engine, index_prefix)

    def search_document(self: Any) -> dict[str, Any]:
        if self.title == "boom":
            raise ValueError("cannot build this one")
        return {"title": self.title}

    w.Article.search_document = search_document
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        session.add_all([w.Article(id=1, title="boom"), w.Article(id=2, title="fine")])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.states == {"discarded": 1, "completed": 1}
    assert "ValueError: cannot build this one" in outcome.failures[0].error
    assert get(os_client, w, "2") == {"title": "fine"}


def test_events_are_written_in_the_data_transaction(world: World) -> None:
    """The outbox row exists exactly when the data row does: a rollback leaves neither,
    a commit both (on psycopg the INSERT goes with the COMMIT: tests/test_with_commit)."""
    with world.Session() as session:
        session.add(world.Article(id=1, title="x"))
        session.flush()
        session.rollback()
    assert events(world) == []
    with world.Session() as session:
        session.add(world.Article(id=2, title="y"))
        session.commit()
    assert [e.document_id for e in events(world)] == ["2"]


def commit_ten_in_batches_of_three(engine: Engine, index_prefix: str, backend: Any) -> Any:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend, batch_size=3)
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"doc {i}") for i in range(1, 11)])
        session.commit()
        return scrypath_sa.last_outcome(session)


def test_many_batches_are_all_completed_and_visible(engine: Engine, index_prefix: str,
                                                    backend: Any, os_client: Any) -> None:
    outcome = commit_ten_in_batches_of_three(engine, index_prefix, backend)
    assert outcome.states == {"completed": 10}
    # visible without any refresh of ours: the run's own refresh covered all batches
    assert os_client.count(index=f"{index_prefix}_articles")["count"] == 10


def test_long_runs_refresh_as_they_go_and_a_failed_refresh_leaves_accepted(
        engine: Engine, index_prefix: str, opensearch_url: str, os_client: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from scrypath_sa import visibility
    from scrypath_sa.backends import OpenSearchBackend
    from scrypath_sa.errors import BackendError

    class FlakyRefresh(OpenSearchBackend):
        refreshes = 0

        def refresh(self, alias: str) -> None:
            self.refreshes += 1
            if self.refreshes == 2:
                raise BackendError("refresh timed out")
            super().refresh(alias)

    monkeypatch.setattr(visibility, "REFRESH_EVERY", 4)
    backend = FlakyRefresh(opensearch_url)
    outcome = commit_ten_in_batches_of_three(engine, index_prefix, backend)
    # batches of 3, 3 | 3, 1: a refresh after the first 6 documents, one after the rest
    assert backend.refreshes == 2
    assert outcome.states == {"completed": 6, "backend_accepted": 4}
    with engine.connect() as conn:
        stored = conn.execute(select(sync_events.c.document_id, sync_events.c.state)).all()
    assert {doc_id: state for doc_id, state in stored} == {
        str(i): "completed" if i <= 6 else "backend_accepted" for i in range(1, 11)}


def test_byte_cap_splits_requests_and_everything_lands(engine: Engine, index_prefix: str,
                                                       opensearch_url: str,
                                                       os_client: Any) -> None:
    from scrypath_sa.backends import OpenSearchBackend

    class Counting(OpenSearchBackend):
        requests: list[int] = []  # noqa: RUF012

        def _send(self, ops: Any, body: str, wait_for_visibility: bool) -> Any:
            self.requests.append(len(body))
            return super()._send(ops, body, wait_for_visibility)

    backend = Counting(opensearch_url, max_request_bytes=1500)
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        session.add_all([w.Article(id=i, title="x" * 190) for i in range(1, 21)])
        session.commit()
        assert scrypath_sa.last_outcome(session).states == {"completed": 20}
    assert len(backend.requests) >= 4
    assert max(backend.requests) <= 1500
    assert os_client.count(index=f"{index_prefix}_articles")["count"] == 20


def test_eager_load_hook_avoids_n_plus_one(engine: Engine, index_prefix: str, backend: Any,
                                           os_client: Any) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import selectinload

    w = make_world(engine, index_prefix)
    article = w.Article

    def search_document(self: Any) -> dict[str, Any]:
        return {"title": self.title, "comments": [c.body for c in self.comments]}

    article.search_document = search_document
    article.search_load_options = classmethod(lambda cls: [selectinload(cls.comments)])
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session, scrypath_sa.sync_mode("manual"):
        for i in range(1, 31):
            a = article(id=i, title=f"a{i}")
            a.comments = [w.Comment(id=i * 10 + k, body=f"c{i}-{k}") for k in range(2)]
            session.add(a)
        session.commit()

    comment_selects: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM comments" in statement:
            comment_selects.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with w.Session() as session:
            for a in session.scalars(select(article)):
                a.views = "1"
            session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(comment_selects) == 1  # one selectin load for 30 articles, not 30
    got = os_client.get(index=f"{index_prefix}_articles", id="7")["_source"]
    assert got == {"title": "a7", "comments": ["c7-0", "c7-1"]}


def test_deleted_index_is_never_recreated_with_guessed_mappings(world: World,
                                                               os_client: Any) -> None:
    import datetime as dt

    with world.Session() as session:
        session.add(world.Article(id=1, title="before"))
        session.commit()
    alias = f"{world.prefix}_articles"
    os_client.indices.delete(index=f"{alias}_*")  # someone drops the index
    with world.Session() as session:
        session.add(world.Article(id=2, title="after"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "retrying"
    assert outcome.failures[0].error_kind == "index_unavailable"
    assert not os_client.indices.exists(index=alias)  # no concrete index under its name
    scrypath_sa.sweep(older_than=dt.timedelta(seconds=-3600))
    (physical,) = os_client.indices.get_alias(name=alias)
    mapping = os_client.indices.get_mapping(index=physical)[physical]["mappings"]
    assert mapping["properties"]["title"]["analyzer"] == "english"  # built from the contract
    assert get(os_client, world, "2")["title"] == "after"


def test_column_fast_path_builds_the_same_documents_as_the_orm(world: World) -> None:
    import datetime as dt
    import decimal

    from scrypath_sa import documents, registry
    from tests.models import Colour

    with world.Session() as session:
        session.add(world.Article(id=1, title="t", price=decimal.Decimal("9.50"),
                                  created=dt.datetime(2026, 1, 2, 3, 4, 5),
                                  colour=Colour.BLUE))
        session.commit()
        orm_doc = documents.column_document(session.get(world.Article, 1))
    info = registry.info_for(world.Article)
    assert info is not None
    assert documents.column_documents(world.engine, info, [(1,)]) == {(1,): ("upsert", orm_doc)}


def coded_world(engine: Engine, index_prefix: str, backend: Any,
                id_rule: Callable[[str], str]) -> tuple[Any, Any]:
    """A model whose document id is ``id_rule(code)`` (a user's custom rule), its
    tables, and a configured session factory."""

    class Base(DeclarativeBase):
        pass

    class Code(Searchable, Base):
        __tablename__ = "codes"
        __search_index__ = f"{index_prefix}_codes"
        id: Mapped[int] = mapped_column(primary_key=True)
        code: Mapped[str] = mapped_column(String(1000))

        def search_document_id(self) -> str:
            return id_rule(self.code)

    Base.metadata.create_all(engine)
    scrypath_sa.metadata.create_all(engine)
    Session = sessionmaker(engine)
    scrypath_sa.configure(Session, backend=backend)
    return Code, Session


def test_a_document_id_postgresql_cannot_hold_never_fails_the_commit(
        engine: Engine, index_prefix: str, backend: Any) -> None:
    """A custom id rule puts a NUL character in an id (no PostgreSQL text holds one):
    the data commits, the event is recorded discarded with the fix, its batch-mate
    is written."""

    Code, Session = coded_world(engine, index_prefix, backend,
                                lambda code: code.replace("~", "\0"))
    with Session() as session:
        session.add_all([Code(id=1, code="a~b"), Code(id=2, code="fine")])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.states == {"completed": 1, "discarded": 1}
    (failure,) = outcome.failures
    assert failure.error_kind == "document_id_has_nul"
    assert "NUL" in failure.error and "search_document_id()" in failure.error
    with engine.connect() as conn:
        assert conn.execute(select(Code.__table__.c.id)).scalars().all() == [1, 2]
        rows = conn.execute(select(sync_events.c.state, sync_events.c.document_id)
                            .order_by(sync_events.c.id)).all()
    assert sorted(rows) == [("completed", "fine"), ("discarded", "a\\0b")]


def test_a_document_id_too_long_for_opensearch_never_fails_the_commit(
        engine: Engine, index_prefix: str, backend: Any, os_client: Any) -> None:
    """A custom id rule produces a 600-character id: the user's data commits, that
    event is recorded discarded with a reason that says what to fix, its batch-mate is
    written, and the outcome (and strict mode) do not call it a success."""

    Code, Session = coded_world(engine, index_prefix, backend, lambda code: code)
    with Session() as session:
        session.add_all([Code(id=1, code="x" * 600), Code(id=2, code="short")])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.states == {"completed": 1, "discarded": 1}
    (failure,) = outcome.failures
    assert failure.error_kind == "document_id_too_long"
    assert "600 bytes" in failure.error and "search_document_id()" in failure.error
    with engine.connect() as conn:
        assert conn.execute(select(Code.__table__.c.id)).scalars().all() == [1, 2]
        rows = conn.execute(select(sync_events.c.state, sync_events.c.error_kind)
                            .order_by(sync_events.c.id)).all()
    assert sorted(rows) == [("completed", None), ("discarded", "document_id_too_long")]
    assert os_client.get(index=f"{index_prefix}_codes", id="short")["found"]

    scrypath_sa.configure(Session, backend=backend, strict=True)
    with Session() as session:
        session.add(Code(id=3, code="y" * 600))
        with pytest.raises(SyncIncompleteError):
            session.commit()
    with engine.connect() as conn:  # strict raises after the data committed
        assert conn.execute(select(Code.__table__.c.id)).scalars().all() == [1, 2, 3]
    scrypath_sa.unconfigure(Session)
    Code.metadata.drop_all(engine)


def test_search_fields_make_the_document_and_skip_other_changes(
        engine: Engine, index_prefix: str, backend: Any, os_client: Any) -> None:
    """__search_fields__ = ["title"]: the document holds the title only (a search for the
    row's id finds nothing), a change of another column records no event, a change of
    the title does."""
    class Base(DeclarativeBase):
        pass

    class Post(Searchable, Base):
        __tablename__ = "posts"
        __search_index__ = f"{index_prefix}_posts"
        __search_fields__ = ("title",)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(100))
        views: Mapped[int] = mapped_column(default=0)

    Base.metadata.create_all(engine)
    scrypath_sa.metadata.create_all(engine)
    Session = sessionmaker(engine)
    scrypath_sa.configure(Session, backend=backend)
    with Session() as session:
        session.add(Post(id=1, title="fields only"))
        session.commit()
        assert os_client.get(index=f"{index_prefix}_posts", id="1")["_source"] == {
            "title": "fields only"}
        post = session.get(Post, 1)
        post.views = 10
        session.commit()
        with engine.connect() as conn:  # no event for a change outside the fields
            assert len(conn.execute(select(sync_events.c.id)).all()) == 1
        post.title = "renamed"
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
        assert scrypath_sa.search(session, Post, "1").total == 0
        assert [p.id for p in scrypath_sa.search(session, Post, "renamed").items] == [1]

        # A change outside the fields that the app's own before_update hook turns into
        # a change of the title, during the flush: the mapper event records it.
        @event.listens_for(Post, "before_update")
        def promote(mapper: Any, connection: Any, target: Post) -> None:
            if target.views == 99:
                target.title = "promoted"

        post.views = 99
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
        assert [p.id for p in scrypath_sa.search(session, Post, "promoted").items] == [1]
    with engine.connect() as conn:
        assert len(conn.execute(select(sync_events.c.id)).all()) == 3
    scrypath_sa.unconfigure(Session)
    Base.metadata.drop_all(engine)


@pytest.mark.parametrize(("fields", "says"), [
    (["titel"], "Post has no mapped attribute 'titel'"),
    (["author.name"], "Post has no mapped attribute 'author'"),
    (["title.name"], "Post.title is not a relationship"),
    ("title", "must be a list of attribute names"),
])
def test_bad_search_fields_are_refused_when_the_model_is_configured(
        fields: Any, says: str) -> None:
    from sqlalchemy.orm import configure_mappers

    from scrypath_sa import registry
    from scrypath_sa.errors import ConfigurationError

    class Base(DeclarativeBase):
        pass

    class Post(Searchable, Base):
        __tablename__ = "bad_fields_posts"
        __search_fields__ = fields
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(100))

    with pytest.raises(ConfigurationError, match=says):
        configure_mappers()
    Base.registry.dispose()
    assert "bad_fields_posts" not in {m.index for m in registry.all_models()}
