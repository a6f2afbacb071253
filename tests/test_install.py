"""configure(): what it needs to know up front, and how operator calls find it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import scrypath_sa
from scrypath_sa.errors import ConfigurationError, NotConfiguredError
from scrypath_sa.modes import Mode
from scrypath_sa.outcome import Outcome
from scrypath_sa.testing import InMemoryBackend
from tests.models import make_world


class Hold(Mode):
    name = "hold"

    def dispatch(self, config: Any, event_ids: Sequence[int], engine: Any = None) -> Outcome:
        return Outcome(mode=self.name, event_ids=list(event_ids))


def test_configure_needs_to_know_the_database(engine: Engine) -> None:
    unbound = sessionmaker()
    with pytest.raises(ConfigurationError, match="pass bind=engine"):
        scrypath_sa.configure(unbound, backend=InMemoryBackend())
    config = scrypath_sa.configure(unbound, backend=InMemoryBackend(), bind=engine)
    assert config.bind is engine
    assert scrypath_sa.configure(Session(engine), backend=InMemoryBackend()).bind is engine


def test_operator_calls_never_pick_one_of_several_configurations(engine: Engine,
                                                                prefix: str) -> None:
    with pytest.raises(NotConfiguredError, match="configure"):
        scrypath_sa.status()
    w = make_world(engine, prefix)
    first = scrypath_sa.configure(w.Session, backend=InMemoryBackend())
    assert scrypath_sa.current_config() is first
    other = sessionmaker(engine)
    second = scrypath_sa.configure(other, backend=InMemoryBackend())
    with pytest.raises(ConfigurationError, match=r"2 configurations are installed.*pass config="):
        scrypath_sa.status()
    with pytest.raises(ConfigurationError, match="pass config="):
        scrypath_sa.current_config()
    assert scrypath_sa.status(config=second).models  # said which: fine
    scrypath_sa.unconfigure(other)
    assert scrypath_sa.current_config() is first


def test_a_custom_mode_name_is_known_while_a_configuration_offers_it(engine: Engine) -> None:
    target = sessionmaker(engine)
    with pytest.raises(ConfigurationError, match="unknown sync mode 'hold'"):
        scrypath_sa.sync_mode("hold").__enter__()
    scrypath_sa.configure(target, backend=InMemoryBackend(), modes={"hold": Hold()})
    with scrypath_sa.sync_mode("hold"):
        pass
    scrypath_sa.unconfigure(target)
    with pytest.raises(ConfigurationError, match="unknown sync mode 'hold'"):
        scrypath_sa.sync_mode("hold").__enter__()


def test_dramatiq_is_a_known_mode_only_where_it_is_configured(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="unknown sync mode 'dramatiq'"):
        scrypath_sa.sync_mode("dramatiq").__enter__()


def test_an_unconfigured_mode_says_how_to_configure_it(engine: Engine) -> None:
    config = scrypath_sa.configure(sessionmaker(engine), backend=InMemoryBackend())
    with pytest.raises(ConfigurationError,
                       match=r"modes=\{'dramatiq': DramatiqMode\(broker\)\}"):
        config.mode("dramatiq")
