"""Distributed backfill and reindex: ranges as Dramatiq messages run by real worker
processes on real PostgreSQL, Redis and OpenSearch; one worker killed mid-range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, insert, select

import scrypath_sa
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.modes.dramatiq import DramatiqMode
from scrypath_sa.schema import sync_checkpoints
from tests.faults import Workers, wait_for
from tests.models import World, make_world

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup(pg: Engine, index_prefix: str, redis_url: str, opensearch_url: str, backend: Any,
          tmp_path: Path) -> Iterator[tuple[World, Workers, Any]]:
    world = make_world(pg, index_prefix)
    queue = f"q{index_prefix}"
    broker = RedisBroker(url=redis_url)
    config = scrypath_sa.configure(world.Session, backend=backend, mode="inline",
                                   modes={"dramatiq": DramatiqMode(broker, queue_name=queue)})
    workers = Workers(tmp_path, {
        "SCRYPATH_TEST_PREFIX": index_prefix, "SCRYPATH_TEST_BROKER_URL": redis_url,
        "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url, "SCRYPATH_TEST_QUEUE": queue,
        "SCRYPATH_TEST_DATABASE_URL": pg.url.render_as_string(hide_password=False)})
    yield world, workers, config
    workers.stop_all()
    broker.client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.DQ", f"dramatiq:{queue}.XQ")


def _rows(world: World, n: int) -> None:
    """``n`` articles written behind the library's back: only a backfill finds them."""
    with world.engine.begin() as conn:
        conn.execute(insert(world.Article.__table__),
                     [{"id": i, "title": f"row {i}", "views": i, "published": True}
                      for i in range(1, n + 1)])


def _clean(world: World) -> Any:
    (drift,) = scrypath_sa.reconcile([world.Article]).models
    assert (drift.missing_from_index, drift.orphaned_in_index, drift.content_differs,
            drift.behind_completed_version) == (0, 0, 0, 0), drift
    assert drift.documents == drift.indexable_rows
    return drift


def _parts(world: World) -> list[Any]:
    with world.engine.connect() as conn:
        return list(conn.execute(select(sync_checkpoints).where(
            sync_checkpoints.c.name.like("distributed:%#%"))))


def _in_group(owner: str | None, group: int) -> bool:
    """Whether the process of ``owner`` (host:pid) belongs to process group ``group``."""
    pid = (owner or "").split(":")[1] if owner and ":" in owner else ""
    if not pid.isdigit():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return int(stat[stat.rindex(b")") + 2:].split()[2]) == group


def _finished(index: str) -> bool:
    run = scrypath_sa.rebuild_progress(index)
    return run is not None and run.done


def test_three_workers_one_killed_mid_range_index_equals_database(setup: Any) -> None:
    world, workers, _config = setup
    _rows(world, 12_000)
    alias = f"{world.prefix}_articles"
    run = scrypath_sa.start_backfill(world.Article, ranges=6, batch_size=200)
    assert (run.state, run.ranges, run.rows, run.ranges_done) == ("running", 6, 12_000, 0)

    # The first worker writes three pages of its range, then hangs in the fourth.
    stall = workers.tmp_path / "stalled"
    doomed = workers.start(1, SCRYPATH_TEST_STALL_FILE=str(stall),
                           SCRYPATH_TEST_STALL_AFTER="3")
    wait_for(stall.exists, "the first worker to be mid-range")
    (held,) = [p for p in _parts(world) if p.finished_at is None
               and _in_group(p.owner, doomed.pid)]
    assert held.processed == 600  # three acknowledged pages of 200
    workers.start(2)  # two more workers take the other ranges meanwhile
    workers.start(2)
    workers.kill(doomed)  # SIGKILL, mid-range (and whatever it had prefetched)
    (after,) = [p for p in _parts(world) if p.name == held.name]
    assert after.finished_at is None and after.processed == 600

    report = scrypath_sa.sweep()  # the dead worker's range (and prefetch) sent again
    assert report.rebuild_tasks >= 1
    wait_for(lambda: _finished(alias), "every range to finish", timeout=180)
    done = scrypath_sa.rebuild_progress(alias)
    assert done is not None and done.ok, done
    # Each row counted once: the resumed range went on from its last acknowledged page.
    assert (done.ranges_done, done.rows_done) == (6, 12_000)
    drift = _clean(world)
    assert drift.documents == 12_000
    status = scrypath_sa.status([world.Article]).models[0]
    assert status.distributed is not None and status.distributed.state == "finished"
    assert not status.problems, status.problems


def test_a_distributed_reindex_cuts_over_after_every_range_and_the_replay(
        setup: Any) -> None:
    world, workers, _config = setup
    _rows(world, 3000)
    scrypath_sa.backfill(world.Article)
    alias = f"{world.prefix}_articles"
    run = scrypath_sa.start_reindex(world.Article, ranges=3, batch_size=250)
    new_index = run.index
    assert run.reindex_of == alias and new_index != alias
    # Commits while the rebuild waits for workers: the replay carries them over.
    with world.Session() as session:
        for i in (5, 1500, 2999):
            session.get(world.Article, i).title = f"edited {i}"
        session.add(world.Article(id=3001, title="added during the rebuild"))
        session.commit()
    status = scrypath_sa.status([world.Article]).models[0]
    assert status.distributed is not None and status.distributed.state == "running"
    assert status.alias_points_to != [new_index]  # not before every range is done
    workers.start(2)
    workers.start(2)
    wait_for(lambda: _finished(new_index), "the reindex to finish", timeout=180)
    done = scrypath_sa.rebuild_progress(new_index)
    assert done is not None and done.ok and done.cut_over, done
    status = scrypath_sa.status([world.Article]).models[0]
    assert status.alias_points_to == [new_index]
    drift = _clean(world)
    assert drift.documents == 3001


def test_requests_that_cannot_run_change_nothing(setup: Any, pg: Engine) -> None:
    world, _workers, _config = setup
    _rows(world, 10)
    with pytest.raises(ConfigurationError, match="runs nothing on workers"):
        scrypath_sa.start_reindex(world.Article, mode="inline")
    with pytest.raises(ConfigurationError, match="ranges must be 1 or more"):
        scrypath_sa.start_backfill(world.Article, ranges=0)
    with pytest.raises(ConfigurationError, match="not configured"):
        scrypath_sa.start_backfill(world.Article, mode="celery")
    with pg.connect() as conn:
        assert conn.execute(select(sync_checkpoints)).all() == []
    assert scrypath_sa.status([world.Article]).models[0].physical_indices == []
    # One run per model at a time: a second request while one waits changes nothing.
    first = scrypath_sa.start_backfill(world.Article, ranges=2)
    indices = scrypath_sa.status([world.Article]).models[0].physical_indices
    with pytest.raises(ConfigurationError, match="is running"):
        scrypath_sa.start_reindex(world.Article)
    assert scrypath_sa.status([world.Article]).models[0].physical_indices == indices
    assert scrypath_sa.rebuild_progress(first.index) == first


def test_the_cli_starts_one_and_waits_for_it(setup: Any, tmp_path: Path) -> None:
    world, workers, _config = setup
    _rows(world, 2000)
    workers.start(2)
    env = {**os.environ, **workers.env,
           "SCRYPATH_TEST_BROKER_URL": workers.env["SCRYPATH_TEST_BROKER_URL"],
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    done = subprocess.run(
        [sys.executable, "-m", "scrypath_sa.cli", "--app", "tests.dramatiq_app:config",
         "backfill", "Article", "--distributed", "--ranges", "4", "--wait", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] and answer["state"] == "finished"
    assert (answer["ranges_done"], answer["rows_done"]) == (4, 2000)
    _clean(world)
    # A second start while none runs is fine; an unknown mode is a usage error (1).
    bad = subprocess.run(
        [sys.executable, "-m", "scrypath_sa.cli", "--app", "tests.dramatiq_app:config",
         "backfill", "Article", "--distributed", "--mode", "celery", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "not configured" in json.loads(bad.stdout)["error"]
