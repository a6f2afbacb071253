"""Dramatiq mode: write-path overhead and end-to-end throughput, with baselines in the same run.

    python -m benchmarks.bench_dramatiq [--single 1000] [--bulk-commits 10] [--bulk-rows 1000]
                                        [--e2e-rows 20000] [--rounds 3] [--threads 8]
                                        [--body-bytes 0] [--durable] [--freeze-gc]

* write path on PostgreSQL: N single-row commits and M commits of K rows through a
  session configured in ``dramatiq`` mode (outbox INSERT, broker send, ``enqueued``
  mark) against the same commits through a plain session, back to back in each round
  (which goes first alternates); the median of the rounds' ratios and their spread;
  goals <= 1.5x and <= 1.15x;
* commit to completed, with one worker process (``dramatiq --processes 1 --threads N``):
  the same commits made while the worker is paused (SIGSTOP), then timed from resuming
  it until every event is ``completed`` (visible), against ``helpers.bulk`` of the same
  documents plus one refresh (in each round, right after the drain); goal >= 0.6x of
  its throughput. Also reported: commits
  and worker running at once, first commit to last completed; that one is bounded by
  how fast the application itself can commit on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dramatiq.brokers.redis import RedisBroker
from opensearchpy import OpenSearch, helpers
from sqlalchemy import String, Text, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import scrypath_sa
from benchmarks._support import ROOT, servicekit, services, summary, timed
from scrypath_sa import sync_events
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.modes.dramatiq import DramatiqMode

PREFIX = os.environ.get("SCRYPATH_BENCH_PREFIX") or f"bd{uuid.uuid4().hex[:6]}"
QUEUE = f"q{PREFIX}"
MAPPINGS = {"properties": {"title": {"type": "text"}, "views": {"type": "integer"}}}


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "bench_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    views: Mapped[int]
    body: Mapped[str] = mapped_column(Text, default="")


class Synced(scrypath_sa.Searchable, Base):
    __tablename__ = "bench_synced"
    __search_index__ = f"{PREFIX}_synced"
    __search_contract__ = {"mappings": MAPPINGS,
                           "settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    views: Mapped[int]
    body: Mapped[str] = mapped_column(Text, default="")


class Triggered(scrypath_sa.Searchable, Base):
    """The same, captured by a trigger on its table (``__search_capture__``)."""

    __tablename__ = "bench_triggered"
    __search_index__ = f"{PREFIX}_triggered"
    __search_contract__ = {"mappings": MAPPINGS,
                           "settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    __search_capture__ = "trigger"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    views: Mapped[int]
    body: Mapped[str] = mapped_column(Text, default="")


BODY = "lorem ipsum dolor sit amet " * 1000  # sliced to --body-bytes


def configure(engine: Any, redis_url: str, opensearch_url: str,
              maker: sessionmaker[Session], background: bool = False,
              **options: Any) -> scrypath_sa.Config:
    broker = RedisBroker(url=redis_url)
    import dramatiq

    dramatiq.set_broker(broker)
    mode = DramatiqMode(broker, queue_name=QUEUE, background=background, **options)
    return scrypath_sa.configure(maker, backend=OpenSearchBackend(opensearch_url),
                                 mode="dramatiq", bind=engine, modes={"dramatiq": mode})


# The worker process imports this module and configures itself from the environment.
if os.environ.get("SCRYPATH_BENCH_WORKER"):
    _engine = create_engine(os.environ["SCRYPATH_TEST_DATABASE_URL"])
    configure(_engine, os.environ["SCRYPATH_TEST_REDIS_URL"],
              os.environ["SCRYPATH_TEST_OPENSEARCH_URL"], sessionmaker(_engine),
              freeze_gc=bool(os.environ.get("SCRYPATH_BENCH_FREEZE_GC")))


def reset(engine: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE bench_plain, bench_synced, bench_triggered, sync_events"))


def commits(maker: Any, cls: Any, n_commits: int, rows: int, start: int,
            body: str = "", database_ids: bool = False) -> None:
    """``database_ids``: the rows' ids are left to the database (the ORM then sends a
    flush's INSERTs as one statement with RETURNING; with ids given, psycopg sends one
    per row)."""
    key = start
    for _ in range(n_commits):
        with maker() as session:
            for _ in range(rows):
                key += 1
                row = cls(title=f"row {key}", views=key, body=body)
                if not database_ids:
                    row.id = key
                session.add(row)
            session.commit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--bulk-commits", type=int, default=10)
    parser.add_argument("--bulk-rows", type=int, default=1000)
    parser.add_argument("--e2e-rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument("--parts", default="write,e2e", help="which measurements to run")
    parser.add_argument("--body-bytes", type=int, default=0,
                        help="a text body of this size in every document (end to end)")
    parser.add_argument("--durable", action="store_true",
                        help="a PostgreSQL of its own with fsync and synchronous commit on")
    parser.add_argument("--freeze-gc", action="store_true",
                        help="the worker with DramatiqMode(freeze_gc=True)")
    parser.add_argument("--ids", choices=("given", "database"), default="given",
                        help="write path: ids given by the application, or made by the "
                             "database (sequence; the ORM batches the INSERTs)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="event ids per message (default: the library's)")
    args = parser.parse_args()

    with services("postgresql", "redis", "opensearch") as urls, \
            durable_postgres(args.durable) as durable_url:
        urls = {**urls, "postgresql": durable_url or urls["postgresql"]}
        print("PostgreSQL: " + ("durable (fsync and synchronous commit on, its defaults)"
                                if durable_url else "the test server (fsync off)"))
        print(f"write path: ids {'made by the database' if args.ids == 'database' else 'given'}")
        engine = create_engine(urls["postgresql"])
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_plain, bench_synced, bench_triggered, "
                              "sync_events"))
        Base.metadata.create_all(engine)
        scrypath_sa.metadata.create_all(engine)
        scrypath_sa.triggers.install(engine, [Triggered])
        plain_maker = sessionmaker(engine)
        synced_maker = sessionmaker(engine)
        background_maker = sessionmaker(engine)
        background_mode = configure(engine, urls["redis"], urls["opensearch"], background_maker,
                                    background=True).mode("dramatiq")
        options = {"chunk_size": args.chunk_size} if args.chunk_size else {}
        config = configure(engine, urls["redis"], urls["opensearch"], synced_maker, **options)
        broker = config.mode("dramatiq").broker  # type: ignore[attr-defined]

        # ------------------------------------------------------------ write path
        results: dict[str, dict[str, list[float]]] = {"single": {}, "bulk": {}}
        mode = config.mode("dramatiq")
        flush_times: dict[str, list[float]] = {"single": [], "bulk": []}
        shapes = {"single": (args.single, 1), "bulk": (args.bulk_commits, args.bulk_rows)}
        for r in range(args.rounds if "write" in args.parts else 0):
            for shape, (n, rows) in shapes.items():
                reset(engine)
                broker.client.delete(f"dramatiq:{QUEUE}", f"dramatiq:{QUEUE}.msgs")
                pair = [("plain", plain_maker, Plain), ("dramatiq", synced_maker, Synced),
                        ("trigger", synced_maker, Triggered)]
                turn = r % len(pair)
                for name, maker, cls in pair[turn:] + pair[:turn]:  # alternating
                    results[shape].setdefault(name, []).append(timed(
                        lambda n=n, rows=rows, maker=maker, cls=cls: commits(
                            maker, cls, n, rows, 0, database_ids=args.ids == "database")))
                # The enqueued marks are written off the committing thread; wait for them
                # outside the timed part and report how long they trailed.
                flush_times[shape].append(timed(mode.flush))  # type: ignore[attr-defined]
                reset(engine)
                results[shape].setdefault("background", []).append(
                    timed(lambda n=n, rows=rows: commits(background_maker, Synced, n, rows, 0,
                                                         database_ids=args.ids == "database")))
                background_mode.flush()  # type: ignore[attr-defined]
        if "write" in args.parts:
            with engine.connect() as conn:
                enqueued = conn.execute(select(func.count()).where(
                    sync_events.c.state == "enqueued")).scalar_one()
            assert enqueued == args.bulk_commits * args.bulk_rows, enqueued  # background run
        for shape, (n, rows) in shapes.items() if "write" in args.parts else ():
            plain, synced = results[shape]["plain"], results[shape]["dramatiq"]
            print(f"write path {n} commits x {rows} rows: plain {summary(plain)}; "
                  f"dramatiq {summary(synced)}; enqueued marks trailed by "
                  f"{max(flush_times[shape]) * 1000:.0f}ms at most")
            goal = "1.5" if shape == "single" else "1.15"
            background = results[shape]["background"]
            print(f"  dramatiq(background=True) {summary(background)}")
            # Each round times plain and the library back to back (who goes first
            # alternates): the median of the rounds' ratios, with their spread (single
            # rounds of plain commits vary by half here: the best of each is no measure).
            print(f"  dramatiq, captured by trigger {summary(results[shape]['trigger'])}")
            for label, times in (("", synced), ("_background", background),
                                 ("_trigger", results[shape]["trigger"])):
                ratios = [t / p for t, p in zip(times, plain, strict=True)]
                print(f"RATIO write_overhead_{shape}{label} = "
                      f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-"
                      f"{max(ratios):.2f} over {len(ratios)} rounds; goal <= {goal})")

        if "e2e" in args.parts:
            end_to_end(args, urls, engine, synced_maker, broker, config)
        OpenSearch(urls["opensearch"]).indices.delete(index=f"{PREFIX}*", ignore_unavailable=True)
        broker.client.delete(f"dramatiq:{QUEUE}", f"dramatiq:{QUEUE}.msgs")
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_plain, bench_synced, bench_triggered, "
                              "sync_events"))


def end_to_end(args: Any, urls: dict[str, str], engine: Any, synced_maker: Any,
               broker: Any, config: Any) -> None:
    """Commit to completed, with one worker process (see the module docstring)."""
    reset(engine)
    broker.client.delete(f"dramatiq:{QUEUE}", f"dramatiq:{QUEUE}.msgs")
    client = OpenSearch(urls["opensearch"], timeout=120)
    env = {**os.environ, "SCRYPATH_BENCH_WORKER": "1", "SCRYPATH_BENCH_PREFIX": PREFIX,
           "SCRYPATH_TEST_DATABASE_URL": urls["postgresql"],
           "SCRYPATH_TEST_REDIS_URL": urls["redis"],
           "SCRYPATH_TEST_OPENSEARCH_URL": urls["opensearch"],
           "SCRYPATH_BENCH_FREEZE_GC": "1" if args.freeze_gc else "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    log = Path("/tmp") / f"{PREFIX}-worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "benchmarks.bench_dramatiq", "--processes",
         "1", "--threads", str(args.threads), "--queues", QUEUE],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        # Warm the worker and the index up with one tiny commit before timing.
        commits(synced_maker, Synced, 1, 1, 10_000_000)
        wait_completed(engine, 1)
        rows, per_commit = args.e2e_rows, 1000
        body = BODY[:args.body_bytes]
        docs = [{"_index": f"{PREFIX}_raw", "_id": str(i),
                 "_source": {"id": i, "title": f"row {i}", "views": i, "body": body}}
                for i in range(1, rows + 1)]
        e2e, drain, committing, bulk = [], [], [], []
        for r in range(args.rounds):
            start = (r + 1) * 1_000_000
            # e2e: commits and the worker run at once, first commit to last completed
            # (bounded by how fast the app can commit: reported alongside).
            began = time.perf_counter()
            committing.append(timed(lambda start=start: commits(
                synced_maker, Synced, rows // per_commit, per_commit, start, body)))
            wait_completed(engine, 1 + (2 * r + 1) * rows)
            e2e.append(time.perf_counter() - began)
            # drain: the same work committed while the worker is paused (SIGSTOP),
            # then timed from SIGCONT to the last completed: the sync path's own
            # throughput from committed work to visible documents.
            os.killpg(worker.pid, signal.SIGSTOP)  # the CLI and its worker processes
            try:
                commits(synced_maker, Synced, rows // per_commit, per_commit,
                        start + 500_000, body)
                config.mode("dramatiq").flush()  # type: ignore[attr-defined]
            finally:
                os.killpg(worker.pid, signal.SIGCONT)
            began = time.perf_counter()
            wait_completed(engine, 1 + (2 * r + 2) * rows)
            drain.append(time.perf_counter() - began)
            # The baseline, in the same round (the cluster in the same state): the same
            # documents with helpers.bulk into a fresh index, plus one refresh.
            bulk.append(raw_bulk(client, docs))
    finally:
        worker.terminate()
        worker.wait(60)
    print(f"documents of about {len(body) + 40} bytes; worker freeze_gc={args.freeze_gc}")
    print(f"end to end {rows} rows in {rows // per_commit} commits, 1 worker x "
          f"{args.threads} threads: {summary(e2e)}  {rows / min(e2e):,.0f} docs/s "
          f"(the commits alone: {summary(committing)})")
    print(f"drain of committed work (worker resumed to last completed): "
          f"{summary(drain)}  {rows / min(drain):,.0f} docs/s")
    print(f"helpers.bulk of the same documents + refresh: {summary(bulk)}  "
          f"{rows / min(bulk):,.0f} docs/s")
    print(f"RATIO commit_to_completed_drain/helpers.bulk = {min(bulk) / min(drain):.2f}x "
          "(goal >= 0.6)")
    print(f"RATIO e2e_with_commits/helpers.bulk = {min(bulk) / min(e2e):.2f}x "
          f"(the dramatiq-mode commits alone: {min(bulk) / min(committing):.2f}x)")


def raw_bulk(client: Any, docs: list[dict[str, Any]]) -> float:
    client.indices.delete(index=f"{PREFIX}_raw", ignore_unavailable=True)
    client.indices.create(index=f"{PREFIX}_raw", body={"mappings": MAPPINGS})

    def run() -> None:
        helpers.bulk(client, docs, chunk_size=500)
        client.indices.refresh(index=f"{PREFIX}_raw")

    return timed(run)


@contextlib.contextmanager
def durable_postgres(wanted: bool) -> Iterator[str | None]:
    """A PostgreSQL with its durability defaults, started for this run, when wanted."""
    if not wanted:
        yield None
        return
    workdir = Path(tempfile.mkdtemp(prefix="scrypath-bench-durable-"))
    workdir.chmod(0o755)
    running = servicekit.start_postgres(workdir, durable=True)
    try:
        yield running.url
    finally:
        running.stop()


def wait_completed(engine: Any, expected: int, timeout: float = 600) -> None:
    """Until no event is open, then check that ``expected`` events are completed.

    The poll counts open events (``completed_at IS NULL``, the outbox's partial index):
    counting completed ones would scan the whole table 50 times a second and take CPU
    from the work being measured."""
    deadline = time.monotonic() + timeout
    t = sync_events
    open_events = select(func.count()).where(t.c.completed_at.is_(None))
    while True:
        with engine.connect() as conn:
            left = conn.execute(open_events).scalar_one()
        if not left:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {left} events still open")
        time.sleep(0.02)
    with engine.connect() as conn:
        done = conn.execute(select(func.count()).where(t.c.state == "completed")).scalar_one()
    if done != expected:
        raise SystemExit(f"{done} events completed, expected {expected}")


if __name__ == "__main__":
    main()

