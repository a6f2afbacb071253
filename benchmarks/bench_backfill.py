"""Backfill and reconcile at scale on PostgreSQL, with a hand-written baseline in the same run.

    python -m benchmarks.bench_backfill [--rows 1000000] [--batch-size 1000]

* ``scrypath_sa.backfill`` (keyset pages of ORM rows, built documents, ``_bulk`` with
  external versions, a checkpoint per page) against a hand-written
  ``helpers.streaming_bulk`` over a server-side cursor of the same rows; goal >= 0.8x;
* ``scrypath_sa.reconcile`` time over the same table and index;
* peak memory of each, measured in a fresh process per operation (growth of the
  process's peak RSS over its RSS before the operation); goal: under 100 MB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
import uuid
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import scrypath_sa

PREFIX = os.environ.get("SCRYPATH_BENCH_PREFIX") or f"bb{uuid.uuid4().hex[:6]}"
os.environ["SCRYPATH_BENCH_PREFIX"] = PREFIX  # spawned measuring processes use the same


def _models() -> Any:
    class Base(DeclarativeBase):
        pass

    class Item(scrypath_sa.Searchable, Base):
        __tablename__ = "bench_items"
        __search_index__ = f"{PREFIX}_items"
        __search_contract__ = {
            "mappings": {"properties": {"name": {"type": "text"}, "price": {"type": "float"},
                                        "sku": {"type": "keyword"}}},
            "settings": {"number_of_shards": 1, "number_of_replicas": 0}}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100))
        sku: Mapped[str] = mapped_column(String(20))
        price: Mapped[float]

    return Base, Item


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(kind: str, urls: dict[str, str], batch: int, out: Any) -> None:
    """One measured operation in a fresh process."""
    from opensearchpy import OpenSearch, helpers
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import sessionmaker

    from scrypath_sa.backends import OpenSearchBackend

    _, item = _models()
    engine = create_engine(urls["postgresql"])
    config = scrypath_sa.configure(sessionmaker(engine), bind=engine,
                                   backend=OpenSearchBackend(urls["opensearch"], timeout=120))
    before = _rss_mb()
    began = time.perf_counter()
    if kind == "backfill":
        report = scrypath_sa.backfill(item, batch_size=batch, resume=False, config=config)
        assert report.ok and report.indexed > 0
    elif kind == "reconcile":
        (drift,) = scrypath_sa.reconcile([item], config=config, page_size=batch).models
        assert drift.recommendation == "nothing", drift.reasons
    else:
        client = OpenSearch(urls["opensearch"], timeout=120)
        table = item.__table__
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=batch).execute(
                select(table).order_by(table.c.id))
            actions = ({"_index": f"{PREFIX}_raw", "_id": str(r.id),
                        "_source": {"id": r.id, "name": r.name, "sku": r.sku, "price": r.price}}
                       for r in rows)
            for ok, info in helpers.streaming_bulk(client, actions, chunk_size=batch):
                assert ok, info
        client.indices.refresh(index=f"{PREFIX}_raw")
    out.put((kind, time.perf_counter() - began, _peak_mb() - before))


def measure(kind: str, urls: dict[str, str], batch: int) -> tuple[float, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_run, args=(kind, urls, batch, out))
    proc.start()
    result = out.get()
    proc.join()
    assert proc.exitcode == 0
    return result[1], result[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    from opensearchpy import OpenSearch
    from sqlalchemy import create_engine, insert, text

    from benchmarks._support import fresh_schema, services

    base, item = _models()
    with services("postgresql", "opensearch") as urls:
        engine = create_engine(urls["postgresql"])
        fresh_schema(engine, base.metadata, "bench_items")
        began = time.perf_counter()
        for start in range(0, args.rows, 20_000):
            stop = min(start + 20_000, args.rows)
            with engine.begin() as conn:
                conn.execute(insert(item.__table__), [
                    {"id": i, "name": f"item number {i}", "sku": f"SKU{i:08d}",
                     "price": i / 100} for i in range(start + 1, stop + 1)])
        print(f"loaded {args.rows} rows in {time.perf_counter() - began:.1f}s")
        client = OpenSearch(urls["opensearch"], timeout=120)
        client.indices.create(index=f"{PREFIX}_raw", body={"mappings": item.__search_contract__[
            "mappings"], "settings": item.__search_contract__["settings"]})
        try:
            hand_s, hand_mb = measure("hand", urls, args.batch_size)
            ours_s, ours_mb = measure("backfill", urls, args.batch_size)
            rec_s, rec_mb = measure("reconcile", urls, args.batch_size)
        finally:
            client.indices.delete(index=f"{PREFIX}*", ignore_unavailable=True)
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS bench_items, sync_events, "
                                  "sync_checkpoints"))
        print(f"rows={args.rows} batch={args.batch_size}")
        print(f"hand-written streaming_bulk: {hand_s:.1f}s {args.rows / hand_s:,.0f} rows/s "
              f"peak +{hand_mb:.0f} MB")
        print(f"scrypath_sa.backfill:        {ours_s:.1f}s {args.rows / ours_s:,.0f} rows/s "
              f"peak +{ours_mb:.0f} MB")
        print(f"scrypath_sa.reconcile:       {rec_s:.1f}s {args.rows / rec_s:,.0f} rows/s "
              f"peak +{rec_mb:.0f} MB")
        print(f"RATIO backfill/hand_written = {hand_s / ours_s:.2f}x (goal >= 0.8)")
        print(f"MEMORY backfill +{ours_mb:.0f} MB, reconcile +{rec_mb:.0f} MB (goal < 100 MB)")


if __name__ == "__main__":
    main()
