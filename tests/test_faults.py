"""Faults on the real servers (tests/faults.py): a stalled cluster, answers dropped on
the way back. Each scenario ends with the index equal to the database and no event
left unfinished without a reason status() reports. Worker deaths are in
tests/test_dramatiq.py, transactions open across rebuilds in tests/test_repair.py."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

import scrypath_sa
from scrypath_sa.backends import OpenSearchBackend
from tests.faults import DroppingProxy, Faults, assert_in_step, states, wait_for
from tests.models import World, make_world


def _articles(world: World, ids: range, title: str = "row") -> Any:
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=f"{title} {i}") for i in ids])
        session.commit()
        return scrypath_sa.last_outcome(session)


@pytest.fixture
def world(engine: Engine, index_prefix: str) -> World:
    return make_world(engine, index_prefix)


def test_a_stalled_cluster_holds_an_inline_commit_about_one_timeout(
        world: World, opensearch_url: str, os_client: Any, faults: Faults) -> None:
    """The OpenSearch JVM stopped (SIGSTOP): a 5,000-row inline commit (10 batches, two
    requests in flight) returns after about one 2 s request timeout, not ten: once a
    request got no answer, the run sends nothing more. Every event is retrying, and
    once the cluster continues, a sweep brings the index in step."""
    backend = OpenSearchBackend(opensearch_url, max_retries=0, timeout=2)
    scrypath_sa.configure(world.Session, backend=backend, batch_size=500)
    _articles(world, range(1, 2))  # the index exists before the stall
    with faults.paused("opensearch"):
        began = time.monotonic()
        outcome = _articles(world, range(2, 5002))
        waited = time.monotonic() - began
    assert outcome.state == "retrying" and outcome.states["retrying"] == 5000
    assert waited < 7, f"the commit waited {waited:.1f}s"  # ten timeouts: 10 s and more
    assert any("got no answer" in (f.error or "") for f in outcome.failures)
    assert states(world.engine) == {"completed": 1, "retrying": 5000}
    assert_in_step_after_sweep(world, os_client)
    backend.close()


def test_an_inline_commit_stops_at_its_deadline(world: World, opensearch_url: str,
                                                os_client: Any, faults: Faults) -> None:
    """inline_timeout bounds the run even when each request is answered, slowly."""
    backend = OpenSearchBackend(opensearch_url, max_retries=0, timeout=30)
    scrypath_sa.configure(world.Session, backend=backend, batch_size=100,
                          inline_timeout=0.5)
    _articles(world, range(1, 2))
    with faults.paused("opensearch"):  # the first requests wait for the cluster
        import threading

        threading.Timer(1.5, lambda: faults.undo()).start()
        outcome = _articles(world, range(2, 1002))
    sent_late = [f for f in outcome.failures if f.error_kind == "not_sent"]
    assert sent_late and all("deadline" in (f.error or "") for f in sent_late)
    assert outcome.states["completed"] >= 1 and outcome.states["retrying"] == len(sent_late)
    assert_in_step_after_sweep(world, os_client)
    backend.close()


@pytest.fixture
def proxy(opensearch_url: str) -> Iterator[DroppingProxy]:
    proxied = DroppingProxy(opensearch_url)
    yield proxied
    proxied.close()


def test_answers_dropped_on_the_way_back(world: World, proxy: DroppingProxy,
                                         os_client: Any) -> None:
    """The writes reach the cluster but no answer comes back: the events are retrying
    (never completed on a guess), and writing them again is harmless."""
    backend = OpenSearchBackend(proxy.url, max_retries=0, timeout=5)
    scrypath_sa.configure(world.Session, backend=backend, batch_size=100)
    _articles(world, range(1, 2))
    proxy.dropping = True
    outcome = _articles(world, range(2, 302))
    proxy.dropping = False
    assert outcome.state == "retrying" and outcome.states["retrying"] == 300
    assert proxy.dropped >= 1
    assert_in_step_after_sweep(world, os_client)
    backend.close()


def assert_in_step_after_sweep(world: World, os_client: Any) -> None:
    """Sweep, as an operator's schedule would, until every event is completed (the
    retrying ones become due after their backoff); then the index is in step."""
    def swept() -> bool:
        scrypath_sa.sweep(older_than=dt.timedelta(0))
        return set(states(world.engine)) == {"completed"}

    wait_for(swept, "sweeps to finish the retrying events", timeout=60)
    assert_in_step(world, os_client)
