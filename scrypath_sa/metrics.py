"""Prometheus metrics (the ``metrics`` extra: ``prometheus-client``).

In a web process::

    from prometheus_client import REGISTRY
    scrypath_sa.metrics.install()                       # counters, histograms
    REGISTRY.register(scrypath_sa.metrics.OutboxCollector(config))  # lag, from sync_events

In Dramatiq workers, add :class:`WorkerMetrics` to the broker (it installs the same
counters in every worker process). With several processes, set
``PROMETHEUS_MULTIPROC_DIR`` as prometheus-client's multiprocess mode asks (Dramatiq's
own ``dramatiq.middleware.Prometheus`` exporter serves them, or yours with a
``MultiProcessCollector``).

Labels are states, error kinds, outcomes and index names: no document, URL or error
text ever becomes a label.

=========================================  ===========================================
metric                                     what
=========================================  ===========================================
``scrypath_sa_event_transitions_total``    events recorded in a state (``state``)
``scrypath_sa_retries_total``              events set to retry (``error_kind``)
``scrypath_sa_discards_total``             events discarded (``error_kind``)
``scrypath_sa_bulk_seconds``               ``_bulk`` request duration (histogram)
``scrypath_sa_bulk_documents``             documents per ``_bulk`` request (histogram)
``scrypath_sa_bulk_bytes``                 body bytes per ``_bulk`` request (histogram)
``scrypath_sa_bulk_failed_items_total``    items a ``_bulk`` did not apply
``scrypath_sa_refreshes_total``            refreshes (``outcome``: ok / failed)
``scrypath_sa_refresh_seconds``            refresh duration (histogram)
``scrypath_sa_unfinished_events``          unfinished events (``index``, ``state``)
``scrypath_sa_oldest_unfinished_seconds``  age of the oldest unfinished event (``index``)
=========================================  ===========================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from scrypath_sa import telemetry
from scrypath_sa.errors import MissingExtraError
from scrypath_sa.schema import UNFINISHED, State, sync_events, utcnow

if TYPE_CHECKING:
    from scrypath_sa.config import Config

try:
    import prometheus_client as prom
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised without the extra
    prom = None  # type: ignore[assignment]
    Collector = object  # type: ignore[assignment,misc]


def _require() -> None:
    if prom is None:
        raise MissingExtraError("metrics", "prometheus-client")


class Metrics:
    """The library's counters and histograms on ``registry`` (an observer of
    :mod:`scrypath_sa.telemetry`)."""

    def __init__(self, registry: Any = None) -> None:
        _require()
        registry = prom.REGISTRY if registry is None else registry
        self.transitions = prom.Counter(
            "scrypath_sa_event_transitions", "Events recorded in a lifecycle state",
            ["state"], registry=registry)
        self.retries = prom.Counter(
            "scrypath_sa_retries", "Events set to retry, by error kind", ["error_kind"],
            registry=registry)
        self.discards = prom.Counter(
            "scrypath_sa_discards", "Events discarded, by error kind", ["error_kind"],
            registry=registry)
        self.bulk_seconds = prom.Histogram(
            "scrypath_sa_bulk_seconds", "Duration of _bulk requests", registry=registry)
        self.bulk_documents = prom.Histogram(
            "scrypath_sa_bulk_documents", "Documents per _bulk request", registry=registry,
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000))
        self.bulk_bytes = prom.Histogram(
            "scrypath_sa_bulk_bytes", "Body bytes per _bulk request", registry=registry,
            buckets=(1e3, 1e4, 1e5, 5e5, 1e6, 5e6, 1e7, 5e7))
        self.bulk_failed = prom.Counter(
            "scrypath_sa_bulk_failed_items", "Items of _bulk requests not applied",
            registry=registry)
        self.refreshes = prom.Counter(
            "scrypath_sa_refreshes", "Index refreshes", ["outcome"], registry=registry)
        self.refresh_seconds = prom.Histogram(
            "scrypath_sa_refresh_seconds", "Duration of index refreshes", registry=registry)

    def transition(self, state: str, count: int, error_kind: str | None) -> None:
        self.transitions.labels(state).inc(count)
        if state == State.RETRYING.value:
            self.retries.labels(error_kind or "unknown").inc(count)
        elif state == State.DISCARDED.value:
            self.discards.labels(error_kind or "unknown").inc(count)

    def bulk(self, documents: int, size: int, seconds: float, failed: int) -> None:
        self.bulk_seconds.observe(seconds)
        self.bulk_documents.observe(documents)
        self.bulk_bytes.observe(size)
        if failed:
            self.bulk_failed.inc(failed)

    def refresh(self, index: str, seconds: float, ok: bool) -> None:
        self.refreshes.labels("ok" if ok else "failed").inc()
        self.refresh_seconds.observe(seconds)


_installed: dict[int, Metrics] = {}
_lock = threading.Lock()


def install(registry: Any = None) -> Metrics:
    """Count the library's work on ``registry`` (default: prometheus-client's global
    one) in this process; once per registry."""
    _require()
    registry = prom.REGISTRY if registry is None else registry
    with _lock:
        metrics = _installed.get(id(registry))
        if metrics is None:
            metrics = _installed[id(registry)] = Metrics(registry)
            telemetry.add_observer(metrics)
        return metrics


def uninstall(registry: Any = None) -> None:
    registry = prom.REGISTRY if registry is None and prom is not None else registry
    with _lock:
        metrics = _installed.pop(id(registry), None)
    if metrics is not None:
        telemetry.remove_observer(metrics)


class OutboxCollector(Collector):
    """Unfinished events per index and state, and the age of the oldest per index,
    read from ``sync_events`` with one grouped query at most every ``cache_seconds``
    (scrapes in between get the cached answer). Register it in the web process (or one
    exporter), not in every worker: every scrape would ask the database."""

    def __init__(self, config: Config, cache_seconds: float = 15.0) -> None:
        _require()
        self.config = config
        self.cache_seconds = cache_seconds
        self.queries = 0
        self._cached: tuple[float, list[Any]] | None = None
        self._lock = threading.Lock()

    def _rows(self) -> list[Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                t = sync_events
                query = (select(t.c.index_name, t.c.state, func.count(),
                                func.min(t.c.requested_at))
                         .where(t.c.completed_at.is_(None),
                                t.c.state.in_([s.value for s in UNFINISHED]))
                         .group_by(t.c.index_name, t.c.state))
                with self.config.bind.connect() as conn:
                    found = list(conn.execute(query).all())
                self.queries += 1
                self._cached = (now, found)
            return self._cached[1]

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected lazily: registering must not query the database

    def collect(self) -> Iterator[Any]:
        unfinished = GaugeMetricFamily("scrypath_sa_unfinished_events",
                                       "Events not yet completed or discarded",
                                       labels=["index", "state"])
        oldest = GaugeMetricFamily("scrypath_sa_oldest_unfinished_seconds",
                                   "Age of the oldest unfinished event (the lag)",
                                   labels=["index"])
        now = utcnow()
        first: dict[str, Any] = {}
        for index, state, count, requested_at in self._rows():
            unfinished.add_metric([index, state], count)
            if requested_at is not None:
                if requested_at.tzinfo is None:
                    requested_at = requested_at.replace(tzinfo=now.tzinfo)
                if index not in first or requested_at < first[index]:
                    first[index] = requested_at
        for index, at in first.items():
            oldest.add_metric([index], max(0.0, (now - at).total_seconds()))
        yield unfinished
        yield oldest


def worker_middleware(registry: Any = None) -> Any:
    """A Dramatiq middleware that installs the metrics in each worker process when it
    boots: ``broker.add_middleware(scrypath_sa.metrics.worker_middleware())``."""
    _require()
    import dramatiq

    class WorkerMetrics(dramatiq.Middleware):
        def after_process_boot(self, broker: Any) -> None:
            install(registry)

    return WorkerMetrics()
