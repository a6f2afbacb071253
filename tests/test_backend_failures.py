"""A transport failure reaches every caller as BackendError, and every operator command
reports it (in its report, or as one error line and an exit code), never as a client
library's exception. The backend is a real OpenSearchBackend whose node is unreachable
(a closed loopback port): a real connection failure, no fake."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import servicekit
from sqlalchemy import create_engine, update

import scrypath_sa
from scrypath_sa import outbox, sync_events
from scrypath_sa.backends import BulkOp, ItemStatus, OpenSearchBackend
from scrypath_sa.errors import BackendError
from scrypath_sa.registry import Contract
from tests.models import World, make_world

ROOT = Path(__file__).resolve().parent.parent


def unreachable_url() -> str:
    return f"http://admin:hunter2-secret@127.0.0.1:{servicekit.free_port()}"


def unreachable() -> OpenSearchBackend:
    return OpenSearchBackend(unreachable_url(), max_retries=0, timeout=2)


@pytest.fixture
def stranded(tmp_path: Path, prefix: str) -> World:
    """SQLite with one article whose write failed (retrying) and one event the backend
    had accepted before it went away; the configured backend cannot be reached."""
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    world = make_world(engine, prefix)
    scrypath_sa.configure(world.Session, backend=unreachable(), backoff_base=0.0)
    with world.Session() as session:
        session.add_all([world.Article(id=1, title="one"), world.Article(id=2, title="two")])
        session.commit()
    with engine.begin() as conn:
        second = conn.execute(sync_events.select().where(sync_events.c.document_id == "2")
                              ).one()
        conn.execute(update(sync_events).where(sync_events.c.id == second.id).values(
            state="backend_accepted", version_sent=outbox.version_of(second.id)))
    return world


def test_every_backend_call_raises_backend_error_or_reports_items() -> None:
    backend = unreachable()
    contract = Contract()
    calls: dict[str, Any] = {
        "ensure_index": lambda: backend.ensure_index("a", contract, "M"),
        "refresh": lambda: backend.refresh("a"),
        "versions": lambda: backend.versions("a", ["1"]),
        "search": lambda: backend.search("a", "text"),
        "posture": lambda: backend.posture("a"),
        "documents": lambda: backend.documents("a", ["1"]),
        "count": lambda: backend.count("a"),
        "scan_ids": lambda: list(backend.scan_ids("a")),
        "physical_indices": lambda: backend.physical_indices("a"),
        "create_index": lambda: backend.create_index("a_1", contract, "M", alias="a"),
        "swap_alias": lambda: backend.swap_alias("a", "a_1"),
        "delete_index": lambda: backend.delete_index("a_1"),
        "set_refresh_interval": lambda: backend.set_refresh_interval("a_1", "-1"),
    }
    for name, call in calls.items():
        with pytest.raises(BackendError) as excinfo:
            call()
        assert "hunter2-secret" not in str(excinfo.value), name
    results = backend.bulk([BulkOp("a", "1", 1024, {"x": 1})], wait_for_visibility=True)
    assert [(r.status, r.error_kind) for r in results] == [
        (ItemStatus.RETRYABLE, "connection_error")]


def test_the_operator_api_reports_an_unreachable_backend(stranded: World) -> None:
    model = [stranded.Article]

    (status,) = scrypath_sa.status(model).models
    assert status.backend_error is not None and "could not read alias" in status.backend_error
    assert scrypath_sa.status(model).needs_attention

    (drift,) = scrypath_sa.reconcile(model).models
    assert drift.error is not None
    assert scrypath_sa.reconcile(model).needs_attention  # not "nothing to do"

    confirmed = scrypath_sa.confirm()
    assert not confirmed.ok and confirmed.confirmed == []
    assert confirmed.unverified[0]["event_ids"] and "could not refresh" in (
        confirmed.unverified[0]["error"])

    swept = scrypath_sa.sweep(older_than=dt.timedelta(0))
    assert swept.dispatched == 1 and not swept.outcomes[0].ok
    event_id = scrypath_sa.failed().events[0].id
    retried = scrypath_sa.retry(event_id)
    assert retried.state == "retrying" and not retried.ok

    pruned = scrypath_sa.prune(model)
    assert pruned.errors and "could not list indices" in pruned.errors[0]

    for action in (lambda: scrypath_sa.backfill(stranded.Article),
                   lambda: scrypath_sa.reindex(stranded.Article),
                   lambda: scrypath_sa.cutover(stranded.Article, "x")):
        with pytest.raises(BackendError, match="could not") as excinfo:
            action()
        assert "hunter2-secret" not in str(excinfo.value)


@pytest.mark.parametrize(("command", "code", "says"), [
    (["status"], 1, "backend: could not read alias"),
    (["failed"], 2, "retrying"),
    (["sweep", "--older-than", "0"], 2, "retrying"),
    (["confirm"], 1, "could not be verified"),
    (["reconcile"], 1, "could not compare"),
    (["backfill", "Article"], 1, "scrypath-sa: error: could not"),
    (["reindex", "Article"], 1, "scrypath-sa: error: could not"),
    (["cutover", "Article", "x"], 1, "scrypath-sa: error: could not"),
    (["prune"], 1, "could not list indices"),
])
def test_each_cli_command_reports_an_unreachable_backend(
        stranded: World, tmp_path: Path, command: list[str], code: int, says: str) -> None:
    env = {**os.environ, "SCRYPATH_TEST_PREFIX": stranded.prefix,
           "SCRYPATH_TEST_DATABASE_URL": str(stranded.engine.url),
           "SCRYPATH_TEST_OPENSEARCH_URL": unreachable_url()}
    result = subprocess.run(
        [sys.executable, "-m", "scrypath_sa.cli", "--app", "tests.cli_app:config", *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert says in output
    assert "Traceback" not in output and "hunter2-secret" not in output
