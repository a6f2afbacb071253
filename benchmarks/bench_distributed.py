"""Distributed backfill on PostgreSQL: the same rows written by one process and by
Dramatiq workers, in one run.

    python -m benchmarks.bench_distributed [--rows 1000000] [--rounds 3] [--ranges 16]

Variants, each into a fresh physical index (same contract, refresh as configured),
alternating in order from round to round; medians, min-max; CPU seconds of each
component (client, workers, PostgreSQL, OpenSearch, Redis) from /proc:

* ``one process``: ``scrypath_sa.backfill`` in this process (pages of 1,000, the next
  page read while one is in flight);
* ``1 worker``: ``start_backfill(ranges=R)``, run by one ``dramatiq`` worker process
  (``--threads 8``, Dramatiq's default);
* ``2 workers``: the same with two worker processes.

The machine has 2 cores, shared by PostgreSQL, OpenSearch and the workers: the ratio
says what splitting costs or gains here, not what more machines would give.
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

from sqlalchemy import String, create_engine, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import scrypath_sa
from benchmarks._support import cpu_seconds, cpu_used, fresh_schema, services, tree_cpu

ROOT = Path(__file__).resolve().parent.parent
PREFIX = os.environ.get("SCRYPATH_BENCH_PREFIX") or f"bd{uuid.uuid4().hex[:6]}"
QUEUE = f"{PREFIX}_q"


class Base(DeclarativeBase):
    pass


class Item(scrypath_sa.Searchable, Base):
    __tablename__ = "bench_dist_items"
    __search_index__ = f"{PREFIX}_items"
    __search_contract__ = {
        "mappings": {"properties": {"name": {"type": "text"}, "price": {"type": "float"},
                                    "sku": {"type": "keyword"}}},
        "settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    sku: Mapped[str] = mapped_column(String(20))
    price: Mapped[float]


def configure(engine: Any, redis_url: str, opensearch_url: str) -> scrypath_sa.Config:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from scrypath_sa.backends import OpenSearchBackend
    from scrypath_sa.modes.dramatiq import DramatiqMode

    broker = RedisBroker(url=redis_url)
    dramatiq.set_broker(broker)
    return scrypath_sa.configure(sessionmaker(engine), backend=OpenSearchBackend(opensearch_url),
                                 bind=engine,
                                 modes={"dramatiq": DramatiqMode(broker, queue_name=QUEUE)})


# The worker processes import this module and configure themselves from the environment.
if os.environ.get("SCRYPATH_BENCH_WORKER"):
    configure(create_engine(os.environ["SCRYPATH_TEST_DATABASE_URL"]),
              os.environ["SCRYPATH_TEST_REDIS_URL"], os.environ["SCRYPATH_TEST_OPENSEARCH_URL"])


_worker_pids: list[int] = []


def tree_cpu_of_workers() -> float:
    """CPU seconds of the running worker processes (their whole trees) so far."""
    return sum(tree_cpu(pid) for pid in _worker_pids)


@contextlib.contextmanager
def workers(urls: dict[str, str], processes: int) -> Iterator[None]:
    """``processes`` dramatiq worker processes, ready for work when the block starts."""
    env = {**os.environ, "SCRYPATH_BENCH_WORKER": "1", "SCRYPATH_BENCH_PREFIX": PREFIX,
           "SCRYPATH_TEST_DATABASE_URL": urls["postgresql"],
           "SCRYPATH_TEST_REDIS_URL": urls["redis"],
           "SCRYPATH_TEST_OPENSEARCH_URL": urls["opensearch"],
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    path = Path(tempfile.gettempdir()) / f"{PREFIX}-workers-{uuid.uuid4().hex[:6]}.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "benchmarks.bench_distributed", "--processes",
             str(processes), "--threads", "8", "--queues", QUEUE],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _worker_pids.append(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while path.read_text(errors="replace").count("ready for action") < processes:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the workers did not start: {path}")
            time.sleep(0.1)  # until the log says each process is ready
        yield
    finally:
        _worker_pids.remove(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranges", type=int, default=16)
    args = parser.parse_args()
    os.environ["SCRYPATH_BENCH_PREFIX"] = PREFIX

    with services("postgresql", "opensearch", "redis") as urls:
        engine = create_engine(urls["postgresql"])
        fresh_schema(engine, Base.metadata, Item.__tablename__)
        began = time.perf_counter()
        with engine.begin() as conn:
            for start in range(1, args.rows + 1, 20_000):
                conn.execute(insert(Item), [
                    {"id": i, "name": f"item number {i}", "sku": f"SKU-{i:08d}",
                     "price": i / 100} for i in range(start, min(start + 20_000, args.rows + 1))])
        print(f"rows={args.rows} rounds={args.rounds} ranges={args.ranges} "
              f"(inserted in {time.perf_counter() - began:.0f}s)")
        config = configure(engine, urls["redis"], urls["opensearch"])
        from scrypath_sa.backends.base import admin_of
        from scrypath_sa.registry import info_for

        backend = admin_of(config.backend)
        info = info_for(Item)
        assert info is not None
        backend.ensure_index(info.index, info.contract, info.name)

        def fresh_index(tag: str, n: int) -> str:
            name = f"{info.index}_{tag}{n}"
            backend.create_index(name, info.contract, info.name, alias_for=info.index)
            return name

        Measured = tuple[str, float, dict[str, float]]  # index, seconds, CPU by part

        def one_process(n: int) -> Measured:
            into = fresh_index("one", n)
            before, start = cpu_seconds(), time.perf_counter()
            report = scrypath_sa.backfill(Item, into=into, resume=False, batch_size=1000)
            seconds, used = time.perf_counter() - start, cpu_used(before)
            assert report.indexed == args.rows, report
            return into, seconds, used

        def distributed(processes: int) -> Any:
            def run(n: int) -> Measured:
                into = fresh_index(f"w{processes}_", n)
                with workers(urls, processes):
                    workers_before = tree_cpu_of_workers()
                    before, start = cpu_seconds(), time.perf_counter()
                    run = scrypath_sa.start_backfill(Item, into=into, ranges=args.ranges,
                                                     batch_size=1000)
                    while not run.done:
                        time.sleep(0.2)  # polling the checkpoints the workers write
                        run = scrypath_sa.rebuild_progress(into) or run
                    seconds, used = time.perf_counter() - start, cpu_used(before)
                    spent_now = tree_cpu_of_workers()
                assert run.ok and run.rows_done == args.rows, run
                used["workers"] = spent_now - workers_before
                return into, seconds, used
            return run

        variants = {"one process": one_process, "1 worker": distributed(1),
                    "2 workers": distributed(2)}
        took: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
        names = list(variants)
        for n in range(args.rounds):
            order = names[n % len(names):] + names[:n % len(names)]
            for name in order:
                index, seconds, used = variants[name](n)
                took[name].append(seconds)
                for part, value in used.items():
                    cpu[name].setdefault(part, []).append(value)
                backend.refresh(index)
                assert backend.count(index) == args.rows
                config.backend.client.indices.delete(index=index)  # type: ignore[attr-defined]
                print(f"  round {n + 1} {name:<12} {seconds:6.1f}s")
        base = statistics.median(took["one process"])
        for name in names:
            median = statistics.median(took[name])
            parts = ", ".join(f"{part} {statistics.median(v):.1f}"
                              for part, v in sorted(cpu[name].items()))
            print(f"{name:<12}: median {median:.1f}s (min {min(took[name]):.1f}, max "
                  f"{max(took[name]):.1f}) {args.rows / median:,.0f} rows/s; CPU s {parts}")
        for name in names[1:]:
            print(f"RATIO {name} / one process (throughput) = "
                  f"{base / statistics.median(took[name]):.2f}x")
        fresh_schema(engine, Base.metadata, Item.__tablename__)


if __name__ == "__main__":
    main()
