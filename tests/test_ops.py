"""The operator API and CLI, proven by drift made behind the library's back."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import servicekit
from sqlalchemy import Engine, select, text

import scrypath_sa
from scrypath_sa import outbox, sync_events
from scrypath_sa.errors import EventError
from tests.models import World, make_world

THROUGH_PGBOUNCER = True  # also through PgBouncer in transaction pooling mode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(engine: Engine, index_prefix: str, backend: Any) -> World:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    return w


def add_articles(world: World, *specs: tuple[int, str, str]) -> None:
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=t, views=v) for i, t, v in specs])
        session.commit()


def event_of(world: World, doc_id: str) -> Any:
    with world.engine.connect() as conn:
        return conn.execute(select(sync_events).where(sync_events.c.document_id == doc_id)
                            .order_by(sync_events.c.id.desc())).first()


def test_status_counts_posture_and_problems(world: World) -> None:
    add_articles(world, (1, "a", "1"), (2, "b", "oops"), (3, "c", "3"))
    (entry,) = scrypath_sa.status([world.Article]).models
    assert entry.counts["completed"] == 2 and entry.counts["discarded"] == 1
    assert entry.discarded == 1 and entry.retrying == 0 and entry.stuck == 0
    assert entry.documents == 2
    assert len(entry.alias_points_to) == 1 and entry.alias_points_to[0] != entry.index
    assert entry.contract_matches is True and entry.rebuild_in_progress is None
    assert entry.problems == ["1 events discarded"]
    data = scrypath_sa.status([world.Article]).to_dict()
    assert data["needs_attention"] is True
    assert json.loads(json.dumps(data))["models"][0]["counts"]["discarded"] == 1


def test_status_reports_contract_drift(engine: Engine, index_prefix: str, backend: Any) -> None:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    add_articles(w, (1, "a", "1"))
    changed = {"mappings": {"properties": {"title": {"type": "keyword"}}}}
    w2 = make_world(engine, index_prefix, contract=changed)  # the code moved on
    (entry,) = scrypath_sa.status([w2.Article]).models
    assert entry.contract_matches is False
    assert entry.live_contract_hash != entry.contract_hash
    assert "reindex" in " ".join(entry.problems)


def test_status_finds_stuck_processing_left_by_a_dead_worker(world: World, backend: Any) -> None:
    from tests.test_modes import Hold

    scrypath_sa.configure(world.Session, backend=backend, mode="hold", modes={"hold": Hold()})
    add_articles(world, (1, "a", "1"), (2, "b", "2"))
    with world.engine.begin() as conn:  # a worker claims them, then dies
        ids = list(conn.execute(select(sync_events.c.id)).scalars())
        outbox.claim(conn, ids, "dramatiq", worker="dead-host:1:1")
    (entry,) = scrypath_sa.status([world.Article], stuck_after=dt.timedelta(0)).models
    assert entry.counts["processing"] == 2 and entry.stuck == 2
    assert entry.oldest_unfinished_at is not None


def test_failed_lists_and_pages(world: World) -> None:
    add_articles(world, (1, "a", "x1"), (2, "b", "x2"), (3, "c", "3"))
    first = scrypath_sa.failed([world.Article], limit=1)
    assert [e.document_id for e in first.events] == ["1"]
    assert first.events[0].failure_class == "permanent"
    assert first.events[0].error_kind == "mapper_parsing_exception"
    second = scrypath_sa.failed([world.Article], limit=1, after_id=first.next_after_id)
    assert [e.document_id for e in second.events] == ["2"]
    assert second.next_after_id is None


def test_retry_one_event_after_fixing_the_row(world: World, os_client: Any) -> None:
    add_articles(world, (1, "fixable", "not a number"))
    bad = event_of(world, "1")
    assert bad.state == "discarded"
    with world.engine.begin() as conn:  # the fix, done outside the ORM
        conn.execute(text("UPDATE articles SET views = '7' WHERE id = 1"))
    outcome = scrypath_sa.retry(bad.id)
    assert outcome.state == "completed"
    assert event_of(world, "1").state == "completed"
    got = os_client.get(index=f"{world.prefix}_articles", id="1")["_source"]
    assert got["views"] == "7"
    with pytest.raises(EventError, match="is completed"):
        scrypath_sa.retry(bad.id)
    with pytest.raises(EventError, match="no sync event with id 999999"):
        scrypath_sa.retry(999999)


def run_cli(world: World, opensearch_url: str, *args: str,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **extra_env, "SCRYPATH_TEST_PREFIX": world.prefix,
           "SCRYPATH_TEST_DATABASE_URL": world.engine.url.render_as_string(hide_password=False),
           "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    return subprocess.run([sys.executable, "-m", "scrypath_sa.cli", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_status_failed_retry_and_exit_codes(world: World, opensearch_url: str) -> None:
    add_articles(world, (1, "a", "1"))
    ok = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "status", "--json",
                 "--model", f"{world.prefix}_articles")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["models"][0]["counts"]["completed"] == 1

    add_articles(world, (2, "b", "bad"))
    bad = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "failed", "--json")
    assert bad.returncode == 2
    (event,) = json.loads(bad.stdout)["events"]
    assert event["document_id"] == "2"

    with world.engine.begin() as conn:
        conn.execute(text("UPDATE articles SET views = '2' WHERE id = 2"))
    fixed = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "retry",
                    str(event["id"]))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "state=completed" in fixed.stdout
    text_status = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "status",
                          "--model", f"{world.prefix}_articles")
    assert text_status.returncode == 0 and "events: completed=2\n" in text_status.stdout

    unknown = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "retry", "424242")
    assert unknown.returncode == 1 and "no sync event with id 424242" in unknown.stderr


def test_cli_never_prints_a_secret(world: World) -> None:
    secret = "cli-s3cr3t-9876"
    dead = f"http://admin:{secret}@127.0.0.1:{servicekit.free_port()}"
    result = run_cli(world, dead, "--app", "tests.cli_app:config", "status",
                     "--model", f"{world.prefix}_articles")
    assert result.returncode == 1  # the backend is unreachable: status could not tell
    assert "backend" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_cli_help_on_each_command() -> None:
    for command in ["status", "failed", "retry", "sweep", "confirm", "reconcile", "backfill",
                    "reindex", "cutover", "prune"]:
        result = subprocess.run([sys.executable, "-m", "scrypath_sa.cli", command, "--help"],
                                capture_output=True, text=True, check=True, cwd=ROOT)
        assert "--json" in result.stdout


def test_cli_reconcile_and_backfill(world: World, opensearch_url: str, os_client: Any) -> None:
    add_articles(world, (1, "a", "1"), (2, "b", "2"))
    os_client.delete(index=f"{world.prefix}_articles", id="2", refresh=True)
    app = ["--app", "tests.cli_app:config"]
    report = run_cli(world, opensearch_url, *app, "reconcile", "--json", "--model",
                     f"{world.prefix}_articles")
    assert report.returncode == 2
    (model,) = json.loads(report.stdout)["models"]
    assert model["missing_from_index"] == 1 and model["recommendation"] == "backfill"
    filled = run_cli(world, opensearch_url, *app, "backfill", f"{world.prefix}_articles")
    assert filled.returncode == 0, filled.stderr
    assert "2 rows" in filled.stdout
    assert "rows/s" not in filled.stderr  # no progress bar drawn into a pipe
    clean = run_cli(world, opensearch_url, *app, "reconcile", "--model",
                    f"{world.prefix}_articles")
    assert clean.returncode == 0 and "recommendation: nothing" in clean.stdout


# ------------------------------------------------------- answers an operator can trust

def test_cli_errors_and_bad_arguments_exit_1_and_print_json_when_asked(
        world: World, opensearch_url: str) -> None:
    app = ["--app", "tests.cli_app:config"]
    refused = run_cli(world, opensearch_url, *app, "retry", "424242", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout) == {
        "ok": False, "error": "there is no sync event with id 424242"}
    bad = run_cli(world, opensearch_url, *app, "status", "--no-such-flag", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False
    plain = run_cli(world, opensearch_url, *app, "status", "--no-such-flag")
    assert plain.returncode == 1 and "unrecognized arguments" in plain.stderr


def test_reconcile_acts_only_as_recommended_and_verifies(engine: Engine, index_prefix: str,
                                                         backend: Any) -> None:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    add_articles(w, (1, "a", "1"), (2, "b", "2"))
    changed = {"mappings": {"properties": {"title": {"type": "keyword"}}}}
    scrypath_sa.unconfigure(w.Session)
    w2 = make_world(engine, index_prefix, contract=changed)
    scrypath_sa.configure(w2.Session, backend=backend)

    refused = scrypath_sa.reconcile([w2.Article], action="backfill")
    (taken,) = refused.actions_taken
    assert taken["done"] is False and "recommends reindex" in taken["reason"]
    assert refused.needs_attention and not refused.failed

    forced = scrypath_sa.reconcile([w2.Article], action="backfill", force=True)
    (taken,) = forced.actions_taken
    assert taken["done"] is True and taken["after"] == "reindex"  # still not repaired
    assert forced.needs_attention

    repaired = scrypath_sa.reconcile([w2.Article], action="reindex")
    (taken,) = repaired.actions_taken
    assert taken["done"] is True and taken["after"] == "nothing"
    assert not repaired.needs_attention
    assert repaired.to_dict()["actions_taken"][0]["result"]["cut_over"] is True


def test_cli_reconcile_exit_code_follows_what_was_done(world: World,
                                                       opensearch_url: str) -> None:
    add_articles(world, (1, "a", "1"))
    with world.engine.begin() as conn:  # a row the library never saw
        conn.execute(text("INSERT INTO articles (id, title, views, published) "
                          "VALUES (2, 'raw', '2', true)"))
    app = ["--app", "tests.cli_app:config", "reconcile", "--model", f"{world.prefix}_articles"]
    refused = run_cli(world, opensearch_url, *app, "--action", "reindex")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not done: the report recommends backfill" in refused.stdout
    repaired = run_cli(world, opensearch_url, *app, "--action", "backfill", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    (taken,) = json.loads(repaired.stdout)["actions_taken"]
    assert taken["done"] is True and taken["after"] == "nothing"


def test_a_missing_alias_is_a_problem_not_a_fresh_start(world: World, os_client: Any) -> None:
    add_articles(world, (1, "a", "1"))
    os_client.indices.delete(index=f"{world.prefix}_articles*")
    (entry,) = scrypath_sa.status([world.Article]).models
    assert any("is missing" in p for p in entry.problems)
    (drift,) = scrypath_sa.reconcile([world.Article]).models
    assert drift.recommendation == "backfill"
    assert any("the alias is missing" in r for r in drift.reasons)
    after = scrypath_sa.reconcile([world.Article], action="backfill")
    assert after.actions_taken[0]["after"] == "nothing" and not after.needs_attention


def test_a_new_install_with_nothing_to_index_reconciles_clean(world: World) -> None:
    report = scrypath_sa.reconcile([world.Article])
    assert report.models[0].recommendation == "nothing"
    assert not report.needs_attention


def test_confirm_says_not_in_the_index(world: World, opensearch_url: str,
                                       os_client: Any) -> None:
    with world.Session() as session:
        scrypath_sa.set_session_mode(session, "manual")
        session.add(world.Article(id=1, title="accepted", views="1"))
        session.commit()
    os_client.delete(index=f"{world.prefix}_articles", id="1", refresh=True)
    result = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "confirm")
    assert result.returncode == 2
    assert "/1: not in the index" in result.stdout
    # status says so at once, not after stuck_after
    (entry,) = scrypath_sa.status([world.Article]).models
    assert entry.lost == 1 and any("not found by confirm" in p for p in entry.problems)
    status = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "status")
    assert status.returncode == 2
    # the event may be retried; here the delete left a tombstone just above its version,
    # which the retry reports (not "completed"), naming the repair
    retried = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "retry",
                      str(event_of(world, "1").id))
    assert retried.returncode == 2, retried.stdout + retried.stderr
    assert "deleted or edited in the index directly" in retried.stdout
    assert retried.stderr == ""  # the outcome is printed once, on stdout
    filled = run_cli(world, opensearch_url, "--app", "tests.cli_app:config", "backfill",
                     "Article")
    assert filled.returncode == 0, filled.stdout + filled.stderr
    assert os_client.get(index=f"{world.prefix}_articles", id="1")["found"]


def test_progress_counts_this_runs_rows_and_never_overshoots(
        capsys: pytest.CaptureFixture[str]) -> None:
    from scrypath_sa.cli import _progress_bar
    from scrypath_sa.ops import Progress

    resumed = Progress(done=150, total=200, elapsed=10.0, resumed=100)
    assert resumed.rate == 5.0 and resumed.eta_seconds == 10.0
    _progress_bar(resumed)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_cli_says_an_overdue_retry_and_a_rebuild_that_did_not_check_out(
        world: World, opensearch_url: str) -> None:
    add_articles(world, (1, "a", "1"), (2, "b", "not a number"))  # 2 is rejected
    with world.engine.begin() as conn:  # a retry that nothing ran at its time
        conn.execute(sync_events.update().where(sync_events.c.document_id == "1").values(
            state="retrying", completed_at=None,
            next_attempt_at=outbox.utcnow() - dt.timedelta(hours=1)))
    app = ["--app", "tests.cli_app:config"]
    status = run_cli(world, opensearch_url, *app, "status", "--model",
                     f"{world.prefix}_articles")
    assert status.returncode == 2 and "(overdue:" in status.stdout
    rebuilt = run_cli(world, opensearch_url, *app, "reindex", "Article")
    assert rebuilt.returncode == 2
    assert "did not check out" in rebuilt.stdout and "cut over with" not in rebuilt.stdout
