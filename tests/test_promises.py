"""Each mode declares what a commit's outcome promises; ``strict=True`` holds the outcome
to that promise. The dramatiq cases send to a real Redis (and to a closed port, for a
broker that is down)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import servicekit
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

import scrypath_sa
from scrypath_sa import State
from scrypath_sa.errors import SyncIncompleteError
from scrypath_sa.modes import InlineMode, ManualMode, Mode
from scrypath_sa.modes.dramatiq import DramatiqMode
from scrypath_sa.outcome import Failure, Outcome
from scrypath_sa.testing import InMemoryBackend
from tests.models import World, make_world


class Recorded(Mode):
    """Leaves events ``requested``, and says so."""

    name = "recorded"
    promise = frozenset({State.REQUESTED})

    def dispatch(self, config: Any, event_ids: Sequence[int], engine: Any = None) -> Outcome:
        outcome = Outcome(mode=self.name, event_ids=list(event_ids))
        outcome.states[State.REQUESTED.value] += len(event_ids)
        return outcome


class Silent(Recorded):
    """The same, without declaring a promise: it is held to ``completed``."""

    name = "silent"
    promise = Mode.promise


@pytest.fixture
def world(engine: Engine, prefix: str) -> World:
    return make_world(engine, prefix)


def commit_one(world: World, mode: str | None = None) -> Outcome:
    with world.Session() as session:
        if mode is not None:
            scrypath_sa.set_session_mode(session, mode)
        session.add(world.Article(id=1, title="promised"))
        session.commit()
        outcome = scrypath_sa.last_outcome(session)
    assert outcome is not None
    return outcome


def dramatiq_mode(redis_url: str, prefix: str, **options: Any) -> DramatiqMode:
    return DramatiqMode(RedisBroker(url=redis_url), queue_name=f"q{prefix}", **options)


def test_the_declared_promises() -> None:
    assert InlineMode.promise == {State.COMPLETED}
    assert ManualMode.promise == {State.BACKEND_ACCEPTED}
    assert DramatiqMode(StubBroker()).promise == {State.ENQUEUED}
    assert DramatiqMode(StubBroker(), background=True).promise == {State.REQUESTED}


def test_kept_promise_needs_every_state_promised_and_no_failure() -> None:
    mode = ManualMode()
    kept = Outcome(mode="manual", event_ids=[1, 2])
    kept.states["backend_accepted"] = 2
    assert mode.kept_promise(kept)
    assert mode.kept_promise(Outcome(mode="manual", event_ids=[]))  # nothing to do
    mixed = Outcome(mode="manual", event_ids=[1, 2])
    mixed.states.update({"backend_accepted": 1, "retrying": 1})
    assert not mode.kept_promise(mixed)
    failed = Outcome(mode="manual", event_ids=[1])
    failed.states["backend_accepted"] = 1
    failed.failures.append(Failure(1, "i", "1", "discarded", "mapper_parsing", "bad"))
    assert not mode.kept_promise(failed)
    assert not mode.kept_promise(Outcome(mode="manual", event_ids=[1], error="broker down"))


@pytest.mark.parametrize(("mode", "state"), [("inline", "completed"),
                                              ("manual", "backend_accepted")])
def test_strict_accepts_what_inline_and_manual_promise(world: World, mode: str,
                                                       state: str) -> None:
    scrypath_sa.configure(world.Session, backend=InMemoryBackend(), mode=mode, strict=True)
    assert commit_one(world).state == state


def test_strict_holds_custom_modes_to_their_promise(world: World) -> None:
    scrypath_sa.configure(world.Session, backend=InMemoryBackend(), strict=True,
                          modes={"recorded": Recorded(), "silent": Silent()})
    assert commit_one(world, "recorded").state == "requested"
    with world.Session() as session:
        scrypath_sa.set_session_mode(session, "silent")
        session.add(world.Article(id=2, title="not what was promised"))
        with pytest.raises(SyncIncompleteError, match="the database transaction committed"):
            session.commit()


@pytest.mark.parametrize(("background", "state"), [(False, "enqueued"),
                                                     (True, "requested")])
def test_strict_accepts_what_dramatiq_promises(world: World, redis_url: str, prefix: str,
                                               background: bool, state: str) -> None:
    mode = dramatiq_mode(redis_url, prefix, background=background)
    scrypath_sa.configure(world.Session, backend=InMemoryBackend(), mode="dramatiq",
                          modes={"dramatiq": mode}, strict=True)
    try:
        assert commit_one(world).state == state
    finally:
        assert mode.flush(30)
        mode.broker.flush_all()


def test_strict_raises_when_the_broker_refuses(world: World) -> None:
    down = RedisBroker(url=f"redis://127.0.0.1:{servicekit.free_port()}/0",
                       socket_connect_timeout=1)
    scrypath_sa.configure(world.Session, backend=InMemoryBackend(), mode="dramatiq",
                          modes={"dramatiq": DramatiqMode(down)}, strict=True)
    with world.Session() as session:
        session.add(world.Article(id=1, title="kept"))
        with pytest.raises(SyncIncompleteError) as excinfo:
            session.commit()
    assert excinfo.value.outcome.state == "requested"
    assert excinfo.value.outcome.error is not None
