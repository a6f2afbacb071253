"""configure(): what it needs to know up front, and how operator calls find it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

import scrypath_sa
from scrypath_sa.errors import ConfigurationError, NotConfiguredError
from scrypath_sa.testing import InMemoryBackend
from tests.models import make_world
from tests.test_modes import Hold


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


@pytest.mark.parametrize(("target", "says"), [
    (object(), "got a object"), ("Session", "got a str"),
    (None, "got a NoneType")])
def test_configure_says_what_to_pass_for_a_wrong_target(target: Any, says: str) -> None:
    with pytest.raises(ConfigurationError, match=f"a sessionmaker, a Session subclass.*{says}"):
        scrypath_sa.configure(target, backend=InMemoryBackend())


def test_configure_on_an_engine_says_to_pass_it_as_bind(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="pass the engine as bind="):
        scrypath_sa.configure(engine, backend=InMemoryBackend(), bind=engine)


def test_errors_never_print_a_foreign_objects_repr(engine: Engine) -> None:
    """A client object passed where a backend or mode goes: its repr (which carries the
    password) is not in the error."""
    class Client:
        def __repr__(self) -> str:
            return "<OpenSearch([{'http_auth': 'admin:hunter2'}])>"

    for call in (lambda: scrypath_sa.configure(sessionmaker(engine), backend=Client()),
                 lambda: scrypath_sa.configure(sessionmaker(engine), backend=InMemoryBackend(),
                                               modes={"x": Client()})):
        with pytest.raises(ConfigurationError) as raised:
            call()
        assert "hunter2" not in str(raised.value) and "Client" in str(raised.value)


def test_a_model_whose_mapping_failed_is_not_left_registered(engine: Engine,
                                                             prefix: str) -> None:
    from sqlalchemy.exc import ArgumentError
    from sqlalchemy.orm import DeclarativeBase, Mapped

    from scrypath_sa import Searchable, registry

    class Base(DeclarativeBase):
        pass

    with pytest.raises(ArgumentError, match="primary key"):
        type("NoKey", (Searchable, Base), {"__tablename__": f"{prefix}_nokey",
                                           "__annotations__": {"name": Mapped[str]}})
    assert f"{prefix}_nokey" not in {m.index for m in registry.all_models()}
    assert all(m.mapper.primary_key for m in registry.all_models())  # none half-defined


def test_retry_with_an_unknown_mode_changes_nothing(engine: Engine, prefix: str) -> None:
    from sqlalchemy import select

    from scrypath_sa import sync_events

    w = make_world(engine, prefix)
    scrypath_sa.configure(w.Session, backend=InMemoryBackend(), mode="hold",
                          modes={"hold": Hold()})
    with w.Session() as session:
        session.add(w.Article(id=1, title="a"))
        session.commit()
    with engine.begin() as conn:
        conn.execute(sync_events.update().values(state="discarded"))
    event_id = scrypath_sa.failed().events[0].id
    with pytest.raises(ConfigurationError, match="turbo"):
        scrypath_sa.retry(event_id, mode="turbo")
    with engine.connect() as conn:
        assert conn.execute(select(sync_events.c.state)).scalar_one() == "discarded"


def test_a_schema_without_the_librarys_tables_names_the_fix(engine: Engine,
                                                             prefix: str) -> None:
    """A suite that builds its schema with its own metadata.create_all() only."""
    from sqlalchemy.exc import DBAPIError

    from tests.models import define_models

    base, article, _, _ = define_models(prefix)
    base.metadata.create_all(engine)  # the app's tables, not sync_events
    Session = sessionmaker(engine)
    scrypath_sa.configure(Session, backend=InMemoryBackend())
    with Session() as session:
        session.add(article(id=1, title="a"))
        fix = r"scrypath_sa\.metadata\.create_all"
        with pytest.raises(ConfigurationError, match=fix) as raised:
            session.commit()
    assert isinstance(raised.value.__cause__, DBAPIError)
    with engine.connect() as conn:  # the data did not commit without its event
        assert conn.execute(select(func.count()).select_from(article)).scalar_one() == 0


def test_sync_can_be_turned_off_for_a_block_or_a_configuration(engine: Engine,
                                                               prefix: str) -> None:
    from sqlalchemy import select

    from scrypath_sa import sync_events

    w = make_world(engine, prefix)
    backend = InMemoryBackend()
    config = scrypath_sa.configure(w.Session, backend=backend)
    with scrypath_sa.disabled(), w.Session() as session:
        session.add(w.Article(id=1, title="not synced"))
        session.commit()
        assert scrypath_sa.last_outcome(session) is None
    with w.Session() as session:
        session.add(w.Article(id=2, title="synced"))
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(select(sync_events.c.document_id)).scalars().all() == ["2"]
    assert config.enabled
    off = scrypath_sa.configure(w.Session, backend=backend, enabled=False)
    with w.Session() as session:
        session.add(w.Article(id=3, title="installed off"))
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(select(sync_events.c.document_id)).scalars().all() == ["2"]
    assert not off.enabled
