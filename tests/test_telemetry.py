"""Metrics, traces and logs of real sync work: a real OpenSearch node, SQLite, a real
prometheus-client registry, the OpenTelemetry SDK's in-memory exporter, and Dramatiq's
own worker threads in this process (the stub broker) for the trace that crosses a
message."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine

import scrypath_sa
from scrypath_sa import metrics
from scrypath_sa.backends import OpenSearchBackend
from scrypath_sa.modes.dramatiq import DramatiqMode
from tests.models import World, make_world

SECRET = "hunter2-not-for-logs"
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    """One SDK provider for the process (OpenTelemetry allows setting it once)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


@pytest.fixture
def world(tmp_path: Path, index_prefix: str) -> World:
    return make_world(create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}"), index_prefix)


@pytest.fixture
def secret_url(opensearch_url: str) -> str:
    """The real node's URL with credentials in it (a node without security ignores
    them): they must never come out of the library."""
    return opensearch_url.replace("://", f"://admin:{SECRET}@")


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    metrics.install(reg)
    yield reg
    metrics.uninstall(reg)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def commit(world: World, *rows: tuple[int, str, Any]) -> Any:
    with world.Session() as session:
        session.add_all([world.Article(id=i, title=t, views=v) for i, t, v in rows])
        session.commit()
        return scrypath_sa.last_outcome(session)


def test_metrics_count_a_scenario_and_the_lag_comes_from_one_cached_query(
        world: World, secret_url: str, registry: CollectorRegistry) -> None:
    config = scrypath_sa.configure(world.Session, backend=OpenSearchBackend(secret_url))
    outcome = commit(world, (1, "fine", 1), (2, "poison", "not a number"), (3, "fine", 3))
    assert outcome.states == {"completed": 2, "discarded": 1}
    assert sample(registry, "scrypath_sa_event_transitions_total", state="requested") == 3
    assert sample(registry, "scrypath_sa_event_transitions_total", state="processing") == 3
    assert sample(registry, "scrypath_sa_event_transitions_total", state="completed") == 2
    assert sample(registry, "scrypath_sa_discards_total",
                  error_kind="mapper_parsing_exception") == 1
    assert sample(registry, "scrypath_sa_bulk_documents_count") == 1  # one request
    assert sample(registry, "scrypath_sa_bulk_documents_sum") == 3
    assert sample(registry, "scrypath_sa_bulk_failed_items_total") == 1
    assert sample(registry, "scrypath_sa_refreshes_total", outcome="ok") >= 1

    # The lag: events held back (a session in manual mode that sends nothing yet).
    collector = metrics.OutboxCollector(config, cache_seconds=60)
    registry.register(collector)
    with world.Session() as session:
        scrypath_sa.set_session_mode(session, "manual")
        session.add(world.Article(id=4, title="accepted, not confirmed"))
        session.commit()
    alias = f"{world.prefix}_articles"
    first = generate_latest(registry).decode()
    second = generate_latest(registry).decode()
    assert collector.queries == 1  # two scrapes, one query
    assert sample(registry, "scrypath_sa_unfinished_events", index=alias,
                  state="backend_accepted") == 1
    assert sample(registry, "scrypath_sa_oldest_unfinished_seconds", index=alias) >= 0
    assert SECRET not in first + second


def _spans() -> dict[str, Any]:
    return {s.name: s for s in EXPORTER.get_finished_spans()}


@pytest.mark.parametrize("mode", ["inline", "manual"])
def test_the_span_tree_of_one_commit(world: World, secret_url: str, mode: str) -> None:
    scrypath_sa.configure(world.Session, backend=OpenSearchBackend(secret_url), mode=mode)
    EXPORTER.clear()
    with trace.get_tracer("app").start_as_current_span("POST /articles") as request:
        commit(world, (1, "traced", 1))
    spans = _spans()
    wanted = {"scrypath_sa.capture", "scrypath_sa.dispatch", "scrypath_sa.process",
              "scrypath_sa.bulk"} | ({"scrypath_sa.refresh"} if mode == "inline" else set())
    assert wanted <= set(spans), sorted(spans)
    if mode == "manual":
        assert "scrypath_sa.refresh" not in spans  # accepted, not made visible
    trace_id = request.get_span_context().trace_id
    assert {spans[n].context.trace_id for n in wanted} == {trace_id}
    assert spans["scrypath_sa.process"].parent.span_id == (
        spans["scrypath_sa.dispatch"].context.span_id)
    assert spans["scrypath_sa.bulk"].parent.span_id == (
        spans["scrypath_sa.process"].context.span_id)
    process = spans["scrypath_sa.process"].attributes
    assert process["scrypath_sa.mode"] == mode and process["scrypath_sa.documents"] == 1
    expected = "completed" if mode == "inline" else "backend_accepted"
    assert process[f"scrypath_sa.state.{expected}"] == 1
    assert spans["scrypath_sa.bulk"].attributes["scrypath_sa.documents"] == 1
    alias = f"{world.prefix}_articles"
    assert spans["scrypath_sa.bulk"].attributes["scrypath_sa.index"].startswith(alias)
    every = repr([(s.name, dict(s.attributes or {})) for s in spans.values()])
    assert SECRET not in every and "admin" not in every


def test_the_workers_spans_join_the_trace_of_the_commit(world: World, secret_url: str,
                                                        index_prefix: str) -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    mode = DramatiqMode(broker, queue_name=f"q{index_prefix}")
    scrypath_sa.configure(world.Session, backend=OpenSearchBackend(secret_url),
                          mode="dramatiq", modes={"dramatiq": mode})
    EXPORTER.clear()
    with trace.get_tracer("app").start_as_current_span("POST /articles") as request:
        commit(world, (1, "sent", 1))
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        broker.join(f"q{index_prefix}", fail_fast=True)
        worker.join()
    finally:
        worker.stop()
    spans = _spans()
    assert {"scrypath_sa.dispatch", "scrypath_sa.work", "scrypath_sa.process",
            "scrypath_sa.bulk"} <= set(spans), sorted(spans)
    trace_id = request.get_span_context().trace_id
    work = spans["scrypath_sa.work"]
    assert work.context.trace_id == trace_id  # the message carried the context
    assert work.parent.span_id == spans["scrypath_sa.dispatch"].context.span_id
    assert spans["scrypath_sa.process"].parent.span_id == work.context.span_id


def test_logs_carry_stable_names_and_fields_and_nothing_at_info_per_request(
        world: World, secret_url: str, caplog: pytest.LogCaptureFixture) -> None:
    scrypath_sa.configure(world.Session, backend=OpenSearchBackend(secret_url))
    with caplog.at_level(logging.DEBUG, logger="scrypath_sa"):
        for i in range(1, 11):
            commit(world, (i, f"row {i}", i))
        commit(world, (11, "poison", "not a number"))
    ours = [r for r in caplog.records if r.name == "scrypath_sa"]
    assert not [r for r in ours if r.levelno == logging.INFO]
    runs = [r for r in ours if getattr(r, "scrypath_event", None) == "scrypath_sa.run"]
    assert len(runs) == 11
    failed = runs[-1]
    assert failed.levelno == logging.WARNING
    assert failed.scrypath["mode"] == "inline"  # type: ignore[attr-defined]
    assert failed.scrypath["states"] == {"discarded": 1}  # type: ignore[attr-defined]
    assert failed.scrypath["error_kinds"] == [  # type: ignore[attr-defined]
        "mapper_parsing_exception"]
    assert failed.scrypath["seconds"] > 0  # type: ignore[attr-defined]
    assert failed.scrypath["indices"] == [f"{world.prefix}_articles"]  # type: ignore[attr-defined]
    text = "\n".join(f"{r.getMessage()} {getattr(r, 'scrypath', '')}" for r in caplog.records)
    assert SECRET not in text


def test_structlog_reads_the_same_fields(world: World, secret_url: str) -> None:
    import structlog

    seen: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: dict[str, Any]) -> str:
        seen.append(event)
        return repr(event)

    handler = logging.Handler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder()], processors=[keep]))
    handler.emit = lambda record: handler.format(record) and None  # type: ignore[method-assign]
    logger = logging.getLogger("scrypath_sa")
    logger.addHandler(handler)
    try:
        scrypath_sa.configure(world.Session, backend=OpenSearchBackend(secret_url))
        commit(world, (1, "poison", "not a number"))
    finally:
        logger.removeHandler(handler)
    (run,) = [e for e in seen if e.get("scrypath_event") == "scrypath_sa.run"]
    assert run["scrypath"]["error_kinds"] == ["mapper_parsing_exception"]
    assert SECRET not in repr(seen)


def test_the_worker_middleware_counts_in_each_worker_process() -> None:
    registry = CollectorRegistry()
    broker = StubBroker()
    broker.add_middleware(metrics.worker_middleware(registry))
    broker.emit_after("process_boot")  # what Dramatiq does in each worker process
    try:
        from scrypath_sa import telemetry

        telemetry.transitions("retrying", 2, "connection_error")
        assert sample(registry, "scrypath_sa_retries_total", error_kind="connection_error") == 2
    finally:
        metrics.uninstall(registry)


def test_worker_processes_count_into_prometheus_multiprocess_files(
        world: World, redis_url: str, opensearch_url: str, index_prefix: str,
        tmp_path: Path) -> None:
    """Real `dramatiq` worker processes with the middleware and PROMETHEUS_MULTIPROC_DIR:
    what they counted is read back by a MultiProcessCollector, as an exporter would."""
    from dramatiq.brokers.redis import RedisBroker
    from prometheus_client.multiprocess import MultiProcessCollector

    from tests.faults import Workers, all_terminal, states, wait_for

    queue = f"q{index_prefix}"
    broker = RedisBroker(url=redis_url)
    scrypath_sa.configure(world.Session, backend=OpenSearchBackend(opensearch_url),
                          mode="dramatiq", modes={"dramatiq": DramatiqMode(
                              broker, queue_name=queue)})
    counted = tmp_path / "prometheus"
    counted.mkdir()
    workers = Workers(tmp_path, {
        "SCRYPATH_TEST_PREFIX": index_prefix, "SCRYPATH_TEST_BROKER_URL": redis_url,
        "SCRYPATH_TEST_OPENSEARCH_URL": opensearch_url, "SCRYPATH_TEST_QUEUE": queue,
        "SCRYPATH_TEST_DATABASE_URL": world.engine.url.render_as_string(hide_password=False),
        "PROMETHEUS_MULTIPROC_DIR": str(counted)})
    try:
        for i in range(1, 6):
            commit(world, (i, f"counted {i}", i))
        workers.start(2, "--processes", "2")
        wait_for(all_terminal(world.engine), "the workers to finish")
    finally:
        workers.stop_all()
        broker.client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.DQ",
                             f"dramatiq:{queue}.XQ")
    assert states(world.engine) == {"completed": 5}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(counted))
    assert sample(registry, "scrypath_sa_event_transitions_total", state="completed") == 5
    assert sample(registry, "scrypath_sa_bulk_documents_sum") == 5
