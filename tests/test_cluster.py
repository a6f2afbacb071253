"""A three-node OpenSearch cluster on loopback, indices with a replica: a node killed
(SIGKILL) during a Dramatiq drain and during a backfill loses no write, and status()
says yellow while a replica is missing. Real PostgreSQL, Redis, worker processes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servicekit
from dramatiq.brokers.redis import RedisBroker
from opensearchpy import OpenSearch
from sqlalchemy import Engine, insert

import scrypath_sa
from scrypath_sa import registry
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.modes.dramatiq import DramatiqMode
from tests.faults import TERMINAL, Workers, states, wait_for
from tests.models import World, make_world

CONTRACT = {
    "mappings": {"properties": {"title": {"type": "text"}, "views": {"type": "integer"},
                                "published": {"type": "boolean"}}},
    "settings": {"number_of_shards": 3, "number_of_replicas": 1,
                 "refresh_interval": "200ms"},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servicekit.OpenSearchCluster]:
    nodes = servicekit.OpenSearchCluster(tmp_path_factory.mktemp("cluster"), size=3)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture
def world(pg: Engine, prefix: str,
          cluster: servicekit.OpenSearchCluster) -> Iterator[tuple[World, OpenSearch]]:
    client = OpenSearch(cluster.urls)
    w = make_world(pg, prefix, CONTRACT)
    info = registry.info_for(w.Article)
    assert info is not None
    backend = OpenSearchBackend(cluster.urls)
    backend.ensure_index(info.index, info.contract, info.name)  # to find its primaries
    backend.close()
    yield w, client
    killed = [i for i, node in enumerate(cluster.nodes) if node is None]
    if killed:  # back for the next test, on their data
        cluster.start(*killed)
    client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
    client.close()


def _node_holding_primaries(client: OpenSearch, alias: str) -> int:
    """The index of the node (scrypath-node-I) that holds the most primaries of ``alias``."""
    shards = client.cat.shards(index=alias, format="json")
    counts: dict[str, int] = {}
    for shard in shards:
        if shard["prirep"] == "p" and shard.get("node"):
            counts[shard["node"]] = counts.get(shard["node"], 0) + 1
    return int(max(counts, key=lambda n: counts[n]).rsplit("-", 1)[1])


def _in_step(world: World, client: OpenSearch) -> None:
    """Every row is a document with its content, and reconcile finds no drift."""
    (drift,) = scrypath_sa.reconcile([world.Article]).models
    assert (drift.missing_from_index, drift.orphaned_in_index, drift.content_differs,
            drift.behind_completed_version) == (0, 0, 0, 0), drift
    assert drift.documents == drift.indexable_rows and drift.recommendation == "nothing"


def test_a_node_killed_during_a_dramatiq_drain_loses_no_write(
        world: tuple[World, OpenSearch], cluster: servicekit.OpenSearchCluster,
        redis_url: str, tmp_path: Path) -> None:
    w, client = world
    queue = f"q{w.prefix}"
    # The client's own retries move a request off a dead node (the workers have none:
    # their failed writes retry as events).
    backend = OpenSearchBackend(cluster.urls, timeout=5)
    scrypath_sa.configure(w.Session, backend=backend, mode="dramatiq",
                          modes={"dramatiq": DramatiqMode(RedisBroker(url=redis_url),
                                                          queue_name=queue, chunk_size=50)})
    for start in range(0, 3000, 100):  # 30 commits; their messages wait for a worker
        with w.Session() as session:
            session.add_all([w.Article(id=i, title=f"clustered {i}")
                             for i in range(start + 1, start + 101)])
            session.commit()
    alias = f"{w.prefix}_articles"
    victim = _node_holding_primaries(client, alias)
    workers = Workers(tmp_path, {
        "SCRYPATH_TEST_PREFIX": w.prefix, "SCRYPATH_TEST_BROKER_URL": redis_url,
        "SCRYPATH_TEST_OPENSEARCH_URL": ",".join(cluster.urls), "SCRYPATH_TEST_QUEUE": queue,
        "SCRYPATH_TEST_BATCH_SIZE": "50",
        "SCRYPATH_TEST_DATABASE_URL": w.engine.url.render_as_string(hide_password=False)})
    try:
        workers.start(2)
        wait_for(lambda: states(w.engine).get("completed", 0) > 0, "the drain to begin")
        cluster.kill(victim)  # mid-drain: its primaries move to their replicas
        assert sum(states(w.engine).get(s, 0) for s in TERMINAL) < 3000, "drained too soon"
        wait_for(lambda: set(states(w.engine)) <= TERMINAL, "the drain to finish", timeout=240)
    finally:
        workers.stop_all()
    assert states(w.engine) == {"completed": 3000}, workers.logs()
    _in_step(w, client)
    # One node short, the replicas of its shards cannot be placed: status says so.
    (entry,) = scrypath_sa.status([w.Article]).models
    assert entry.health is not None and entry.health.status == "yellow"
    assert any("is yellow" in p for p in entry.problems), entry.problems


def test_a_node_killed_during_a_backfill_loses_no_write(
        world: tuple[World, OpenSearch], cluster: servicekit.OpenSearchCluster) -> None:
    w, client = world
    rows = 20_000
    with w.engine.begin() as conn:  # written behind the library's back: backfill finds them
        conn.execute(insert(w.Article.__table__),
                     [{"id": i, "title": f"backfilled {i}", "views": i, "published": True}
                      for i in range(1, rows + 1)])
    backend = OpenSearchBackend(cluster.urls, max_retries=0, timeout=5)
    scrypath_sa.configure(w.Session, backend=backend, backoff_base=0.5)
    victim = _node_holding_primaries(client, f"{w.prefix}_articles")
    halfway = threading.Event()

    def progress(p: Any) -> None:
        if p.done >= rows // 4:
            halfway.set()

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = scrypath_sa.backfill(w.Article, batch_size=500,
                                                    progress=progress)
        except Exception as exc:  # noqa: BLE001 - asserted below
            result["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    assert halfway.wait(120), "the backfill did not get a quarter through"
    cluster.kill(victim)
    runner.join(300)
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert report.rows_seen == rows and report.indexed == rows and not report.failures
    _in_step(w, client)
