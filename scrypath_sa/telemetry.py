"""One seam for what the library reports about its own work: observers (metrics),
spans (OpenTelemetry, when its API is installed) and structured log fields.

The sync path calls three functions: :func:`transitions` (events moved to a state),
:func:`bulk` (one request to the search engine) and :func:`refresh`; and opens spans
with :func:`span`. Each costs one check of an empty list, or of a tracer that does
nothing, when nobody listens. Values that reach an observer, a span or a log field are
counts, durations, index names, states and error kinds: never documents, URLs or
errors' texts (those go through :func:`~scrypath_sa.redaction.redact` into
``last_error`` only).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

log = logging.getLogger("scrypath_sa")


class Observer(Protocol):
    """Receives the library's measurements (see :mod:`scrypath_sa.metrics`)."""

    def transition(self, state: str, count: int, error_kind: str | None) -> None: ...

    def bulk(self, documents: int, size: int, seconds: float, failed: int) -> None: ...

    def refresh(self, index: str, seconds: float, ok: bool) -> None: ...


_observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    with contextlib.suppress(ValueError):
        _observers.remove(observer)


def transitions(state: str, count: int, error_kind: str | None = None) -> None:
    """``count`` events were recorded in ``state`` (with ``error_kind``, if any)."""
    for observer in _observers:
        observer.transition(state, count, error_kind)


def bulk(documents: int, size: int, seconds: float, failed: int) -> None:
    """One ``_bulk`` request: its documents, body size in bytes, duration, and how many
    of its items failed."""
    for observer in _observers:
        observer.bulk(documents, size, seconds, failed)


def refresh(index: str, seconds: float, ok: bool) -> None:
    for observer in _observers:
        observer.refresh(index, seconds, ok)


# ------------------------------------------------------------------------- traces

@functools.cache
def _trace_api() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


@functools.cache
def _tracer_of(provider: Any) -> Any:
    return provider.get_tracer("scrypath_sa")


def _tracer() -> Any:
    """The library's tracer, or None while no tracer provider is configured (the API's
    default provider makes spans that record nothing: skipping them keeps the commit
    path as cheap as without OpenTelemetry)."""
    api = _trace_api()
    if api is None:
        return None
    provider = api.get_tracer_provider()
    if isinstance(provider, (api.ProxyTracerProvider, api.NoOpTracerProvider)):
        return None
    return _tracer_of(provider)


class _Span:
    """What a ``with span(...)`` block can add to its span (no-op without a tracer)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.recording = inner is not None and bool(inner.is_recording())

    def set(self, **attributes: Any) -> None:
        if self._inner is not None:
            for key, value in attributes.items():
                if value is not None:
                    self._inner.set_attribute(f"scrypath_sa.{key}", value)


class _NoSpan:
    """The context manager :func:`span` returns while nobody traces."""

    handle = _Span(None)

    def __enter__(self) -> _Span:
        return self.handle

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(name: str, context: Any = None,
         **attributes: Any) -> contextlib.AbstractContextManager[_Span]:
    """An OpenTelemetry span ``name`` (a child of the current one, or of ``context``
    from :func:`extract`), with ``attributes`` prefixed ``scrypath_sa.``."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    return _traced(tracer, name, context, attributes)


@contextlib.contextmanager
def _traced(tracer: Any, name: str, context: Any,
            attributes: dict[str, Any]) -> Iterator[_Span]:
    with tracer.start_as_current_span(name, context=context) as current:
        handle = _Span(current)
        handle.set(**attributes)
        yield handle


def inject() -> dict[str, str] | None:
    """The current trace context as a carrier for a message (None without a tracer or
    a current span)."""
    if _tracer() is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def extract(carrier: Mapping[str, str] | None) -> Any:
    """The trace context a message carried (for :func:`span`'s ``context``)."""
    if carrier is None or _tracer() is None:
        return None
    from opentelemetry import propagate

    return propagate.extract(dict(carrier))


# ---------------------------------------------------------------------------- logs

def fields(event: str, **values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: a stable event name and structured fields, which
    ``logging`` keeps on the record (``record.scrypath_event``, ``record.scrypath``) and
    structlog's ``ExtraAdder`` adds to the event dict."""
    return {"scrypath_event": event,
            "scrypath": {k: v for k, v in values.items() if v is not None}}
