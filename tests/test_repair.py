"""reconcile, backfill, reindex, cutover and prune against drift made behind our back."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

import scrypath_sa
from scrypath_sa import outbox, sync_events
from scrypath_sa.backends import ItemResult, ItemStatus, OpenSearchBackend
from scrypath_sa.errors import BackendError
from scrypath_sa.ops.rebuild import BACKFILL_RETRIES
from scrypath_sa.schema import sync_checkpoints
from tests.models import World, make_world
from tests.test_ops import ROOT, run_cli

THROUGH_PGBOUNCER = True  # also through PgBouncer in transaction pooling mode


@pytest.fixture
def world(engine: Engine, index_prefix: str, backend: Any) -> World:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"article {i}", views=str(i))
                         for i in range(1, 31)])
        session.commit()
    return w


def drift_of(world: World, **kwargs: Any) -> Any:
    (drift,) = scrypath_sa.reconcile([world.Article], page_size=7, **kwargs).models
    return drift


def test_in_sync_reports_nothing(world: World) -> None:
    drift = drift_of(world)
    assert drift.rows == drift.indexable_rows == drift.documents == 30
    assert (drift.missing_from_index, drift.orphaned_in_index, drift.content_differs,
            drift.behind_completed_version) == (0, 0, 0, 0)
    assert drift.recommendation == "nothing" and drift.reasons == []


def test_drift_made_behind_our_back_is_found_both_ways(world: World, backend: Any,
                                                      os_client: Any) -> None:
    alias = f"{world.prefix}_articles"
    with world.Session() as session:
        session.get(world.Article, 9).title = "newer"
        session.commit()
    # Someone restores an old copy of the index: document 9 comes back as it was, at an
    # old version, below the write the outbox recorded as completed.
    info = scrypath_sa.registry.info_for(world.Article)
    restored = f"{alias}_restored"
    backend.create_index(restored, info.contract, info.name, alias_for=alias)
    for hit in os_client.search(index=alias, body={"size": 100, "version": True})["hits"]["hits"]:
        body, version = hit["_source"], hit["_version"]
        if hit["_id"] == "9":
            body, version = {**body, "title": "article 9"}, 2
        os_client.index(index=restored, id=hit["_id"], body=body, version=version,
                        version_type="external")
    backend.swap_alias(alias, restored)
    os_client.indices.refresh(index=alias)

    os_client.delete(index=alias, id="3", refresh=True)           # document deleted directly
    with world.engine.begin() as conn:
        conn.execute(text("DELETE FROM articles WHERE id IN (5, 6)"))       # rows gone
        conn.execute(text("UPDATE articles SET title = 'raw' WHERE id = 7"))  # content changed
        conn.execute(text("UPDATE articles SET published = false WHERE id = 8"))

    drift = drift_of(world)
    assert drift.missing_from_index == 1 and drift.samples["missing_from_index"] == ["3"]
    assert sorted(drift.samples["orphaned_in_index"]) == ["5", "6", "8"]
    assert drift.orphaned_in_index == 3
    assert "7" in drift.samples["content_differs"]
    assert drift.behind_completed_version == 1
    assert drift.samples["behind_completed_version"] == ["9"]
    assert drift.recommendation == "backfill"

    report = scrypath_sa.reconcile([world.Article], action="backfill")
    assert report.actions_taken[0]["action"] == "backfill"
    after = drift_of(world)
    assert after.recommendation == "nothing", after.reasons
    assert os_client.get(index=alias, id="7")["_source"]["title"] == "raw"
    assert os_client.get(index=alias, id="9")["_source"]["title"] == "newer"


def test_stuck_and_failed_work_recommends_retry(world: World) -> None:
    with world.Session() as session:
        session.add(world.Article(id=100, title="bad", views="not a number"))
        session.commit()
    with world.engine.begin() as conn:  # a worker took these and died
        session_ids = list(conn.execute(select(sync_events.c.id).where(
            sync_events.c.document_id.in_(["1", "2"]))).scalars())
        conn.execute(sync_events.update().where(sync_events.c.id.in_(session_ids))
                     .values(state="requested", completed_at=None))
        outbox.claim(conn, session_ids, "dramatiq", worker="dead:1:1")
    drift = drift_of(world, stuck_after=dt.timedelta(0))
    assert drift.stuck == 2 and drift.discarded == 1
    assert drift.recommendation == "backfill"  # row 100 is also missing from the index
    with world.engine.begin() as conn:
        conn.execute(text("UPDATE articles SET views = '100' WHERE id = 100"))
    # retry is not what the report recommends (backfill): it has to be forced
    refused = scrypath_sa.reconcile([world.Article], action="retry",
                                    stuck_after=dt.timedelta(0))
    assert refused.actions_taken[0]["done"] is False
    done = scrypath_sa.reconcile([world.Article], action="retry", force=True,
                                 stuck_after=dt.timedelta(0))
    assert done.actions_taken[0]["done"] is True
    assert done.actions_taken[0]["after"] == "nothing" and not done.needs_attention
    with world.engine.connect() as conn:
        states = set(conn.execute(select(sync_events.c.state)).scalars())
    assert states == {"completed"}
    assert drift_of(world).recommendation == "nothing"


def test_contract_drift_recommends_reindex_and_reindex_fixes_it(engine: Engine,
                                                                 index_prefix: str,
                                                                 backend: Any,
                                                                 os_client: Any) -> None:
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"t{i}") for i in range(1, 11)])
        session.commit()
    old_physical = list(os_client.indices.get_alias(name=f"{index_prefix}_articles"))
    changed = {"mappings": {"properties": {"title": {"type": "keyword"}}},
               "settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    w2 = make_world(engine, index_prefix, contract=changed)
    scrypath_sa.unconfigure(w.Session)  # the next deploy runs with the new contract
    scrypath_sa.configure(w2.Session, backend=backend)
    (drift,) = scrypath_sa.reconcile([w2.Article]).models
    assert drift.recommendation == "reindex"
    report = scrypath_sa.reconcile([w2.Article], action="reindex")
    result = report.actions_taken[0]["result"]
    assert result["cut_over"] is True and result["documents"] == 10
    assert result["previous_indices"] == old_physical
    mapping = os_client.indices.get_mapping(index=f"{index_prefix}_articles")
    (physical,) = mapping
    assert mapping[physical]["mappings"]["properties"]["title"]["type"] == "keyword"
    assert scrypath_sa.status([w2.Article]).models[0].contract_matches is True
    # the previous index is kept for rollback until pruned
    assert os_client.indices.exists(index=old_physical[0])
    pruned = scrypath_sa.prune([w2.Article], keep_previous_indices=0)
    assert pruned.indices_deleted == old_physical
    assert not os_client.indices.exists(index=old_physical[0])


def test_reindex_while_a_writer_keeps_committing_loses_nothing(world: World,
                                                               os_client: Any) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        n = 1000
        try:
            while not stop.is_set():
                n += 1
                with world.Session() as session:
                    session.add(world.Article(id=n, title=f"during {n}"))
                    if n % 3 == 0:
                        session.get(world.Article, (n % 30) + 1).title = f"edited {n}"
                    session.commit()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = scrypath_sa.reindex(world.Article, batch_size=5)
    finally:
        stop.set()
        thread.join(60)
    assert not errors
    assert report.cut_over, report.problems
    drift = drift_of(world)
    assert drift.recommendation == "nothing", drift.reasons
    assert drift.documents == drift.indexable_rows > 30


def _flaky(opensearch_url: str, down: range) -> Any:
    """A backend whose bulk calls numbered in ``down`` meet an outage."""

    class Flaky(OpenSearchBackend):
        calls = 0

        def bulk(self, ops: Any, *, wait_for_visibility: bool) -> Any:
            Flaky.calls += 1
            if Flaky.calls in down:
                return [ItemResult(ItemStatus.RETRYABLE, "connection_error", "down")] * len(ops)
            return super().bulk(ops, wait_for_visibility=wait_for_visibility)

    return Flaky(opensearch_url)


def test_backfill_rides_out_a_short_outage(world: World, opensearch_url: str,
                                           os_client: Any) -> None:
    alias = f"{world.prefix}_articles"
    os_client.indices.delete(index=f"{alias}_*")
    config = scrypath_sa.configure(world.Session, backend=_flaky(opensearch_url, range(3, 5)),
                                   backoff_base=0.01)
    report = scrypath_sa.backfill(world.Article, batch_size=7, config=config)
    assert report.rows_seen == 30 and report.indexed == 30 and not report.failures
    assert os_client.count(index=alias)["count"] == 30


def test_backfill_resumes_after_interruption(world: World, opensearch_url: str,
                                             os_client: Any) -> None:
    alias = f"{world.prefix}_articles"
    os_client.indices.delete(index=f"{alias}_*")  # the index is lost entirely
    # The third page meets an outage longer than the backfill's own retries.
    flaky = _flaky(opensearch_url, range(3, 3 + 1 + BACKFILL_RETRIES))
    config = scrypath_sa.configure(world.Session, backend=flaky, backoff_base=0.01)
    seen: list[int] = []
    with pytest.raises(BackendError, match="run it again to resume"):
        scrypath_sa.backfill(world.Article, batch_size=7, config=config,
                             progress=lambda p: seen.append(p.done))
    assert seen == [7, 14]
    resumed = scrypath_sa.backfill(world.Article, batch_size=7, config=config)
    assert resumed.resumed_from == [14]
    assert resumed.rows_seen == 16  # only the rest, not all 30 again
    assert os_client.count(index=alias)["count"] == 30
    again = scrypath_sa.backfill(world.Article, batch_size=7, config=config)
    assert again.resumed_from is None and again.rows_seen == 30  # a finished run restarts


def test_prune_keeps_failed_work_unless_asked(world: World) -> None:
    with world.Session() as session:
        session.add(world.Article(id=200, title="bad", views="nope"))
        session.commit()
    report = scrypath_sa.prune([world.Article], completed_older_than=dt.timedelta(0))
    assert report.events_deleted == 30 and report.failed_events_deleted == 0
    with world.engine.connect() as conn:
        assert list(conn.execute(select(sync_events.c.state)).scalars()) == ["discarded"]
    report = scrypath_sa.prune([world.Article], completed_older_than=dt.timedelta(0),
                               include_failed=True, failed_older_than=dt.timedelta(0))
    assert report.failed_events_deleted == 1


def test_backfill_fast_path_writes_the_same_documents(world: World, os_client: Any) -> None:
    """Models with default documents are backfilled from plain column rows; the
    documents must equal what the ORM path (the processor) writes."""
    with world.Session() as session:
        session.add_all([world.Translation(article_id=i, lang=lang, text=f"{lang} {i}:x")
                         for i in range(1, 8) for lang in ("en", "fr")])
        session.commit()
    alias = f"{world.prefix}_translations"
    before = {h["_id"]: h["_source"] for h in os_client.search(
        index=alias, body={"size": 100})["hits"]["hits"]}
    assert len(before) == 14
    os_client.indices.delete(index=f"{alias}_*")
    report = scrypath_sa.backfill(world.Translation, batch_size=4)
    assert report.indexed == 14 and report.ok
    after = {h["_id"]: h["_source"] for h in os_client.search(
        index=alias, body={"size": 100})["hits"]["hits"]}
    assert after == before
    drift = drift_of_model(world.Translation)
    assert drift.recommendation == "nothing", (drift.reasons, drift.samples)


def drift_of_model(model: Any) -> Any:
    (drift,) = scrypath_sa.reconcile([model], page_size=5).models
    return drift


@pytest.fixture
def pg_world(postgres_url: str, index_prefix: str, backend: Any) -> Any:
    """A configured world on PostgreSQL only, on a public schema of its own."""
    from sqlalchemy import create_engine

    engine = create_engine(postgres_url)

    def reset() -> None:
        engine.dispose()
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))

    reset()
    w = make_world(engine, index_prefix)
    scrypath_sa.configure(w.Session, backend=backend)
    yield w
    reset()
    engine.dispose()


def test_reindex_replays_a_transaction_that_spans_its_start(pg_world: World,
                                                            os_client: Any) -> None:
    """A transaction takes its event id, a later one commits (so the reindex's high-water
    mark is above the first id), the reindex starts and reads the row, and only then the
    first transaction commits: the new index must still get its write."""
    w = pg_world
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"article {i}") for i in range(1, 31)])
        session.commit()
    spanning = w.Session()  # its own connection: the reindex runs on others
    spanning.get(w.Article, 1).title = "changed while rebuilding"
    spanning.flush()  # its event id is taken now
    with w.Session() as session:
        session.add(w.Article(id=31, title="committed before the start"))
        session.commit()
    commits: list[str] = []

    def after_a_page(progress: Any) -> None:
        if not commits:  # the pages read so far hold the old title of row 1
            spanning.commit()
            commits.append(scrypath_sa.last_outcome(spanning).state)

    report = scrypath_sa.reindex(w.Article, batch_size=10, progress=after_a_page)
    spanning.close()
    assert commits == ["completed"]  # written to the old index, as inline promises
    assert report.cut_over, report.problems
    doc = os_client.get(index=f"{w.prefix}_articles", id="1")["_source"]
    assert doc["title"] == "changed while rebuilding"


@pytest.mark.parametrize("rebuild", ["backfill", "reindex", "cutover"])
def test_a_transaction_committed_after_a_rebuild_read_its_row_is_not_lost(
        pg_world: World, os_client: Any, rebuild: str) -> None:
    """A transaction takes its event id, the rebuild reads its high-water mark (above
    that id) and the row's old content, and only after the rebuild ended (the alias
    moved) does the transaction commit: its own write, below the rebuild's version, must
    still replace the copy the rebuild wrote."""
    w = pg_world
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"article {i}") for i in range(1, 6)])
        session.commit()
    spanning = w.Session()
    spanning.get(w.Article, 1).title = "changed during the rebuild"
    spanning.flush()  # its event id is taken now; the row is not committed
    with w.Session() as session:
        session.add(w.Article(id=6, title="committed before the start"))
        session.commit()
    if rebuild == "backfill":
        assert scrypath_sa.backfill(w.Article).ok
    elif rebuild == "reindex":
        assert scrypath_sa.reindex(w.Article).cut_over
    else:  # built first, cut over by the operator later
        built = scrypath_sa.reindex(w.Article, cutover=False)
        assert scrypath_sa.cutover(w.Article, built.new_index).cut_over
    spanning.commit()
    outcome = scrypath_sa.last_outcome(spanning)
    spanning.close()
    assert outcome.state == "completed", outcome.describe()
    doc = os_client.get(index=f"{w.prefix}_articles", id="1")["_source"]
    assert doc["title"] == "changed during the rebuild"
    assert scrypath_sa.reconcile([w.Article]).models[0].recommendation == "nothing"


def test_a_killed_rebuild_is_told_apart_and_prune_keeps_the_last_live_index(
        world: World, os_client: Any, opensearch_url: str) -> None:
    alias = f"{world.prefix}_articles"
    original = list(os_client.indices.get_alias(name=alias))
    first = scrypath_sa.reindex(world.Article)  # original -> first
    assert first.cut_over and first.previous_indices == original

    def interrupted(progress: Any) -> None:
        raise KeyboardInterrupt  # the operator's Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        scrypath_sa.reindex(world.Article, batch_size=10, progress=interrupted)
    (entry,) = scrypath_sa.status([world.Article]).models
    (stopped,) = entry.rebuilds
    assert stopped["state"] == "failed" and "KeyboardInterrupt" in stopped["error"]
    assert entry.rebuild_in_progress is None
    assert any(f"rebuild {stopped['index']} failed" in p for p in entry.problems)

    # A process killed outright records nothing: its owner's pid is gone from this host.
    env = {**os.environ, "SCRYPATH_TEST_PREFIX": world.prefix,
           "SCRYPATH_TEST_DATABASE_URL": world.engine.url.render_as_string(hide_password=False),
           "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url}
    killed = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, scrypath_sa\n"
        "from tests import cli_app\n"
        "scrypath_sa.reindex(cli_app.Article, batch_size=10,\n"
        "    progress=lambda p: os.kill(os.getpid(), signal.SIGKILL))\n")],
        cwd=ROOT, env=env, stderr=subprocess.PIPE)
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, stderr
    (entry,) = scrypath_sa.status([world.Article]).models  # stuck_after: 5 minutes
    (dead,) = [r for r in entry.rebuilds if r["index"] != stopped["index"]]
    assert dead["state"] == "abandoned" and dead["owner"].endswith(f":{killed.pid}")
    assert any(f"rebuild {dead['index']} by {dead['owner']} was abandoned" in p
               for p in entry.problems)
    status = ["--app", "tests.cli_app:config", "status"]
    printed = run_cli(world, opensearch_url, *status)
    assert printed.returncode == 2 and "was abandoned" in printed.stdout
    as_json = run_cli(world, opensearch_url, *status, "--json")
    assert as_json.returncode == 2
    states = {r["index"]: r["state"] for r in json.loads(as_json.stdout)["models"][0]["rebuilds"]}
    assert states == {stopped["index"]: "failed", dead["index"]: "abandoned"}

    # A run on another host is judged by when it was last heard from.
    with world.engine.begin() as conn:
        conn.execute(update(sync_checkpoints).where(
            sync_checkpoints.c.name == f"backfill:{dead['index']}").values(
            owner="another-host:4242"))
    (entry,) = scrypath_sa.status([world.Article]).models
    assert entry.rebuild_in_progress == dead["index"]
    (entry,) = scrypath_sa.status([world.Article], stuck_after=dt.timedelta(0)).models
    assert entry.rebuild_in_progress is None

    second = scrypath_sa.reindex(world.Article)  # first -> second
    assert second.cut_over and second.previous_indices == [first.new_index]
    pruned = scrypath_sa.prune([world.Article], keep_previous_indices=1)
    assert sorted(pruned.indices_deleted) == sorted([*original, stopped["index"],
                                                     dead["index"]])
    assert first.new_index in pruned.indices_kept  # the rollback copy is the last live one


def test_a_database_restored_from_an_older_backup_is_found_and_repaired(
        pg_world: World, os_client: Any, tmp_path: Any, opensearch_url: str) -> None:
    """pg_dump, later writes (the index moves to higher versions), pg_restore of the
    dump (event ids start lower again): a new commit of a restored row is not reported
    completed over a stale document, reconcile finds it, and one reindex brings index and
    database back in step, after which changes sync again."""
    import os
    import subprocess

    w, url = pg_world, pg_world.engine.url
    env = {**os.environ, "PGPASSWORD": url.password or ""}
    where = ["-h", url.host or "127.0.0.1", "-p", str(url.port), "-U", url.username or "",
             "-d", url.database or "postgres"]
    with w.Session() as session:
        session.add_all([w.Article(id=i, title=f"article {i}") for i in (1, 2, 3)])
        session.commit()
    dump = tmp_path / "backup.dump"
    subprocess.run(["pg_dump", *where, "-n", "public", "-Fc", "-f", str(dump)],
                   env=env, check=True, capture_output=True)
    for n in range(5):  # after the backup: the index moves on to higher versions
        with w.Session() as session:
            session.get(w.Article, 1).title = f"after the backup {n}"
            session.commit()
    w.engine.dispose()
    subprocess.run(["pg_restore", *where, "--clean", "--if-exists", "--no-owner",
                    str(dump)], env=env, check=True, capture_output=True)

    with w.Session() as session:  # a change to a restored row, below the index
        session.get(w.Article, 1).title = "written after the restore"
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome.state == "discarded"
    (failure,) = outcome.failures
    assert failure.error_kind == "index_ahead" and "reconcile --action reindex" in (
        failure.error or "")

    filled = scrypath_sa.backfill(w.Article)  # cannot repair it in place, and says so
    assert not filled.ok and [f["document_id"] for f in filled.failures] == ["1"]
    assert "above every version this database issued" in filled.failures[0]["error"]
    (drift,) = scrypath_sa.reconcile([w.Article]).models
    assert drift.ahead_of_database == 1 and drift.recommendation == "reindex"
    reconcile = ["--app", "tests.cli_app:config", "reconcile", "--model",
                 f"{w.prefix}_articles"]
    printed = run_cli(w, opensearch_url, *reconcile)
    assert printed.returncode == 2 and "ahead of the database: 1" in printed.stdout
    assert "recommendation: reindex" in printed.stdout
    as_json = run_cli(w, opensearch_url, *reconcile, "--json")
    assert as_json.returncode == 2
    (model,) = json.loads(as_json.stdout)["models"]
    assert model["ahead_of_database"] == 1 and model["recommendation"] == "reindex"
    repaired = scrypath_sa.reconcile([w.Article], action="reindex")
    assert repaired.actions_taken[0]["after"] == "nothing", repaired.actions_taken
    doc = os_client.get(index=f"{w.prefix}_articles", id="1")["_source"]
    assert doc["title"] == "written after the restore"

    with w.Session() as session:  # and changes sync again
        session.get(w.Article, 2).title = "synced again"
        session.commit()
        assert scrypath_sa.last_outcome(session).state == "completed"
    doc = os_client.get(index=f"{w.prefix}_articles", id="2")["_source"]
    assert doc["title"] == "synced again"
