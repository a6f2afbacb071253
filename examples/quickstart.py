"""scrypath_sa in five minutes, with no servers: SQLite + the embedded search backend.

    python examples/quickstart.py [--dir DIR]

It defines a model, commits in each sync mode and prints what each one honestly
promised at that moment, runs a search, and shows the operator's status and reconcile.
Dramatiq runs on its in-process stub broker with a worker thread.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

import dramatiq
from sqlalchemy import text

import scrypath_sa
from scrypath_sa.migrations import upgrade


def say(label: str, outcome: scrypath_sa.Outcome | None) -> None:
    assert outcome is not None
    meaning = {
        "completed": "written and visible to search now",
        "backend_accepted": "the index acknowledged it; not promised visible yet",
        "enqueued": "a durable message will have a worker write it; not in the index yet",
        "requested": "recorded with the data; nothing sent yet",
    }.get(outcome.state, outcome.state)
    print(f"{label:<28} mode={outcome.mode:<9} state={outcome.state:<17} -> {meaning}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", help="where the database and index files go")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="scrypath-quickstart-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["SCRYPATH_EXAMPLE_DIR"] = str(workdir)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    app = importlib.import_module("app")  # the model and configure() call: examples/app.py
    Article, Session, broker, engine = app.Article, app.Session, app.broker, app.engine
    app.Base.metadata.create_all(engine)
    upgrade(engine)  # the sync_events outbox, through the shipped Alembic migration
    print(f"database and index in {workdir}")
    print(f"try the CLI: SCRYPATH_EXAMPLE_DIR={workdir} scrypath-sa --app examples.app:config "
          "status\n")

    with Session() as session:
        session.add(Article(id=1, title="Running with foxes"))
        session.commit()
        say("inline commit", scrypath_sa.last_outcome(session))

        with scrypath_sa.sync_mode("manual"):
            session.add(Article(id=2, title="Cats who run the house"))
            session.commit()
            say("manual commit", scrypath_sa.last_outcome(session))
        report = scrypath_sa.confirm()
        print(f"{'confirm()':<28} verified {len(report.confirmed)} event(s) -> completed\n")

        with scrypath_sa.sync_mode("dramatiq"):
            session.add(Article(id=3, title="A quiet sleeping dog"))
            session.commit()
            say("dramatiq commit", scrypath_sa.last_outcome(session))
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        broker.join("scrypath_sa")
        worker.join()
        worker.stop()
        print(f"{'worker finished':<28} events: {scrypath_sa.status([Article]).models[0].counts}"
              "\n")

        result = scrypath_sa.search(session, Article, "run")
        print(f"search('run'): {result.total} hits -> {[a.title for a in result.items]}")

    with engine.begin() as conn:  # a change the library cannot see
        conn.execute(text("DELETE FROM articles WHERE id = 1"))
    (drift,) = scrypath_sa.reconcile([Article]).models
    print(f"\nafter a raw SQL delete, reconcile recommends: {drift.recommendation}")
    for reason in drift.reasons:
        print(f"  - {reason}")
    scrypath_sa.reconcile([Article], action="backfill")
    (drift,) = scrypath_sa.reconcile([Article]).models
    print(f"after reconcile(action='backfill'): {drift.recommendation}")
    (status,) = scrypath_sa.status([Article]).models
    print(f"status: {status.documents} documents in {status.alias_points_to}, "
          f"contract matches: {status.contract_matches}")


if __name__ == "__main__":
    main()
