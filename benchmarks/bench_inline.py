"""``inline`` mode: how long a single-row commit takes until it is visible to search, and
how often concurrent commits refresh the index.

    python -m benchmarks.bench_inline [--commits 300] [--rounds 3] [--threads 20]
                                      [--concurrent-seconds 5] [--burst 100]

PostgreSQL and OpenSearch (1 shard, 0 replicas, the default 1 s refresh interval); rows
of the issue's shape (bigint id, a title, a 200-byte body, an integer).

* latency: single-row commits one after another, in ``inline`` mode (each returns once
  its document is searchable, which the benchmark checks every 50th commit with a
  search that must find it), against the same commits through a plain session;
  alternating rounds; median and p95 of all commits; goals median <= 30 ms,
  p95 <= 60 ms;
* sharing: ``--threads`` threads committing single rows in ``inline`` mode for
  ``--concurrent-seconds``: commits/s, and refreshes/s of the index (its own
  ``refresh.external_total`` counter, which counts every explicit refresh and every
  ``refresh=wait_for`` one); goal about 20 refreshes/s or fewer;
* a burst on ``AsyncSession``: ``--burst`` commits started at once on one event loop
  (psycopg's async driver, a pool sized for the burst), against the same burst on a
  plain ``AsyncSession``; alternating rounds; per-commit latency (median, p95), the
  burst's wall time, and the loop's worst wait beyond a 10 ms ticker's sleep.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import threading
import time
import uuid
from typing import Any

from sqlalchemy import BigInteger, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import scrypath_sa
from benchmarks._support import fresh_schema, services

PREFIX = os.environ.get("SCRYPATH_BENCH_PREFIX") or f"bi{uuid.uuid4().hex[:6]}"
BODY = "x" * 200


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = "bench_inline_plain"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    views: Mapped[int]


class Post(scrypath_sa.Searchable, Base):
    __tablename__ = "bench_inline_posts"
    __search_index__ = f"{PREFIX}_posts"
    __search_contract__ = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    views: Mapped[int]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=300, help="per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--concurrent-seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=100, help="0: no AsyncSession part")
    args = parser.parse_args()

    from opensearchpy import OpenSearch

    from scrypath_sa.backends import OpenSearchBackend

    with services("postgresql", "opensearch") as urls:
        engine = create_engine(urls["postgresql"], pool_size=args.threads + 2)
        fresh_schema(engine, Base.metadata, Plain.__tablename__, Post.__tablename__)
        backend = OpenSearchBackend(urls["opensearch"])
        client = OpenSearch(urls["opensearch"])
        plain_session = sessionmaker(engine)
        synced = sessionmaker(engine)
        scrypath_sa.configure(synced, backend=backend, mode="inline")
        next_id = iter(range(1, 10**9))
        latency: dict[str, list[float]] = {"inline": [], "plain": []}

        def commit(factory: Any, cls: type, checked: bool) -> float:
            i = next(next_id)
            with factory() as session:
                began = time.perf_counter()
                session.add(cls(id=i, title=f"post {i}", body=BODY, views=i))
                session.commit()
                took = time.perf_counter() - began
                if cls is Post:
                    outcome = scrypath_sa.last_outcome(session)
                    assert outcome is not None and outcome.state == "completed", outcome
            if checked:  # the promise: searchable when the commit returned
                found = client.search(index=Post.__search_index__,
                                      body={"query": {"ids": {"values": [str(i)]}}})
                assert found["hits"]["total"]["value"] == 1, i
            return took

        try:
            commit(synced, Post, True)  # warm: the index exists, statements compiled
            commit(plain_session, Plain, False)
            for n in range(args.rounds):
                order = [("inline", synced, Post), ("plain", plain_session, Plain)]
                for name, factory, cls in order if n % 2 == 0 else order[::-1]:
                    latency[name].extend(commit(factory, cls, name == "inline" and k % 50 == 0)
                                         for k in range(args.commits))

            def refreshes() -> int:
                stats = client.indices.stats(index=Post.__search_index__, metric="refresh")
                total: int = stats["_all"]["primaries"]["refresh"]["external_total"]
                return total

            stop = threading.Event()
            done = [0] * args.threads

            def committer(slot: int) -> None:
                while not stop.is_set():
                    commit(synced, Post, False)
                    done[slot] += 1

            before = refreshes()
            threads = [threading.Thread(target=committer, args=(k,)) for k in range(args.threads)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            time.sleep(args.concurrent_seconds)
            stop.set()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began
            refreshed = refreshes() - before
            bursts = asyncio.run(async_bursts(urls["postgresql"], backend, args.burst,
                                              args.rounds, next_id)) if args.burst else {}
        finally:
            client.indices.delete(index=f"{PREFIX}*", ignore_unavailable=True)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {Plain.__tablename__}, "
                                     f"{Post.__tablename__}, sync_events, sync_checkpoints")

        print(f"single-row commits, {args.rounds} alternating rounds of {args.commits}")
        for name in ("inline", "plain"):
            ms = [s * 1000 for s in latency[name]]
            print(f"  {name:7}: median {statistics.median(ms):.1f} ms, p95 "
                  f"{percentile(ms, 0.95):.1f} ms, max {max(ms):.1f} ms")
        inline_ms = [s * 1000 for s in latency["inline"]]
        print(f"GOAL inline median {statistics.median(inline_ms):.1f} ms (<= 30), p95 "
              f"{percentile(inline_ms, 0.95):.1f} ms (<= 60); RATIO inline/plain median = "
              f"{statistics.median(latency['inline']) / statistics.median(latency['plain']):.1f}x")
        print(f"{args.threads} threads committing for {elapsed:.1f}s: {sum(done) / elapsed:.0f} "
              f"commits/s, {refreshed / elapsed:.1f} refreshes/s of the index (goal <= ~20)")

        for name, runs in bursts.items():
            ms = [s * 1000 for s in runs["latency"]]
            print(f"AsyncSession, {args.burst} commits at once, {name:7}: latency median "
                  f"{statistics.median(ms):.0f} ms, p95 {percentile(ms, 0.95):.0f} ms; burst "
                  f"{statistics.median(runs['wall']) * 1000:.0f} ms (rounds "
                  f"{summary_ms(runs['wall'])}); loop's worst wait {summary_ms(runs['stall'])}")


def summary_ms(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds) * 1000:.0f} ms, " \
           f"{min(seconds) * 1000:.0f}-{max(seconds) * 1000:.0f}"


async def async_bursts(url: str, backend: Any, size: int, rounds: int,
                       next_id: Any) -> dict[str, dict[str, list[float]]]:
    """``size`` single-row commits started at once on AsyncSessions, ``inline`` and
    plain in alternating rounds: each commit's latency, each burst's wall time and the
    longest a 10 ms ticker on the loop waited beyond its sleep."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    async_url = make_url(url).set(drivername="postgresql+psycopg")
    engine = create_async_engine(async_url, pool_size=15, max_overflow=0)
    plain, synced = async_sessionmaker(engine), async_sessionmaker(engine)
    config = scrypath_sa.configure(synced, backend=backend, mode="inline")
    found: dict[str, dict[str, list[float]]] = {
        name: {"latency": [], "wall": [], "stall": []} for name in ("inline", "plain")}

    async def commit(factory: Any, cls: type, into: list[float]) -> None:
        i = next(next_id)
        began = time.perf_counter()
        async with factory() as session:
            session.add(cls(id=i, title=f"post {i}", body=BODY, views=i))
            await session.commit()
            if cls is Post:
                outcome = scrypath_sa.last_outcome(session)
                assert outcome is not None and outcome.state == "completed", outcome
        into.append(time.perf_counter() - began)

    async def burst(name: str, factory: Any, cls: type) -> None:
        stalls: list[float] = [0.0]
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                stalls.append(now - last - 0.01)
                last = now

        tick = asyncio.create_task(ticker())
        began = time.perf_counter()
        await asyncio.gather(*(commit(factory, cls, found[name]["latency"])
                               for _ in range(size)))
        found[name]["wall"].append(time.perf_counter() - began)
        done.set()
        await tick
        found[name]["stall"].append(max(stalls))

    await commit(synced, Post, [])  # warm
    await commit(plain, Plain, [])
    gc.collect()
    gc.freeze()  # as docs/async.md advises a latency-bound service
    try:
        for n in range(rounds):
            order = [("inline", synced, Post), ("plain", plain, Plain)]
            for name, factory, cls in order if n % 2 == 0 else order[::-1]:
                await burst(name, factory, cls)
    finally:
        gc.unfreeze()
        scrypath_sa.unconfigure(synced)
        config.bind.dispose()
        await engine.dispose()
    return found


if __name__ == "__main__":
    main()
