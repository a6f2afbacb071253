"""Mode choice, manual mode and confirm, outages, strict mode, races, configuration."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import servicekit
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import scrypath_sa
from scrypath_sa import Searchable, processor, sync_events
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.errors import ConfigurationError, SyncIncompleteError
from scrypath_sa.modes import Mode
from scrypath_sa.outcome import Outcome
from scrypath_sa.visibility import Visibility
from tests.models import World, make_world

THROUGH_PGBOUNCER = True  # also through PgBouncer in transaction pooling mode


class Hold(Mode):
    """Leaves committed events in ``requested`` so a test can drive the processor."""

    name = "hold"

    def dispatch(self, config: Any, event_ids: Sequence[int], engine: Any = None) -> Outcome:
        return Outcome(mode=self.name, event_ids=list(event_ids))


def states(world: World) -> list[tuple[str, str]]:
    with world.engine.connect() as conn:
        query = select(sync_events.c.document_id, sync_events.c.state).order_by(sync_events.c.id)
        return [tuple(r) for r in conn.execute(query)]


def doc(os_client: Any, world: World, doc_id: str) -> Any:
    found = os_client.get(index=f"{world.prefix}_articles", id=doc_id, ignore=404)
    return found["_source"] if found.get("found") else None


@pytest.fixture
def world(engine: Engine, index_prefix: str) -> World:
    return make_world(engine, index_prefix)


def dead_backend(password: str | None = None) -> OpenSearchBackend:
    auth = f"admin:{password}@" if password else ""
    return OpenSearchBackend(f"http://{auth}127.0.0.1:{servicekit.free_port()}",
                             max_retries=0, timeout=2)


# ---------------------------------------------------------------- choosing a mode

def test_a_shared_runs_outcome_parts_tell_each_caller_its_own_events() -> None:
    """Outcome.part: the states, failures, documents, skipped and locked ids of the
    asked events only (two events of one document are one document); a merging mode
    splits one run's outcome so; the run's error reaches every part."""
    from collections import Counter

    from scrypath_sa.outcome import Failure

    bad = Failure(3, "ix", "c", "discarded", "mapper_parsing_exception", "views: not a number")
    doc_a = object()  # the document of events 1 and 2
    whole = Outcome(mode="inline", event_ids=[1, 2, 3, 4, 5], documents=3,
                    states=Counter(completed=3, discarded=1), failures=[bad],
                    skipped=[5], locked=[5],
                    event_states={1: "completed", 2: "completed", 3: "discarded",
                                  4: "completed"},
                    event_documents={1: doc_a, 2: doc_a, 3: object(), 4: object()})
    mine = whole.part([2, 1])
    assert (mine.event_ids, mine.state, mine.documents, mine.failures) == (
        [2, 1], "completed", 1, [])
    theirs = whole.part([3, 5])
    assert (theirs.states, theirs.failures, theirs.skipped, theirs.locked) == (
        Counter(discarded=1), [bad], [5], [5])
    assert theirs.documents == 1 and theirs.to_dict()["state"] == "discarded"

    calls: list[list[int]] = []

    class Merging(Hold):
        merges = True

        def dispatch(self, config: Any, event_ids: Sequence[int],
                     engine: Any = None) -> Outcome:
            calls.append(list(event_ids))
            return Outcome(mode=self.name, event_ids=list(event_ids), error="broker down",
                           states=Counter(requested=len(event_ids)),
                           event_states=dict.fromkeys(event_ids, "requested"))

    config: Any = None  # the modes here do not read it
    parts = Merging().dispatch_group(config, [[1, 2], [3]])
    assert calls == [[1, 2, 3]]
    assert [(p.event_ids, p.states, p.error) for p in parts] == [
        ([1, 2], Counter(requested=2), "broker down"),
        ([3], Counter(requested=1), "broker down")]
    # A mode that does not merge dispatches each group on its own.
    assert [p.event_ids for p in Hold().dispatch_group(config, [[1, 2], [3]])] == [[1, 2], [3]]


def test_mode_precedence_context_over_session_over_default(world: World, backend: Any) -> None:
    scrypath_sa.configure(world.Session, backend=backend, mode="inline")
    with world.Session() as session:
        session.add(world.Article(id=1, title="a"))
        session.commit()
        assert scrypath_sa.last_outcome(session).mode == "inline"
        scrypath_sa.set_session_mode(session, "manual")
        session.add(world.Article(id=2, title="b"))
        session.commit()
        assert scrypath_sa.last_outcome(session).mode == "manual"
        with scrypath_sa.sync_mode("inline"):
            session.add(world.Article(id=3, title="c"))
            session.commit()
            assert scrypath_sa.last_outcome(session).mode == "inline"
            with scrypath_sa.sync_mode("manual"):
                session.add(world.Article(id=4, title="d"))
                session.commit()
                assert scrypath_sa.last_outcome(session).mode == "manual"
            session.add(world.Article(id=5, title="e"))
            session.commit()
            assert scrypath_sa.last_outcome(session).mode == "inline"
    assert [s for _, s in states(world)] == ["completed", "backend_accepted", "completed",
                                             "backend_accepted", "completed"]


def test_sync_mode_restores_after_an_exception_and_rejects_unknown_names() -> None:
    from scrypath_sa.modes.selection import _context_mode

    with pytest.raises(RuntimeError), scrypath_sa.sync_mode("manual"):
        raise RuntimeError("boom")
    assert _context_mode.get() is None
    with pytest.raises(ConfigurationError, match="unknown sync mode 'inlin'"):
        scrypath_sa.sync_mode("inlin").__enter__()


def test_configure_twice_does_not_double_events(world: World, backend: Any) -> None:
    scrypath_sa.configure(world.Session, backend=backend)
    scrypath_sa.configure(world.Session, backend=backend)
    with world.Session() as session:
        session.add(world.Article(id=1, title="once"))
        session.commit()
    assert states(world) == [("1", "completed")]
    assert scrypath_sa.unconfigure(world.Session)
    with world.Session() as session:
        session.add(world.Article(id=2, title="not captured"))
        session.commit()
    assert states(world) == [("1", "completed")]


# --------------------------------------------------------------- manual and confirm

def test_manual_is_accepted_not_completed_until_confirmed(world: World, backend: Any,
                                                          os_client: Any) -> None:
    scrypath_sa.configure(world.Session, backend=backend, mode="manual")
    with world.Session() as session:
        session.add_all([world.Article(id=1, title="one"), world.Article(id=2, title="two")])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert (outcome.mode, outcome.state) == ("manual", "backend_accepted")
    # Someone deletes document 2 behind the library's back before the operator confirms.
    os_client.delete(index=f"{world.prefix}_articles", id="2", refresh=True)
    report = scrypath_sa.confirm()
    assert len(report.confirmed) == 1 and not report.ok
    assert [m["document_id"] for m in report.missing] == ["2"]
    assert states(world) == [("1", "completed"), ("2", "backend_accepted")]
    assert doc(os_client, world, "1") == {**doc(os_client, world, "1"), "title": "one"}


def test_manual_delete_is_confirmed_when_absent(world: World, backend: Any) -> None:
    scrypath_sa.configure(world.Session, backend=backend, mode="manual")
    with world.Session() as session:
        session.add(world.Article(id=1, title="x"))
        session.commit()
        session.delete(session.get(world.Article, 1))
        session.commit()
    report = scrypath_sa.confirm()
    assert report.ok and len(report.confirmed) == 2
    assert {s for _, s in states(world)} == {"completed"}


# ---------------------------------------------------------------- outages and strict

def test_backend_down_never_breaks_the_commit_and_hides_secrets(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-pw-1234"
    scrypath_sa.configure(world.Session, backend=dead_backend(secret))
    with caplog.at_level(logging.DEBUG), world.Session() as session:
        session.add(world.Article(id=1, title="kept"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "retrying"
    with world.engine.connect() as conn:
        row = conn.execute(select(sync_events)).one()
        assert conn.execute(select(world.Article.title)).scalar_one() == "kept"
    assert row.state == "retrying" and row.next_attempt_at is not None
    assert row.error_kind in {"index_unavailable", "connection_error"}
    assert secret not in (row.last_error or "")
    assert secret not in caplog.text and secret not in outcome.describe()


def test_strict_raises_after_commit_saying_the_data_committed(world: World) -> None:
    scrypath_sa.configure(world.Session, backend=dead_backend(), strict=True)
    with world.Session() as session:
        session.add(world.Article(id=1, title="committed anyway"))
        with pytest.raises(SyncIncompleteError, match="the database transaction committed"):
            session.commit()
        # the session is still usable and the data is there
        assert session.scalars(select(world.Article.title)).one() == "committed anyway"
    assert states(world) == [("1", "retrying")]


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[tuple[servicekit.Running, Path, int]]:
    """A second, private OpenSearch node this test may stop and start."""
    port = servicekit.free_port()
    node = servicekit.start_opensearch(tmp_path / "node", port, heap="512m")
    yield node, tmp_path / "node", port
    node.stop()


def test_opensearch_stopped_during_inline_commit_then_sweep_completes(
        world: World, own_node: tuple[servicekit.Running, Path, int]) -> None:
    import datetime as dt

    node, workdir, port = own_node
    backend = OpenSearchBackend(node.url, max_retries=0, timeout=5)
    config = scrypath_sa.configure(world.Session, backend=backend, backoff_base=0.0)
    with world.Session() as session:
        session.add(world.Article(id=1, title="before"))
        session.commit()
    node.stop()
    with world.Session() as session:
        session.get(world.Article, 1).title = "during outage"
        session.add(world.Article(id=2, title="new during outage"))
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "retrying"
    assert [s for _, s in states(world)] == ["completed", "retrying", "retrying"]

    restarted = servicekit.start_opensearch(workdir, port, heap="512m")
    try:
        report = scrypath_sa.sweep(config, older_than=dt.timedelta(0))
        assert report.dispatched == 2
        assert [s for _, s in states(world)] == ["completed"] * 3
        client = backend.client
        got = client.get(index=f"{world.prefix}_articles", id="1")["_source"]["title"]
        assert got == "during outage"
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- races

def test_out_of_order_processors_converge_on_the_newest_state(world: World, backend: Any,
                                                              os_client: Any) -> None:
    config = scrypath_sa.configure(world.Session, backend=backend, mode="hold",
                                   modes={"hold": Hold()})
    with world.Session() as session:
        session.add(world.Article(id=1, title="old"))
        session.commit()
    (first,) = [i for (i,) in world.engine.connect().execute(select(sync_events.c.id))]

    release, reached = threading.Event(), threading.Event()

    class Stalling(OpenSearchBackend):
        def bulk(self, ops: Any, *, wait_for_visibility: bool) -> Any:
            reached.set()
            assert release.wait(60)
            return super().bulk(ops, wait_for_visibility=wait_for_visibility)

    slow = Stalling(backend.client)
    slow_config = scrypath_sa.Config(**{**vars(config), "backend": slow})
    slow_worker = threading.Thread(target=processor.process, args=(slow_config, [first]),
                                   kwargs={"mode": "inline",
                                           "visibility": Visibility.VISIBLE})
    slow_worker.start()
    assert reached.wait(60)  # the slow processor has read the row ("old") and stalls

    with world.Session() as session:
        session.get(world.Article, 1).title = "new"
        session.commit()
    with world.engine.connect() as conn:
        second = conn.execute(select(sync_events.c.id).where(sync_events.c.id > first)).scalar()
    processor.process(config, [second], mode="inline", visibility=Visibility.VISIBLE)
    assert doc(os_client, world, "1")["title"] == "new"

    release.set()
    slow_worker.join(60)
    os_client.indices.refresh(index=f"{world.prefix}_articles")
    assert doc(os_client, world, "1")["title"] == "new"  # the stale write lost
    assert states(world) == [("1", "completed"), ("1", "completed")]


def test_two_processors_never_work_the_same_event(world: World, backend: Any) -> None:
    config = scrypath_sa.configure(world.Session, backend=backend, mode="hold",
                                   modes={"hold": Hold()})
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=str(i)) for i in range(1, 41)])
        session.commit()
    with world.engine.connect() as conn:
        ids = list(conn.execute(select(sync_events.c.id)).scalars())
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=lambda: outcomes.append(processor.process(
        config, ids, mode="inline", visibility=Visibility.VISIBLE)))
        for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    worked = sorted(i for o in outcomes for i in o.event_ids if i not in o.skipped)
    assert worked == sorted(ids)  # each event worked exactly once across both
    with world.engine.connect() as conn:
        attempts = set(conn.execute(select(sync_events.c.attempts)).scalars())
    assert attempts == {1}


# ------------------------------------------------------------- scoped / Flask session

def test_flask_sqlalchemy_scoped_session(tmp_path: Path, index_prefix: str, backend: Any,
                                         os_client: Any) -> None:
    class Base(DeclarativeBase):
        pass

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'flask.sqlite'}"
    db = SQLAlchemy(app, model_class=Base)

    class Note(Searchable, db.Model):  # type: ignore[name-defined, misc]
        # No __tablename__: Flask-SQLAlchemy generates "note", as its docs show.
        __search_index__ = f"{index_prefix}_notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(String(100))

    with app.app_context():
        db.create_all()
        scrypath_sa.metadata.create_all(db.engine)
        scrypath_sa.configure(db.session, backend=backend, bind=db.engine)
        db.session.add(Note(id=1, body="from flask"))
        db.session.commit()
        assert scrypath_sa.last_outcome(db.session()).state == "completed"
    got = os_client.get(index=f"{index_prefix}_notes", id="1")["_source"]
    assert got == {"id": 1, "body": "from flask"}
