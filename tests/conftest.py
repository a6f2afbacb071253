"""The test harness: real PostgreSQL (also behind PgBouncer), SQLite, Redis, RabbitMQ and
OpenSearch.

Services start lazily, once per test session, each in a throwaway directory on a free
loopback port (``scripts/servicekit.py``). When ``SCRYPATH_TEST_DATABASE_URL``,
``SCRYPATH_TEST_OPENSEARCH_URL``, ``SCRYPATH_TEST_REDIS_URL``,
``SCRYPATH_TEST_RABBITMQ_URL`` or ``SCRYPATH_TEST_PGBOUNCER_URL`` is set, that server is
used instead. A missing binary fails with the command that installs it; nothing skips.

Every test that needs one of those servers (through a fixture below, or the PostgreSQL
case of ``database_url``) is marked ``services`` at collection, so
``pytest -m "not services"`` runs the rest (SQLite, the embedded backend, pure logic)
without starting Java or PostgreSQL.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import servicekit  # noqa: E402

from scrypath_sa.redaction import redact  # noqa: E402
from tests.models import make_engine  # noqa: E402

DATABASES = ["sqlite", "postgresql", "pgbouncer"]
"""``pgbouncer``: PostgreSQL through PgBouncer in transaction pooling mode, for the
modules that set ``THROUGH_PGBOUNCER = True`` (the modes, operator commands and
workers); the others run on the first two."""
OPENSEARCH = "opensearch3" if os.environ.get("SCRYPATH_TEST_OPENSEARCH_LINE") == "3" else (
    "opensearch")
"""The OpenSearch line the tests run on: 2.19, or 3.x with SCRYPATH_TEST_OPENSEARCH_LINE=3
(scripts/test runs the backend contract and the sync tests on both)."""
SERVICE_FIXTURES = frozenset({"services", "postgres_url", "redis_url", "rabbitmq_url",
                              "opensearch_url", "index_prefix", "backend", "os_client",
                              "faults", "cluster"})


SERVICE_PARAMS = frozenset({"postgresql", "pgbouncer", "opensearch", "redis", "rabbitmq"})
"""Fixture parameters that start a server (``database_url``, ``any_backend``)."""


_running: pytest.Item | None = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    global _running
    _running = item


def _left_out(item: pytest.Item) -> bool:
    """PgBouncer runs only for modules that ask (``THROUGH_PGBOUNCER``), and with Redis
    as the broker (RabbitMQ runs on SQLite and PostgreSQL)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or callspec.params.get("database_url") != "pgbouncer":
        return False
    return (not getattr(getattr(item, "module", None), "THROUGH_PGBOUNCER", False)
            or callspec.params.get("broker_url") == "rabbitmq")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skipped = [i for i in items if _left_out(i)]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [i for i in items if i not in set(skipped)]
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec else set()
        if names & SERVICE_FIXTURES or params & SERVICE_PARAMS:
            item.add_marker(pytest.mark.services)


class _Services:
    """Starts each service on first use and stops all of them at the end."""

    ENV: ClassVar[dict[str, str]] = {
        "postgresql": "SCRYPATH_TEST_DATABASE_URL",
        "redis": "SCRYPATH_TEST_REDIS_URL",
        "opensearch": "SCRYPATH_TEST_OPENSEARCH_URL",
        "opensearch3": "SCRYPATH_TEST_OPENSEARCH3_URL",
        "rabbitmq": "SCRYPATH_TEST_RABBITMQ_URL",
    }

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="scrypath-services-"))
        self.workdir.chmod(0o755)  # PostgreSQL runs as the postgres user and must enter it
        self.running: dict[str, servicekit.Running] = {}

    def url(self, name: str) -> str:
        if _running is not None and _running.get_closest_marker("services") is None:
            pytest.fail(f"{_running.nodeid} uses {name} but is not marked `services`: add its "
                        "fixture or parameter to SERVICE_FIXTURES or SERVICE_PARAMS",
                        pytrace=False)
        if name == "opensearch":
            name = OPENSEARCH
        given = os.environ.get(self.ENV[name])
        if given:
            return given
        if name not in self.running:
            try:
                self.running[name] = servicekit.STARTERS[name](self.workdir / name)
            except servicekit.MissingTool as exc:
                pytest.fail(str(exc), pytrace=False)
        return self.running[name].url

    def process(self, name: str) -> servicekit.Running:
        """The running server behind ``name``'s URL: started by this harness, or by
        ``scripts/services`` (its state file); fault tests signal or restart it."""
        url = self.url(name)
        if name == "opensearch":
            name = OPENSEARCH
        if name in self.running:
            return self.running[name]
        for running in servicekit.load_state(ROOT / ".services" / "state.json").values():
            if running.name == name and running.url == url and running.alive():
                return running
        pytest.fail(f"{name} at {redact(url)} was not started by this harness or "
                    "scripts/services (or it was restarted since): "
                    "a fault test cannot stop or restart it", pytrace=False)

    def stop(self) -> None:
        for running in self.running.values():
            running.stop()


@pytest.fixture(scope="session")
def services() -> Iterator[_Services]:
    svc = _Services()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def postgres_url(services: _Services) -> str:
    return services.url("postgresql")


@pytest.fixture(scope="session")
def redis_url(services: _Services) -> str:
    return services.url("redis")


@pytest.fixture(scope="session")
def rabbitmq_url(services: _Services) -> str:
    return services.url("rabbitmq")


@pytest.fixture(scope="session")
def opensearch_url(services: _Services) -> str:
    return services.url("opensearch")


@pytest.fixture(scope="session")
def pgbouncer_url(services: _Services, postgres_url: str) -> str:
    """PostgreSQL through PgBouncer (transaction pooling); workers started by the tests
    find it in ``SCRYPATH_TEST_PGBOUNCER_URL`` and build their engines like
    :func:`tests.models.make_engine`."""
    url = os.environ.get("SCRYPATH_TEST_PGBOUNCER_URL")
    if not url:
        try:
            running = servicekit.start_pgbouncer(services.workdir / "pgbouncer", postgres_url)
        except servicekit.MissingTool as exc:
            pytest.fail(str(exc), pytrace=False)
        services.running["pgbouncer"] = running
        url = os.environ["SCRYPATH_TEST_PGBOUNCER_URL"] = running.url
    return url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL: SQLite (a file), PostgreSQL, PostgreSQL through PgBouncer."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite'}"
    url: str = request.getfixturevalue(
        "pgbouncer_url" if request.param == "pgbouncer" else "postgres_url")
    return url


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Engine]:
    """An engine on a clean PostgreSQL only (tests that need several processes on one
    database, where SQLite and PgBouncer add nothing)."""
    eng = create_engine(postgres_url)
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    yield eng
    eng.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a clean database: PostgreSQL's public schema is reset before (a
    benchmark or an aborted run may have left tables) and after."""
    eng = make_engine(database_url)

    def reset() -> None:
        if eng.dialect.name == "postgresql":
            with eng.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))

    reset()
    yield eng
    reset()
    eng.dispose()


@pytest.fixture
def prefix() -> str:
    """A unique name prefix, for tests that need no OpenSearch."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def index_prefix(prefix: str, opensearch_url: str) -> Iterator[str]:
    """A unique index-name prefix; every index and alias under it is deleted afterwards."""
    from opensearchpy import OpenSearch

    yield prefix
    client = OpenSearch(opensearch_url)
    client.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
    client.close()


# ------------------------------------------------------------------ sync test support

@pytest.fixture
def backend(opensearch_url: str) -> Iterator[object]:
    from scrypath_sa.backends import OpenSearchBackend

    b = OpenSearchBackend(opensearch_url)
    yield b
    b.close()


@pytest.fixture
def process_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of events of each processor run from now on (runs shared by
    concurrent commits are fewer than the commits)."""
    from scrypath_sa import processor

    runs: list[int] = []
    process = processor.process

    def counted(config: Any, event_ids: Any, **kw: Any) -> Any:
        runs.append(len(event_ids))
        return process(config, event_ids, **kw)

    monkeypatch.setattr(processor, "process", counted)
    return runs


@pytest.fixture
def os_client(opensearch_url: str) -> Iterator[object]:
    from opensearchpy import OpenSearch

    client = OpenSearch(opensearch_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _unconfigure_all() -> Iterator[None]:
    """No configuration leaks from one test into the next."""
    yield
    from scrypath_sa import install

    for config in install.installed():
        install.unconfigure(config.target)


@pytest.fixture
def faults(services: _Services) -> Iterator[Any]:
    """Fault injection on the real servers (see tests/faults.py); every fault is undone
    when the test ends, whatever happened."""
    from tests.faults import Faults

    injected = Faults(services.process)
    try:
        yield injected
    finally:
        injected.undo()
