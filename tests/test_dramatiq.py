"""Dramatiq mode against real Redis, real `dramatiq` worker processes, real OpenSearch."""

from __future__ import annotations

import datetime as dt
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servicekit
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, select

import scrypath_sa
from scrypath_sa import sync_events
from scrypath_sa.modes.dramatiq import DramatiqMode
from tests.faults import TERMINAL, Workers, all_terminal, assert_in_step, states, wait_for
from tests.models import World, make_broker, make_world

THROUGH_PGBOUNCER = True  # also through PgBouncer in transaction pooling mode


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each test of the shared setup runs on Dramatiq's Redis and RabbitMQ brokers."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def setup(engine: Engine, index_prefix: str, broker_url: str, opensearch_url: str,
          backend: Any, tmp_path: Path) -> Iterator[tuple[World, Workers, Any]]:
    world = make_world(engine, index_prefix)
    queue = f"q{index_prefix}"
    broker = make_broker(broker_url)
    config = scrypath_sa.configure(world.Session, backend=backend, mode="dramatiq",
                                   modes={"dramatiq": DramatiqMode(broker, queue_name=queue)})
    workers = Workers(tmp_path, {
        "SCRYPATH_TEST_PREFIX": index_prefix,
        "SCRYPATH_TEST_BROKER_URL": broker_url,
        "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url,
        "SCRYPATH_TEST_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "SCRYPATH_TEST_QUEUE": queue,
    })
    yield world, workers, config
    workers.stop_all()
    if isinstance(broker, RedisBroker):
        broker.client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.DQ",
                             f"dramatiq:{queue}.XQ")
    else:
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_delete(name)
    broker.close()


def index_state(os_client: Any, world: World) -> dict[str, str]:
    alias = f"{world.prefix}_articles"
    os_client.indices.refresh(index=alias)
    hits = os_client.search(index=alias, body={"size": 10_000, "query": {"match_all": {}}})
    return {h["_id"]: h["_source"]["title"] for h in hits["hits"]["hits"]}


def db_state(world: World) -> dict[str, str]:
    with world.Session() as session:
        return {str(a.id): a.title for a in session.scalars(select(world.Article))
                if a.published}


def test_commit_enqueues_and_a_worker_completes(setup: Any, os_client: Any) -> None:
    world, workers, config = setup
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"queued {i}") for i in range(1, 4)])
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert (outcome.mode, outcome.state) == ("dramatiq", "enqueued")
    assert config.mode("dramatiq").flush()
    assert states(world.engine) == {"enqueued": 3}  # nothing runs until a worker does
    workers.start()
    wait_for(all_terminal(world.engine), "the worker to finish")
    assert states(world.engine) == {"completed": 3}, workers.logs()
    assert index_state(os_client, world) == {"1": "queued 1", "2": "queued 2", "3": "queued 3"}


@pytest.mark.parametrize("background", [False, True])
def test_a_stream_of_small_commits_shares_marks_and_background_messages(
        engine: Engine, index_prefix: str, redis_url: str, backend: Any,
        background: bool) -> None:
    """Commits within ``linger`` of each other share one ``enqueued`` UPDATE; with
    ``background=True`` their ids also share a message; on PostgreSQL, by default,
    commits behind a fresh doorbell send nothing. Nothing is marked before it was sent,
    and ``flush`` ends the linger at once."""
    from sqlalchemy import event

    world = make_world(engine, index_prefix)
    queue = f"q{index_prefix}"
    broker = RedisBroker(url=redis_url)
    # A collect long enough that all ten commits fall within the doorbell's window.
    mode = DramatiqMode(broker, queue_name=queue, background=background, linger=30.0,
                        collect=60.0)
    scrypath_sa.configure(world.Session, backend=backend, mode="dramatiq",
                          modes={"dramatiq": mode})
    marks: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SYNC_EVENTS"):
            marks.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for i in range(1, 11):
            with world.Session() as session:
                session.add(world.Article(id=i, title=f"t{i}"))
                session.commit()
                expected = "requested" if background else "enqueued"
                assert scrypath_sa.last_outcome(session).state == expected
        assert mode.flush(timeout=20)  # True: the 30 s linger was cut short
        messages = broker.client.hvals(f"dramatiq:{queue}.msgs")
        if background or engine.dialect.name == "sqlite":
            assert states(engine) == {"enqueued": 10}
            assert len(messages) == (1 if background else 10)
        else:
            # PostgreSQL: the first commit rang a doorbell; the nine behind it within
            # collect / 2 ride on it (no message, no mark: they read requested until
            # the doorbell's worker claims them).
            assert states(engine) == {"enqueued": 1, "requested": 9}
            assert len(messages) == 1
        assert len(marks) == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
        broker.client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")


def test_broker_down_at_commit_then_sweep(engine: Engine, index_prefix: str, backend: Any,
                                          tmp_path: Path, opensearch_url: str,
                                          os_client: Any) -> None:
    world = make_world(engine, index_prefix)
    port = servicekit.free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    queue = f"q{index_prefix}"
    config = scrypath_sa.configure(world.Session, backend=backend, mode="dramatiq", modes={
        "dramatiq": DramatiqMode(RedisBroker(url=redis_url), queue_name=queue)})
    with world.Session() as session:
        session.add(world.Article(id=1, title="committed while the broker was down"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "requested"
    assert "broker did not accept the message" in outcome.error
    assert states(engine) == {"requested": 1}
    with engine.connect() as conn:
        assert conn.execute(select(world.Article.title)).scalar_one().startswith("committed")

    redis = servicekit.start_redis(tmp_path / "redis", port)
    workers = Workers(tmp_path, {
        "SCRYPATH_TEST_PREFIX": index_prefix, "SCRYPATH_TEST_BROKER_URL": redis_url,
        "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url, "SCRYPATH_TEST_QUEUE": queue,
        "SCRYPATH_TEST_DATABASE_URL": engine.url.render_as_string(hide_password=False)})
    try:
        report = scrypath_sa.sweep(config, older_than=dt.timedelta(0))
        assert report.dispatched == 1
        assert config.mode("dramatiq").flush()
        assert states(engine) == {"enqueued": 1}
        workers.start()
        wait_for(all_terminal(engine), "the swept event to complete")
        assert states(engine) == {"completed": 1}, workers.logs()
        assert index_state(os_client, world) == {"1": "committed while the broker was down"}
    finally:
        workers.stop_all()
        redis.stop()


def test_poison_document_is_discarded_without_blocking_its_batch(setup: Any,
                                                                  os_client: Any) -> None:
    world, workers, _ = setup
    with world.Session() as session:
        session.add_all([world.Article(id=1, title="fine"),
                         world.Article(id=2, title="poison", views="not a number"),
                         world.Article(id=3, title="also fine")])
        session.commit()
    workers.start()
    wait_for(all_terminal(world.engine), "the batch to settle")
    with world.engine.connect() as conn:
        rows = {r.document_id: r for r in conn.execute(select(sync_events))}
    assert rows["2"].state == "discarded" and rows["2"].attempts == 1  # burned no retries
    assert "mapper_parsing_exception" in rows["2"].error_kind
    assert rows["1"].state == rows["3"].state == "completed"
    assert index_state(os_client, world) == {"1": "fine", "3": "also fine"}


def test_retries_exhausted_gives_discarded(setup: Any) -> None:
    world, workers, _ = setup
    with world.Session() as session:
        session.add(world.Article(id=1, title="the index is unreachable"))
        session.commit()
    dead = f"http://127.0.0.1:{servicekit.free_port()}"
    workers.start(SCRYPATH_TEST_OPENSEARCH_URL=dead, SCRYPATH_TEST_MAX_RETRIES="2")
    wait_for(all_terminal(world.engine), "retries to run out")
    with world.engine.connect() as conn:
        row = conn.execute(select(sync_events)).one()
    assert row.state == "discarded", workers.logs()
    assert row.error_kind == "retries_exhausted"
    assert row.attempts == 3  # the first delivery and two retries
    assert "Dramatiq gave up after 2 retries" in row.last_error
    assert "127.0.0.1" in row.last_error  # the real cause is kept after the prefix


def test_worker_killed_mid_batch_loses_nothing(setup: Any, tmp_path: Path,
                                               os_client: Any) -> None:
    world, workers, config = setup
    stall = tmp_path / "stalled"
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"survives {i}") for i in range(1, 6)])
        session.commit()
    doomed = workers.start(SCRYPATH_TEST_STALL_FILE=str(stall))
    wait_for(stall.exists, "the worker to be mid-bulk")
    assert states(world.engine) == {"processing": 5}
    workers.kill(doomed)  # SIGKILL the whole worker process group

    report = scrypath_sa.sweep(config, stale_after=dt.timedelta(0))
    assert report.dispatched == 5
    workers.start()
    wait_for(all_terminal(world.engine), "a new worker to finish the orphaned batch")
    assert states(world.engine) == {"completed": 5}, workers.logs()
    assert len(index_state(os_client, world)) == 5


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_worker_stopped_mid_batch_strands_nothing(setup: Any, tmp_path: Path,
                                                    os_client: Any, sig: int) -> None:
    """Many messages; the worker is mid-bulk on some and holds more in its prefetch when
    it is killed (SIGKILL) or stopped (SIGTERM, its in-flight threads cut off by the
    shutdown timeout). A plain sweep() (after a kill) or just a new worker on this host
    (after a stop) finishes everything: no event is left enqueued or processing, none
    is counted twice, and the index equals the database."""
    world, workers, config = setup
    config.mode("dramatiq").chunk_size = 5  # 8 messages
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"survives {i}") for i in range(1, 41)])
        session.commit()
    stall = tmp_path / "stalled"
    # Batches of 10: each message takes along 5 more, so two threads leave 20 behind.
    doomed = workers.start(2, "--worker-shutdown-timeout", "500",
                           SCRYPATH_TEST_STALL_FILE=str(stall), SCRYPATH_TEST_BATCH_SIZE="10")
    wait_for(lambda: states(world.engine).get("processing", 0) >= 10,
             "both worker threads to be mid-bulk")
    workers.kill(doomed, sig)
    left = states(world.engine)
    assert left.get("processing", 0) >= 10 and left.get("enqueued", 0) > 0, left

    if sig == signal.SIGKILL:
        report = scrypath_sa.sweep()  # default ages: the dead claims are found by pid
        unfinished = sum(n for state, n in left.items() if state not in TERMINAL)
        assert report.dispatched == unfinished  # each event once
    workers.start()  # its boot finds the claims of the worker that died on this host
    wait_for(all_terminal(world.engine), "the events of the stopped worker to finish")
    assert states(world.engine) == {"completed": 40}, workers.logs()
    assert index_state(os_client, world) == db_state(world)


def test_a_worker_takes_along_the_events_of_the_messages_behind_its_own(
        setup: Any, os_client: Any) -> None:
    """30 single-row commits make 30 messages; the first one a worker takes claims the
    events of all of them (one claim, one read, one request; PostgreSQL), and the other
    29 find their events taken. Every event is written once and completed."""
    world, workers, config = setup
    for i in range(1, 31):
        with world.Session() as session:
            session.add(world.Article(id=i, title=f"small {i}"))
            session.commit()
    assert config.mode("dramatiq").flush()
    workers.start(threads=1)
    wait_for(all_terminal(world.engine), "the worker to finish")
    assert states(world.engine) == {"completed": 30}, workers.logs()
    with world.engine.connect() as conn:
        claims = conn.execute(select(sync_events.c.processing_at, sync_events.c.attempts)).all()
    assert {attempts for _, attempts in claims} == {1}
    assert len(index_state(os_client, world)) == 30
    distinct_claims = len({when for when, _ in claims})
    if world.engine.dialect.name == "postgresql":
        assert distinct_claims <= 2, distinct_claims  # its own, and the rest in one go
    else:  # SQLite has no SKIP LOCKED: each message claims its own
        assert distinct_claims == 30


def test_commits_ride_on_a_doorbell_and_a_full_claim_rings_again(
        setup: Any, os_client: Any) -> None:
    """On PostgreSQL, single-row commits within a doorbell's window send nothing: their
    outcome says enqueued, their rows read requested. The doorbell's worker (batches of
    4 here) claims 4 due events, rings again, and so on until all 21 are completed."""
    world, workers, config = setup
    mode = config.mode("dramatiq")
    mode.collect = 2.0  # a window of 1 s: every commit below rides on the first one's
    for i in range(1, 22):
        with world.Session() as session:
            session.add(world.Article(id=i, title=f"bell {i}"))
            session.commit()
            assert scrypath_sa.last_outcome(session).state == "enqueued"
    assert mode.flush()
    if world.engine.dialect.name == "postgresql":
        assert states(world.engine) == {"enqueued": 1, "requested": 20}
    else:  # no claim of due events on SQLite: each commit sends its own message
        assert states(world.engine) == {"enqueued": 21}
    workers.start(threads=2, SCRYPATH_TEST_BATCH_SIZE="4")
    wait_for(all_terminal(world.engine), "the worker to finish")
    assert states(world.engine) == {"completed": 21}, workers.logs()
    assert len(index_state(os_client, world)) == 21
    with world.engine.connect() as conn:
        attempts = set(conn.execute(select(sync_events.c.attempts)).scalars())
    assert attempts == {1}


def test_redelivery_and_two_workers_never_double_process(setup: Any, os_client: Any) -> None:
    world, workers, config = setup
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"once {i}") for i in range(1, 61)])
        session.commit()
    with world.engine.connect() as conn:
        ids = list(conn.execute(select(sync_events.c.id)).scalars())
    mode = config.mode("dramatiq")
    for _ in range(3):  # the same ids delivered again, as a redelivery would
        mode.actor.send(ids)
    workers.start(threads=4)
    workers.start(threads=4)
    wait_for(all_terminal(world.engine), "both workers to finish")
    with world.engine.connect() as conn:
        attempts = set(conn.execute(select(sync_events.c.attempts)).scalars())
    assert attempts == {1}  # no event was claimed twice
    assert states(world.engine) == {"completed": 60}
    assert len(index_state(os_client, world)) == 60


@pytest.mark.filterwarnings("ignore:DELETE statement on table:sqlalchemy.exc.SAWarning")
def test_concurrent_writers_and_two_workers_converge(setup: Any, os_client: Any) -> None:
    world, workers, _ = setup
    workers.start(threads=4)
    workers.start(threads=4)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        rng = random.Random(n)
        try:
            for step in range(15):
                with world.Session() as session:
                    key = rng.randrange(1, 41)
                    article = session.get(world.Article, key)
                    if article is None:
                        session.add(world.Article(id=key, title=f"w{n}s{step}"))
                    elif rng.random() < 0.2:
                        session.delete(article)
                    else:
                        article.title = f"w{n}s{step}"
                        article.published = rng.random() > 0.1
                    try:
                        session.commit()
                    except Exception:  # noqa: BLE001 - two writers inserted one key: retry later
                        session.rollback()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    wait_for(all_terminal(world.engine), "the workers to drain", timeout=180)
    assert set(states(world.engine)) == {"completed"}, workers.logs()
    assert index_state(os_client, world) == db_state(world)


def test_opensearch_down_while_the_worker_runs_then_recovery(setup: Any,
                                                             tmp_path: Path) -> None:
    world, workers, _ = setup
    port = servicekit.free_port()
    node = servicekit.start_opensearch(tmp_path / "node", port, heap="512m")
    node.stop()
    workers.start(SCRYPATH_TEST_OPENSEARCH_URL=node.url, SCRYPATH_TEST_MAX_RETRIES="40")
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"waits {i}") for i in range(1, 4)])
        session.commit()
    wait_for(lambda: states(world.engine).get("retrying") == 3, "the worker to hit the outage")
    restarted = servicekit.start_opensearch(tmp_path / "node", port, heap="512m")
    try:
        wait_for(all_terminal(world.engine), "Dramatiq's retries to finish after recovery")
        assert states(world.engine) == {"completed": 3}, workers.logs()
        from opensearchpy import OpenSearch

        client = OpenSearch(restarted.url)
        assert client.count(index=f"{world.prefix}_articles")["count"] == 3
    finally:
        restarted.stop()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_restarted_under_a_running_worker(setup: Any, os_client: Any,
                                                     faults: Any) -> None:
    """PostgreSQL restarts (every connection cut) while a worker holds pooled
    connections: the work before and after the restart all completes."""
    world, workers, config = setup
    workers.start()
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"before {i}") for i in range(1, 21)])
        session.commit()
    wait_for(all_terminal(world.engine), "the worker to finish the first commit")
    faults.restart_postgres()
    world.engine.dispose()  # this process's pool, as pool_pre_ping would
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"after {i}") for i in range(21, 41)])
        session.commit()
    config.mode("dramatiq").flush()
    wait_for(lambda: states(world.engine) == {"completed": 40},
             "the worker to finish after the restart (Dramatiq retries a failed message)")
    assert_in_step(world, os_client)


def test_flush_ends_the_relays_linger() -> None:
    """Pure logic: with a long linger, ``flush`` still returns once the queued sends
    and marks are done, and the marks went out in one batch."""
    from unittest import mock

    from scrypath_sa.modes.dramatiq import _Relay

    mode = mock.Mock(linger=60.0, chunk_size=500)
    mode.name = "dramatiq"
    mode.send.return_value = None  # the broker accepts everything
    relay = _Relay(mode)
    engine = mock.MagicMock()
    for i in range(3):
        relay.put((engine, [i], True))
    assert relay.flush(timeout=20)
    assert mode.send.call_args_list == [mock.call([0, 1, 2])]
    assert engine.begin.call_count == 1  # one transaction marked all three


def test_freeze_gc_freezes_a_booted_worker_only_when_asked() -> None:
    """Pure logic: the mode's worker middleware calls ``gc.freeze()`` at worker boot
    when a mode on that broker asked for it, and leaves the collector alone otherwise."""
    import gc

    from dramatiq.brokers.stub import StubBroker

    plain, frozen = StubBroker(), StubBroker()
    DramatiqMode(plain)
    DramatiqMode(frozen, freeze_gc=True)
    DramatiqMode(frozen, actor_name="another")  # a second mode does not undo the first
    gc.unfreeze()  # whatever an import froze before (seen on Python 3.12)
    assert gc.get_freeze_count() == 0
    try:
        plain.emit_after("worker_boot", None)
        assert gc.get_freeze_count() == 0
        frozen.emit_after("worker_boot", None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_doorbell_window_doubles_while_commits_ride_and_starts_over_after_a_quiet_one(
) -> None:
    """The window arithmetic (no broker involved: times given): ``collect / 2`` at
    first; twice the last window while commits rode on it and the next doorbell follows
    it closely; never more than ``collect * 4``; back to ``collect / 2`` after a window
    nobody rode on, or a pause."""
    from dramatiq.brokers.stub import StubBroker

    mode = DramatiqMode(StubBroker(), collect=0.1)
    now = 1000.0
    windows = []
    for _ in range(6):  # a stream: every window has riders; each bell follows the last
        window = mode._window(now)
        mode._rang(now, window)
        assert mode._ride(now + window / 2)
        windows.append(window)
        now += window + 0.001
    assert windows == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4])
    assert not mode._ride(now)  # the last window is over
    # Nobody rode on this one: the next starts over.
    mode._rang(now, mode._window(now))
    now += 0.4 + 0.001
    assert mode._window(now) == pytest.approx(0.05)
    # Riders, but the next commit comes long after the window: starts over too.
    mode._rang(now, 0.05)
    assert mode._ride(now + 0.01)
    assert mode._window(now + 5.0) == pytest.approx(0.05)
