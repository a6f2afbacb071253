"""Related documents at scale on PostgreSQL: renaming an author of 100,000 posts.

    python -m benchmarks.bench_fanout [--posts 100000] [--rounds 5]

* the commit that renames the author, with the fan-out (one ``INSERT ... SELECT`` of
  an event per dependent post, in the data's transaction), against the cheapest
  hand-written way to touch the dependents: ``UPDATE authors`` plus
  ``UPDATE posts SET updated_at = now() WHERE author_id = :id``; alternating rounds,
  medians; goal <= 1.0x;
* the drain of those events (claims, rows and related rows read, documents built,
  ``_bulk``, outcomes recorded) as one Dramatiq worker process runs it: messages of
  500 ids, on its threads (``--worker-threads``, Dramatiq's default 8), against
  ``helpers.bulk`` of the same documents read by one hand-written join; goal >= 0.7x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import ForeignKey, String, func, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import scrypath_sa

PREFIX = os.environ.get("SCRYPATH_BENCH_PREFIX") or f"bf{uuid.uuid4().hex[:6]}"
CHUNK = 500  # ids per Dramatiq message (DramatiqMode's default chunk_size)


def _models() -> Any:
    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "bench_authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100))

    class Post(scrypath_sa.Searchable, Base):
        __tablename__ = "bench_posts"
        __search_index__ = f"{PREFIX}_posts"
        __search_fields__ = ("title", "author.name")
        __search_contract__ = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(100))
        author_id: Mapped[int] = mapped_column(ForeignKey("bench_authors.id"), index=True)
        updated_at: Mapped[dt.datetime | None]
        author: Mapped[Author] = relationship()
        # The default document ({"title": ..., "author": {"name": ...}}), read with a
        # join: no ORM objects.

    return Base, Author, Post


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=CHUNK,
                        help="event ids per message (DramatiqMode's chunk_size)")
    parser.add_argument("--worker-threads", type=int, default=8,
                        help="the worker's threads (Dramatiq's default: 8)")
    args = parser.parse_args()

    from opensearchpy import OpenSearch, helpers
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from benchmarks._support import cpu_seconds, cpu_used, fresh_schema, hold_mode, services
    from scrypath_sa import processor
    from scrypath_sa.backends import OpenSearchBackend
    from scrypath_sa.visibility import Visibility, flush_confirmations

    base, author_cls, post_cls = _models()
    with services("postgresql", "opensearch") as urls:
        engine = create_engine(urls["postgresql"])
        fresh_schema(engine, base.metadata, "bench_posts", "bench_authors")
        with engine.begin() as conn:
            conn.execute(insert(author_cls.__table__), [{"id": 1, "name": "author 0"},
                                                        {"id": 2, "name": "someone else"}])
            for start in range(0, args.posts, 20_000):
                conn.execute(insert(post_cls.__table__), [
                    {"id": i, "title": f"post {i}", "author_id": 1}
                    for i in range(start + 1, min(start + 20_000, args.posts) + 1)])
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        backend = OpenSearchBackend(urls["opensearch"], timeout=120)
        Session = sessionmaker(engine)
        config = scrypath_sa.configure(Session, backend=backend, mode="hold",
                                       modes={"hold": hold_mode()})
        client = OpenSearch(urls["opensearch"], timeout=120)

        def ours(n: int) -> float:
            with Session() as session:
                began = time.perf_counter()
                author = session.get(author_cls, 1)
                assert author is not None
                author.name = f"renamed by the library {n}"
                session.commit()
                took = time.perf_counter() - began
                outcome = scrypath_sa.last_outcome(session)
                assert outcome is not None and len(outcome.event_ids) == args.posts
            return took

        def hand(n: int) -> float:
            began = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(update(author_cls.__table__).where(author_cls.__table__.c.id == 1)
                             .values(name=f"renamed by hand {n}"))
                conn.execute(update(post_cls.__table__)
                             .where(post_cls.__table__.c.author_id == 1)
                             .values(updated_at=func.now()))
            return time.perf_counter() - began

        def clean() -> None:
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE sync_events"))
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM bench_posts, sync_events"))

        commit: dict[str, list[float]] = {"ours": [], "hand": []}
        drain: dict[str, list[float]] = {"ours": [], "hand": []}
        drain_cpu: dict[str, dict[str, list[float]]] = {
            "ours": defaultdict(list), "hand": defaultdict(list)}
        try:
            for n in range(args.rounds):
                order = [("ours", ours), ("hand", hand)]
                for name, run in order if n % 2 == 0 else order[::-1]:
                    clean()
                    commit[name].append(run(n))
            # The drains: each round renames the author again (events left for the drain)
            # and rewrites every document; both sides overwrite their previous round's.
            info = scrypath_sa.registry.info_for(post_cls)
            assert info is not None
            backend.ensure_index(info.index, info.contract, info.name)
            client.indices.create(index=f"{PREFIX}_raw", body={"settings": {
                "number_of_shards": 1, "number_of_replicas": 0}})

            def drain_ours(n: int) -> tuple[float, dict[str, float]]:
                clean()
                ours(args.rounds + n)
                with engine.connect() as conn:
                    ids = list(conn.execute(select(scrypath_sa.sync_events.c.id)
                                            .order_by(scrypath_sa.sync_events.c.id)).scalars())
                cpu = cpu_seconds()
                began = time.perf_counter()
                with ThreadPoolExecutor(args.worker_threads) as worker:  # its message threads
                    for done in [worker.submit(
                            processor.process, config, ids[start:start + args.chunk],
                            mode="hold", visibility=Visibility.DEFERRED, worker="bench")
                            for start in range(0, len(ids), args.chunk)]:
                        done.result()
                assert flush_confirmations(300)
                took, used = time.perf_counter() - began, cpu_used(cpu)
                with engine.connect() as conn:
                    left = conn.execute(select(func.count()).select_from(scrypath_sa.sync_events)
                                        .where(scrypath_sa.sync_events.c.state != "completed"))
                    assert left.scalar_one() == 0
                return took, used

            def drain_hand(n: int) -> tuple[float, dict[str, float]]:
                cpu = cpu_seconds()
                began = time.perf_counter()
                posts, authors = post_cls.__table__, author_cls.__table__
                with engine.connect() as conn:
                    rows = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(
                        select(posts.c.id, posts.c.title, authors.c.name)
                        .join(authors, authors.c.id == posts.c.author_id)
                        .where(authors.c.id == 1))
                    helpers.bulk(client, ({"_index": f"{PREFIX}_raw", "_id": str(r.id),
                                           "_source": {"title": r.title,
                                                       "author": {"name": r.name}}}
                                          for r in rows), chunk_size=CHUNK)
                client.indices.refresh(index=f"{PREFIX}_raw")
                return time.perf_counter() - began, cpu_used(cpu)

            for n in range(args.rounds):
                order = [("ours", drain_ours), ("hand", drain_hand)]
                for name, run in order if n % 2 == 0 else order[::-1]:
                    took, used = run(n)
                    drain[name].append(took)
                    for part, seconds in used.items():
                        drain_cpu[name][part].append(seconds)
        finally:
            client.indices.delete(index=f"{PREFIX}*", ignore_unavailable=True)
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS bench_posts, bench_authors, "
                                  "sync_events, sync_checkpoints"))
        med = {k: statistics.median(v) for k, v in commit.items()}
        print(f"posts={args.posts} rounds={args.rounds} (alternating)")
        for name, label in (("ours", "rename with fan-out        "),
                            ("hand", "UPDATE authors + UPDATE posts")):
            print(f"{label}: median {med[name]:.3f}s "
                  f"(min {min(commit[name]):.3f}s, max {max(commit[name]):.3f}s)")
        print(f"RATIO commit fan-out/hand_written = {med['ours'] / med['hand']:.2f}x "
              "(goal <= 1.0)")
        dmed = {k: statistics.median(v) for k, v in drain.items()}
        for name, label in (("ours", f"drain, one worker ({args.worker_threads} threads)"),
                            ("hand", "helpers.bulk of a join          ")):
            print(f"{label}: median {dmed[name]:.2f}s ({args.posts / dmed[name]:,.0f} docs/s; "
                  f"min {min(drain[name]):.2f}s, max {max(drain[name]):.2f}s); CPU s "
                  + ", ".join(f"{part} {statistics.median(v):.2f}"
                              for part, v in drain_cpu[name].items()))
        print(f"RATIO drain throughput/helpers.bulk = {dmed['hand'] / dmed['ours']:.2f}x "
              "(goal >= 0.7)")


if __name__ == "__main__":
    main()
