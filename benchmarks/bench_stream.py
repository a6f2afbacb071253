"""The streaming write path beside pgsync: a stream of single-row commits.

    python -m benchmarks.bench_stream [--rows 2000] [--rounds 5] [--threads 8] [--quick]

One client thread commits ``--rows`` single-row INSERTs, then as many single-row
UPDATEs (the ORM, one session per commit), into a table of the same shape for every
variant (bigint id, a title, a 200-byte body, an integer), on one machine: PostgreSQL
(started here with ``wal_level=logical`` and fsync off), Redis, OpenSearch (1 shard, 0
replicas, the default refresh interval). Variants, each round in the order of a
balanced Latin square (over as many rounds as variants, each runs right after every
other once; :func:`round_order`):

* ``plain``: SQLAlchemy, no sync (the limit);
* ``pgsync``: the pgsync daemon (PyPI ``pgsync``, in a virtualenv of its own under
  ``.bench/``), reading the WAL of a database of its own through a logical slot;
* ``hand``: the hand-written mixin: ``client.index()`` per changed row in
  ``after_commit``;
* ``dramatiq``: scrypath_sa's ``dramatiq`` mode (default settings), one worker process
  (``dramatiq --processes 1 --threads 8``) on this machine;
* ``trigger``: the same, the model captured by trigger (``__search_capture__ =
  "trigger"``: the table's trigger records the events, the session only wakes the
  worker), the same worker process;
* ``inline``: scrypath_sa's ``inline`` mode (each commit returns visible).

Per variant: commits/s; the time from the first commit until every row's last update
is searchable; and the CPU of the whole pipeline per commit (client, pgsync or the
worker, PostgreSQL, OpenSearch, Redis; from /proc) over that time and, for the worker's
variants, until their events are recorded ``completed`` (their confirmer's work is
theirs, and the next variant's round starts without it), and until what the round left
behind is done (:func:`settle`: a VACUUM of the tables it changed, OpenSearch's merges of
its index; else it runs in the next variant's round). The sync process of the other
variants is paused (SIGSTOP) outside its own turn. Before the rounds each
variant streams ``--warmup`` rows (JIT warm-up of OpenSearch and the processes). Medians
of the rounds, with min-max. ``--quick``: 300 rows, 2 rounds, 300 rows of warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, String, Text, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import scrypath_sa
from benchmarks._support import ROOT, cpu_seconds, servicekit, services, tree_cpu

PREFIX = os.environ.get("SCRYPATH_BENCH_PREFIX") or f"bs{uuid.uuid4().hex[:6]}"
QUEUE = f"q{PREFIX}"
BODY = "b" * 200
PGSYNC = "pgsync==7.3.0"
PGSYNC_DB = "bench_pgsync"
SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}


class Base(DeclarativeBase):
    pass


class _Row:
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    views: Mapped[int]


class Plain(_Row, Base):
    __tablename__ = "bench_stream_plain"


class Hand(_Row, Base):
    __tablename__ = "bench_stream_hand"


class Ours(_Row, scrypath_sa.Searchable, Base):
    __tablename__ = "bench_stream_ours"
    __search_index__ = f"{PREFIX}_ours"
    __search_contract__ = {"settings": SETTINGS}


class Inline(_Row, scrypath_sa.Searchable, Base):
    __tablename__ = "bench_stream_inline"
    __search_index__ = f"{PREFIX}_inline"
    __search_contract__ = {"settings": SETTINGS}


class Trig(_Row, scrypath_sa.Searchable, Base):
    __tablename__ = "bench_stream_trig"
    __search_index__ = f"{PREFIX}_trig"
    __search_contract__ = {"settings": SETTINGS}
    __search_capture__ = "trigger"


class PgsyncBase(DeclarativeBase):
    pass


class Peer(_Row, PgsyncBase):
    __tablename__ = "bench_stream_pgsync"


def configure_dramatiq(engine: Any, redis_url: str, opensearch_url: str,
                       maker: Any) -> scrypath_sa.Config:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from scrypath_sa.backends import OpenSearchBackend
    from scrypath_sa.modes.dramatiq import DramatiqMode

    broker = RedisBroker(url=redis_url)
    dramatiq.set_broker(broker)
    return scrypath_sa.configure(maker, backend=OpenSearchBackend(opensearch_url),
                                 mode="dramatiq", bind=engine,
                                 modes={"dramatiq": DramatiqMode(broker, queue_name=QUEUE)})


# The worker process imports this module and configures itself from the environment.
if os.environ.get("SCRYPATH_BENCH_WORKER"):
    _engine = create_engine(os.environ["SCRYPATH_TEST_DATABASE_URL"])
    configure_dramatiq(_engine, os.environ["SCRYPATH_TEST_REDIS_URL"],
                       os.environ["SCRYPATH_TEST_OPENSEARCH_URL"], sessionmaker(_engine))


def stream(maker: Any, cls: type[_Row], rows: int, first: int, marker: int) -> None:
    """``rows`` single-row INSERT commits, then an UPDATE commit of each row."""
    for i in range(first, first + rows):
        with maker() as session:
            session.add(cls(id=i, title=f"row {i}", body=BODY, views=i))
            session.commit()
    for i in range(first, first + rows):
        with maker() as session:
            row = session.get(cls, i)
            assert row is not None
            row.views = marker
            session.commit()


def pgsync_venv() -> Path:
    """pgsync in a virtualenv of its own (made once, under .bench/)."""
    venv = ROOT / ".bench" / "pgsync-venv"
    if not (venv / "bin" / "pgsync").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", PGSYNC], check=True)
    return venv


@contextlib.contextmanager
def pgsync_daemon(pg_url: str, redis_url: str, opensearch_url: str,
                  workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    from sqlalchemy.engine import make_url

    venv = pgsync_venv()
    pg, redis, search = make_url(pg_url), make_url(redis_url), make_url(opensearch_url)
    schema = workdir / "schema.json"
    schema.write_text(json.dumps([{
        "database": PGSYNC_DB, "index": f"{PREFIX}_pgsync", "setting": SETTINGS,
        "nodes": {"table": Peer.__tablename__, "columns": ["id", "title", "body", "views"]}}]))
    env = {**os.environ, "PG_HOST": pg.host or "", "PG_PORT": str(pg.port),
           "PG_USER": pg.username or "", "PG_PASSWORD": pg.password or "",
           "REDIS_HOST": redis.host or "", "REDIS_PORT": str(redis.port),
           "ELASTICSEARCH_HOST": search.host or "", "ELASTICSEARCH_PORT": str(search.port),
           "ELASTICSEARCH_SCHEME": "http", "OPENSEARCH": "true", "ELASTICSEARCH": "false",
           "SCHEMA": str(schema)}
    subprocess.run([str(venv / "bin" / "bootstrap"), "--config", str(schema)], cwd=workdir,
                   env=env, check=True, capture_output=True)
    log = (workdir / "pgsync.log").open("wb")
    daemon = subprocess.Popen([str(venv / "bin" / "pgsync"), "--config", str(schema),
                               "--daemon"], cwd=workdir, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield daemon
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)


@contextlib.contextmanager
def dramatiq_worker(urls: dict[str, str], threads: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SCRYPATH_BENCH_WORKER": "1", "SCRYPATH_BENCH_PREFIX": PREFIX,
           "SCRYPATH_TEST_DATABASE_URL": urls["postgresql"],
           "SCRYPATH_TEST_REDIS_URL": urls["redis"],
           "SCRYPATH_TEST_OPENSEARCH_URL": urls["opensearch"],
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    log = (Path(tempfile.gettempdir()) / f"{PREFIX}-worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "benchmarks.bench_stream", "--processes", "1",
         "--threads", str(threads), "--queues", QUEUE],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield worker
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)


def wait_until(check: Callable[[], bool], timeout: float = 300.0,
               explain: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("not done in time" + (f": {explain()}" if explain else ""))
        time.sleep(0.02)


def event_states(engine: Any) -> str:
    """``sync_events`` per state (what a stalled worker variant left)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT state, count(*) FROM sync_events GROUP BY state ORDER BY state")).all()
    return "sync_events " + (", ".join(f"{state} {count}" for state, count in rows) or "empty")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8, help="the worker's threads")
    parser.add_argument("--variants", default="plain,pgsync,hand,dramatiq,trigger,inline")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="rows each variant streams before the rounds")
    parser.add_argument("--quick", action="store_true", help="300 rows, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds, args.warmup = 300, 2, 300
    variants = args.variants.split(",")

    from opensearchpy import OpenSearch

    from scrypath_sa.backends import OpenSearchBackend

    workdir = Path(tempfile.mkdtemp(prefix="scrypath-stream-"))
    workdir.chmod(0o755)
    postgres = servicekit.start_postgres(workdir / "pg", logical=True)
    try:
        with services("redis", "opensearch") as urls:
            urls = {**urls, "postgresql": postgres.url}
            run(args, variants, urls, workdir, OpenSearch(urls["opensearch"], timeout=120),
                OpenSearchBackend)
    finally:
        postgres.stop()


def run(args: Any, variants: list[str], urls: dict[str, str], workdir: Path, client: Any,
        backend_cls: Any) -> None:
    engine = create_engine(urls["postgresql"])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {PGSYNC_DB}"))
    peer_engine = create_engine(engine.url.set(database=PGSYNC_DB))
    Base.metadata.create_all(engine)
    PgsyncBase.metadata.create_all(peer_engine)
    scrypath_sa.metadata.create_all(engine)
    scrypath_sa.triggers.install(engine, [Trig])
    makers = {"plain": sessionmaker(engine), "hand": sessionmaker(engine),
              "dramatiq": sessionmaker(engine), "inline": sessionmaker(engine),
              "pgsync": sessionmaker(peer_engine)}
    configure_dramatiq(engine, urls["redis"], urls["opensearch"], makers["dramatiq"])
    makers["trigger"] = makers["dramatiq"]
    scrypath_sa.configure(makers["inline"], backend=backend_cls(urls["opensearch"]),
                          mode="inline")
    hand_index = f"{PREFIX}_hand"
    client.indices.create(index=hand_index, body={"settings": SETTINGS})

    @event.listens_for(makers["hand"], "after_flush")
    def remember(session: Session, context: Any) -> None:
        session.info.setdefault("hand", []).extend(
            [o for o in (*session.new, *session.dirty) if isinstance(o, Hand)])

    @event.listens_for(makers["hand"], "after_commit")
    def index_rows(session: Session) -> None:  # the mixin everyone copies
        for row in session.info.pop("hand", []):
            client.index(index=hand_index, id=str(row.id), body={
                "id": row.id, "title": row.title, "body": row.body, "views": row.views})

    classes = {"plain": Plain, "hand": Hand, "dramatiq": Ours, "inline": Inline,
               "pgsync": Peer, "trigger": Trig}
    indices = {"hand": hand_index, "dramatiq": Ours.__search_index__,
               "trigger": Trig.__search_index__,
               "inline": Inline.__search_index__, "pgsync": f"{PREFIX}_pgsync"}
    results: dict[str, dict[str, list[float]]] = {v: {"rate": [], "visible": [], "cpu": []}
                                                  for v in variants}
    with contextlib.ExitStack() as stack:
        sync_processes: dict[str, subprocess.Popen[bytes]] = {}
        if "pgsync" in variants:
            sync_processes["pgsync"] = stack.enter_context(pgsync_daemon(
                urls["postgresql"].replace("postgresql+psycopg", "postgresql"),
                urls["redis"], urls["opensearch"], workdir))
        workers = [v for v in ("dramatiq", "trigger") if v in variants]
        if workers:  # one worker process serves both
            worker = stack.enter_context(dramatiq_worker(urls, args.threads))
            sync_processes.update((v, worker) for v in workers)
        # Warm each variant up: its index exists, its process has started, and
        # OpenSearch's JIT has compiled the indexing paths (on a fresh node its compiler
        # threads otherwise take 40% of a core for minutes, charged to whichever
        # variant runs then).
        for name in variants:
            stream(makers[name], classes[name], args.warmup, 900_000_000, -1)
            if name in indices:
                wait_until(lambda name=name: visible(client, indices[name], -1)
                           == args.warmup, explain=lambda: event_states(engine))
        try:
            for r in range(args.rounds):
                for name in round_order(variants, r):
                    running = sync_processes.get(name)
                    for process in sync_processes.values():
                        os.killpg(process.pid, signal.SIGCONT if process is running
                                  else signal.SIGSTOP)
                    first, marker = (r + 1) * 1_000_000, -(r + 2)
                    pids = [p.pid for o, p in sync_processes.items() if o == name]
                    before, sync_before = cpu_seconds(), sum(tree_cpu(p) for p in pids)
                    index_before = index_work(client, indices.get(name))
                    began = time.perf_counter()
                    stream(makers[name], classes[name], args.rows, first, marker)
                    committed = time.perf_counter() - began
                    if name in indices:
                        wait_until(lambda name=name, marker=marker: visible(
                            client, indices[name], marker) == args.rows,
                            explain=lambda: event_states(engine))
                    seen = time.perf_counter() - began
                    if name in workers:  # its events recorded completed: its work is done
                        wait_until(lambda: open_events(engine) == 0,
                                   explain=lambda: event_states(engine))
                    settle(peer_engine if name == "pgsync" else engine,
                           [classes[name].__tablename__,
                            *(["sync_events"] if issubclass(classes[name],
                                                            scrypath_sa.Searchable) else [])],
                           client, indices.get(name))
                    after, sync_after = cpu_seconds(), sum(tree_cpu(p) for p in pids)
                    index_after = index_work(client, indices.get(name))
                    for key, count in index_after.items():
                        results[name].setdefault(key, []).append(count - index_before[key])
                    parts = {k: after[k] - before[k] for k in after}
                    parts["sync process"] = sync_after - sync_before
                    per_commit = 1000 / (2 * args.rows)
                    results[name]["rate"].append(2 * args.rows / committed)
                    results[name]["visible"].append(seen if name in indices else 0.0)
                    results[name]["cpu"].append(sum(parts.values()) * per_commit)
                    for part, used in parts.items():
                        results[name].setdefault(f"cpu {part}", []).append(used * per_commit)
        finally:
            for process in sync_processes.values():
                os.killpg(process.pid, signal.SIGCONT)
    client.indices.delete(index=f"{PREFIX}*", ignore_unavailable=True)
    report(args, results)


def round_order(variants: list[str], r: int) -> list[str]:
    """Round ``r``'s order: a balanced (Williams) Latin square, so that over ``len(variants)``
    rounds each variant runs right after every other once (a cyclic rotation kept each
    variant after the same one in every round: what one leaves behind fell on the same
    successor each time). An odd number of variants takes twice as many rounds, the
    second half reversed."""
    n = len(variants)
    base = [0]
    for i in range(1, n):
        base.append((i + 1) // 2 if i % 2 else n - i // 2)
    order = [variants[(b + r) % n] for b in base]
    return order[::-1] if n % 2 and (r // n) % 2 else order


def settle(engine: Any, tables: list[str], client: Any, index: str | None) -> None:
    """What a round leaves behind, done in that round (its CPU is the round's): VACUUM
    the tables it changed (else autovacuum does it later, during another variant's
    round), and wait until OpenSearch merges nothing in its index."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"VACUUM (ANALYZE) {table}"))
    if index is not None:
        wait_until(lambda: client.indices.stats(index=index, metric="merge")[
            "_all"]["total"]["merges"]["current"] == 0)


def open_events(engine: Any) -> int:
    """Events not yet ``completed`` (or ``discarded``)."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM sync_events WHERE completed_at IS NULL "
            "AND discarded_at IS NULL")).scalar_one())


def index_work(client: Any, index: str | None) -> dict[str, float]:
    """What OpenSearch did so far: the index's refreshes, merges and their time, and
    the node's write requests (one variant runs at a time)."""
    if index is None:
        return {}
    total = client.indices.stats(index=index, metric="refresh,merge,indexing")["_all"]["total"]
    node = next(iter(client.nodes.stats(metric="thread_pool")["nodes"].values()))
    return {"refreshes": total["refresh"]["total"],
            "refresh ms": total["refresh"]["total_time_in_millis"],
            "merges": total["merges"]["total"],
            "merge ms": total["merges"]["total_time_in_millis"],
            "indexing ms": total["indexing"]["index_time_in_millis"],
            "write requests": node["thread_pool"]["write"]["completed"]}


def visible(client: Any, index: str, marker: int) -> int:
    """How many documents of ``index`` search sees with their last update."""
    from opensearchpy.exceptions import TransportError

    try:
        found: int = client.count(index=index,
                                  body={"query": {"term": {"views": marker}}})["count"]
    except TransportError:  # not created yet, or its shard not started yet
        return 0
    return found


def report(args: Any, results: dict[str, dict[str, list[float]]]) -> None:
    def cell(values: list[float], fmt: str) -> str:
        return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-"
                f"{max(values):{fmt}})")

    print(f"{args.rows} single-row INSERT commits, then {args.rows} UPDATE commits; "
          f"{args.rounds} alternating rounds; medians (min-max)")
    print(f"{'variant':9} {'commits/s':>22} {'all visible after (s)':>24} "
          f"{'CPU ms per commit':>22}")
    for name, got in results.items():
        shown = cell(got["visible"], ".2f") if any(got["visible"]) else "-"
        print(f"{name:9} {cell(got['rate'], '.0f'):>22} {shown:>24} "
              f"{cell(got['cpu'], '.2f'):>22}")
    print("CPU ms per commit by part (medians):")
    for name, got in results.items():
        print(f"  {name:9} " + ", ".join(
            f"{key[4:]} {statistics.median(values):.2f}" for key, values in got.items()
            if key.startswith("cpu ")))
    print("OpenSearch work per round (medians):")
    for name, got in results.items():
        if "refreshes" in got:
            print(f"  {name:9} " + ", ".join(
                f"{key} {statistics.median(got[key]):.0f}"
                for key in ("refreshes", "refresh ms", "merges", "merge ms", "indexing ms",
                            "write requests")))
    med = statistics.median
    for name in ("dramatiq", "trigger"):
        if "pgsync" not in results or name not in results:
            continue
        ours, peer = results[name], results["pgsync"]
        print(f"RATIO {name}/pgsync commits/s = {med(ours['rate']) / med(peer['rate']):.2f}x "
              "(goal >= 1.0)")
        print(f"RATIO {name}/pgsync visible after = "
              f"{med(ours['visible']) / med(peer['visible']):.2f}x (goal <= 1.0)")
        print(f"RATIO {name}/pgsync CPU per commit = "
              f"{med(ours['cpu']) / med(peer['cpu']):.2f}x (goal <= 1.0)")


if __name__ == "__main__":
    main()
