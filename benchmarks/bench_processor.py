"""Processor throughput against opensearch-py baselines, side by side in one run.

    python -m benchmarks.bench_processor [--rows 50000] [--rounds 3] [--per-row-sample 2000]

* processor: ``processor.process`` over N committed events (claim, load rows, build
  documents, ``_bulk`` with external versions, record every outcome), inline (visible)
  and manual (accepted);
* ``helpers.bulk`` of the same, already built documents (no database work at all), then
  one refresh so they are visible, as inline's are;
* a hand-written sync: read the rows with the ORM, build, ``helpers.bulk``, refresh
  (what an app does without the library; no outbox, no outcome recording);
* one ``client.index()`` per row after commit, as tutorials do (timed on a sample,
  compared as documents per second).

Prints throughput ratios; goals: processor >= 0.7x helpers.bulk, >= 10x per-row index.
"""

from __future__ import annotations

import argparse
import uuid

from opensearchpy import OpenSearch, helpers
from sqlalchemy import String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import scrypath_sa
from benchmarks._support import hold_mode, services, summary, timed
from scrypath_sa import outbox, processor, sync_events
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.schema import Operation
from scrypath_sa.visibility import Visibility

PREFIX = f"bench{uuid.uuid4().hex[:6]}"
MAPPINGS = {"properties": {"title": {"type": "text", "analyzer": "english"},
                           "body": {"type": "text"}, "views": {"type": "integer"},
                           "category": {"type": "keyword"}}}
SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}


class Base(DeclarativeBase):
    pass


class Article(scrypath_sa.Searchable, Base):
    __tablename__ = "bench_articles"
    __search_index__ = f"{PREFIX}_articles"
    __search_contract__ = {"mappings": MAPPINGS, "settings": SETTINGS}
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000))
    views: Mapped[int]
    category: Mapped[str] = mapped_column(String(50))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-row-sample", type=int, default=2_000)
    args = parser.parse_args()

    with services("postgresql", "opensearch") as urls:
        engine = create_engine(urls["postgresql"])
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_articles, sync_events CASCADE"))
        Base.metadata.create_all(engine)
        scrypath_sa.metadata.create_all(engine)
        client = OpenSearch(urls["opensearch"], timeout=120)
        backend = OpenSearchBackend(client)
        config = scrypath_sa.configure(Session, backend=backend, mode="hold",
                                       modes={"hold": hold_mode()}, bind=engine)

        body = "lorem ipsum dolor sit amet " * 20
        with Session(engine) as session:
            session.add_all([Article(id=i, title=f"article number {i}", body=body, views=i,
                                     category=f"c{i % 20}") for i in range(1, args.rows + 1)])
            session.commit()
        with engine.connect() as conn:
            ids = list(conn.execute(select(sync_events.c.id).order_by(sync_events.c.id))
                       .scalars())
        event_columns = [sync_events.c[k] for k in
                         ("model", "index_name", "document_id", "pk", "operation")]
        with Session(engine) as session:
            docs = [(a.search_document_id(), a.search_document())
                    for a in session.scalars(select(Article))]
        assert len(ids) == len(docs) == args.rows

        alias = Article.__search_index__

        def reset() -> None:
            """A fresh index, and the events recorded afresh as the commits recorded them
            (new rows in a new table, not old rows rewritten, which would fill the pages)."""
            client.indices.delete(index=f"{alias}*", ignore_unavailable=True)
            backend._ensured.clear()
            with engine.begin() as conn:
                events = [outbox.NewEvent(**{**e, "operation": Operation(e["operation"])})
                          for e in conn.execute(select(*event_columns)).mappings()]
                conn.execute(text("TRUNCATE sync_events RESTART IDENTITY"))
                assert sorted(outbox.record(conn, events, "hold")) == ids

        def run_processor(visible: bool) -> None:
            outcome = processor.process(
                config, ids, mode="inline" if visible else "manual",
                visibility=Visibility.VISIBLE if visible else Visibility.NONE)
            wanted = "completed" if visible else "backend_accepted"
            assert outcome.states == {wanted: args.rows}, outcome.describe()

        def run_bulk() -> None:
            actions = ({"_index": f"{alias}_raw", "_id": doc_id, "_source": doc}
                       for doc_id, doc in docs)
            ok, errors = helpers.bulk(client, actions, chunk_size=500)
            assert ok == args.rows and not errors
            client.indices.refresh(index=f"{alias}_raw")  # visible, like inline's result

        def run_hand_written() -> None:
            """What an app writes without the library: read rows, build, helpers.bulk."""
            with Session(engine) as session:
                rows = session.scalars(select(Article).execution_options(yield_per=500))
                actions = ({"_index": f"{alias}_raw", "_id": a.search_document_id(),
                            "_source": a.search_document()} for a in rows)
                ok, errors = helpers.bulk(client, actions, chunk_size=500)
            assert ok == args.rows and not errors
            client.indices.refresh(index=f"{alias}_raw")

        def prepare_raw() -> None:
            client.indices.create(index=f"{alias}_raw",
                                  body={"mappings": MAPPINGS, "settings": SETTINGS})

        inline, manual, bulk, hand = [], [], [], []
        for _ in range(args.rounds):
            reset()
            inline.append(timed(lambda: run_processor(True)))
            reset()
            manual.append(timed(lambda: run_processor(False)))
            reset()
            prepare_raw()
            bulk.append(timed(run_bulk))
            reset()
            prepare_raw()
            hand.append(timed(run_hand_written))

        reset()
        prepare_raw()
        sample = docs[: args.per_row_sample]

        def per_row() -> None:
            for doc_id, doc in sample:
                client.index(index=f"{alias}_raw", id=doc_id, body=doc)

        per_row_s = timed(per_row)
        reset()

        rate = lambda n, s: n / s  # noqa: E731
        r_inline, r_manual, r_bulk, r_hand = (rate(args.rows, min(x))
                                              for x in (inline, manual, bulk, hand))
        r_row = rate(len(sample), per_row_s)
        print(f"rows={args.rows} rounds={args.rounds} batch_size={config.batch_size}")
        print(f"processor inline (completed): {summary(inline)}  {r_inline:,.0f} docs/s")
        print(f"processor manual (accepted):  {summary(manual)}  {r_manual:,.0f} docs/s")
        print(f"helpers.bulk (prebuilt docs): {summary(bulk)}  {r_bulk:,.0f} docs/s")
        print(f"hand-written rows+bulk:       {summary(hand)}  {r_hand:,.0f} docs/s")
        print(f"per-row index() after commit: {per_row_s:.3f}s for {len(sample)} "
              f"{r_row:,.0f} docs/s")
        print(f"RATIO processor_inline/helpers.bulk = {r_inline / r_bulk:.2f}x (goal >= 0.7)")
        print(f"RATIO processor_manual/helpers.bulk = {r_manual / r_bulk:.2f}x")
        print(f"RATIO processor_inline/hand_written_rows_plus_bulk = {r_inline / r_hand:.2f}x")
        print(f"RATIO processor_inline/per_row_index = {r_inline / r_row:.1f}x (goal >= 10)")
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_articles, sync_events CASCADE"))
        scrypath_sa.unconfigure(Session)


if __name__ == "__main__":
    main()
