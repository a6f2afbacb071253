"""Every kind of drift made behind the library's back, as the API reports it, as the CLI
prints it (text and --json), and as the exit code says: real PostgreSQL and SQLite, the
real OpenSearch node."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, text

import scrypath_sa
from tests.models import World
from tests.test_ops import add_articles, run_cli, world  # noqa: F401 - the fixture


def _sql(statement: str) -> Callable[[World, Any], None]:
    def make(w: World, client: Any) -> None:
        with w.engine.begin() as conn:
            conn.execute(text(statement))
    return make


def _index_edit(w: World, client: Any) -> None:
    stored = client.get(index=f"{w.prefix}_articles", id="2")
    client.index(index=f"{w.prefix}_articles", id="2", body={**stored["_source"],
                                                            "title": "edited in the index"},
                 params={"version": stored["_version"] + 1, "version_type": "external",
                         "refresh": "true"})


def _foreign_version(w: World, client: Any) -> None:
    client.index(index=f"{w.prefix}_articles", id="2", body={"id": 2, "title": "foreign"},
                 params={"version": 10**15, "version_type": "external", "refresh": "true"})


# (drift kind, how it is made, the report's counter, its CLI text, the recommendation)
DRIFTS = [
    ("row inserted by raw SQL",
     _sql("INSERT INTO articles (id, title, views, published) VALUES (9, 'raw', '9', true)"),
     "missing_from_index", "missing from index: 1", "backfill"),
    ("row deleted by raw SQL", _sql("DELETE FROM articles WHERE id = 2"),
     "orphaned_in_index", "orphaned in index: 1", "backfill"),
    ("row updated by raw SQL", _sql("UPDATE articles SET title = 'raw edit' WHERE id = 2"),
     "content_differs", "content differs: 1", "backfill"),
    ("should_index flipped by raw SQL", _sql("UPDATE articles SET published = false WHERE id = 2"),
     "orphaned_in_index", "orphaned in index: 1", "backfill"),
    ("document deleted in the index",
     lambda w, c: c.delete(index=f"{w.prefix}_articles", id="2", refresh=True),
     "missing_from_index", "missing from index: 1", "backfill"),
    ("document edited in the index", _index_edit,
     "content_differs", "content differs: 1", "backfill"),
    ("document at a foreign, higher version", _foreign_version,
     "ahead_of_database", "ahead of the database: 1", "reindex"),
    ("index dropped",
     lambda w, c: c.indices.delete(index=f"{w.prefix}_articles*"),
     "completed_events", "the alias is missing", "backfill"),
]


@pytest.mark.parametrize(("kind", "make", "counter", "says", "recommended"), DRIFTS,
                         ids=[d[0] for d in DRIFTS])
def test_each_drift_kind_is_reported_everywhere(
        world: World, opensearch_url: str, os_client: Any, kind: str,  # noqa: F811
        make: Callable[[World, Any], None], counter: str, says: str,
        recommended: str) -> None:
    add_articles(world, (1, "a", "1"), (2, "b", "2"), (3, "c", "3"))
    make(world, os_client)

    report = scrypath_sa.reconcile([world.Article])
    (drift,) = report.models
    assert drift.recommendation == recommended, drift.reasons
    assert getattr(drift, counter) >= 1 and report.needs_attention

    app = ["--app", "tests.cli_app:config", "reconcile", "--model", f"{world.prefix}_articles"]
    printed = run_cli(world, opensearch_url, *app)
    assert printed.returncode == 2, printed.stdout + printed.stderr
    assert says in printed.stdout and f"recommendation: {recommended}" in printed.stdout
    as_json = run_cli(world, opensearch_url, *app, "--json")
    assert as_json.returncode == 2
    (model,) = json.loads(as_json.stdout)["models"]
    assert model[counter] >= 1 and model["recommendation"] == recommended
    assert json.loads(as_json.stdout)["needs_attention"] is True


def test_a_changed_contract_is_reported_everywhere(engine: Any, index_prefix: str,
                                                   backend: Any, opensearch_url: str) -> None:
    from tests.models import make_world

    changed = {"mappings": {"properties": {"title": {"type": "keyword"}}}}
    old = make_world(engine, index_prefix, contract=changed)  # the index was built for it
    scrypath_sa.configure(old.Session, backend=backend)
    add_articles(old, (1, "a", "1"))
    scrypath_sa.unconfigure(old.Session)
    new = make_world(engine, index_prefix)  # the app's contract now (the CLI app's too)
    scrypath_sa.configure(new.Session, backend=backend)

    report = scrypath_sa.reconcile([new.Article])
    assert report.models[0].contract_matches is False
    assert report.models[0].recommendation == "reindex" and report.needs_attention
    app = ["--app", "tests.cli_app:config", "reconcile", "--model", f"{index_prefix}_articles"]
    printed = run_cli(new, opensearch_url, *app)
    assert printed.returncode == 2
    assert "the live index was built for another contract" in printed.stdout
    assert "recommendation: reindex" in printed.stdout
    as_json = run_cli(new, opensearch_url, *app, "--json")
    assert as_json.returncode == 2
    (model,) = json.loads(as_json.stdout)["models"]
    assert model["contract_matches"] is False and model["recommendation"] == "reindex"


def test_an_unreachable_broker_is_reported_everywhere(world: World, backend: Any,  # noqa: F811
                                                      opensearch_url: str) -> None:
    """A Dramatiq mode whose Redis cannot be reached (nothing listens on its port): the
    commit stands and its event stays requested; status, sweep and a reconcile retry
    say so in the API, CLI text, --json and exit code 2, and never print its password."""
    import servicekit
    from dramatiq.brokers.redis import RedisBroker

    from scrypath_sa import sync_events
    from scrypath_sa.modes.dramatiq import DramatiqMode

    broker_url = f"redis://:s3cret-pw@127.0.0.1:{servicekit.free_port()}/0"
    mode = DramatiqMode(RedisBroker(url=broker_url))
    scrypath_sa.configure(world.Session, backend=backend, mode="dramatiq",
                          modes={"dramatiq": mode})
    with world.Session() as session:
        session.add(world.Article(id=1, title="a", views="1"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "requested" and outcome.error is not None
    assert "s3cret-pw" not in outcome.error

    report = scrypath_sa.status([world.Article])
    assert report.mode_errors["dramatiq"].startswith("broker unreachable")
    assert report.needs_attention and report.to_dict()["problems"]
    run = dict(SCRYPATH_TEST_BROKER_URL=broker_url)
    status = ["--app", "tests.cli_app:config", "status"]
    printed = run_cli(world, opensearch_url, *status, **run)
    assert printed.returncode == 2, printed.stdout + printed.stderr
    assert "! mode dramatiq: broker unreachable" in printed.stdout
    as_json = run_cli(world, opensearch_url, *status, "--json", **run)
    assert as_json.returncode == 2
    data = json.loads(as_json.stdout)
    assert data["needs_attention"] is True and "dramatiq" in data["mode_errors"]

    sweep = ["--app", "tests.cli_app:config", "sweep", "--older-than", "0"]
    printed = run_cli(world, opensearch_url, *sweep, **run)
    assert printed.returncode == 2 and "dispatch error: broker did not accept" in printed.stdout
    as_json = run_cli(world, opensearch_url, *sweep, "--json", **run)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["outcomes"][0]["state"] == "requested"

    (drift,) = scrypath_sa.reconcile([world.Article], stuck_after=dt.timedelta(0)).models
    assert drift.in_flight == 1 and drift.missing_from_index == 0  # late, not drift
    assert drift.recommendation == "retry", drift.reasons
    retry = ["--app", "tests.cli_app:config", "reconcile", "--action", "retry",
             "--stuck-after", "0"]
    printed = run_cli(world, opensearch_url, *retry, **run)
    assert printed.returncode == 2, printed.stdout + printed.stderr
    assert "retry on Article ran but did not check out" in printed.stdout
    as_json = run_cli(world, opensearch_url, *retry, "--json", **run)
    assert as_json.returncode == 2
    (taken,) = json.loads(as_json.stdout)["actions_taken"]
    assert taken["done"] is False and taken["after"] == "retry"
    for output in (printed, as_json):
        assert "s3cret-pw" not in output.stdout + output.stderr
    with world.engine.connect() as conn:  # nothing lost: sweep sends it once Redis is back
        assert conn.execute(select(sync_events.c.state)).scalars().all() == ["requested"]
