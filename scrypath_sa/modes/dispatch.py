"""Handing committed or reopened events to a mode: the one path from an id list to a
mode's ``dispatch``, for commits and for every operator command that pushes work."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from scrypath_sa import outbox, telemetry
from scrypath_sa.outcome import Outcome
from scrypath_sa.redaction import redact
from scrypath_sa.threads import Together, async_pool

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config

log = logging.getLogger("scrypath_sa")


def dispatch(config: Config, mode_name: str, ids: Sequence[int],
             engine: Engine | None = None) -> Outcome:
    """Hand ``ids`` to mode ``mode_name``. Never raises: a failure is logged and
    reported in the outcome, and the events stay in ``sync_events`` for ``sweep()``."""
    return dispatch_group(config, mode_name, [ids], engine)[0]


def dispatch_group(config: Config, mode_name: str, groups: Sequence[Sequence[int]],
                   engine: Engine | None = None) -> list[Outcome]:
    """:func:`dispatch` for several callers' ``groups`` of ids at once (concurrent
    commits), one outcome per group; a mode that merges them makes one run of all."""
    events = sum(len(ids) for ids in groups)
    with telemetry.span("scrypath_sa.dispatch", mode=mode_name, events=events) as span:
        try:
            outcomes = config.mode(mode_name).dispatch_group(config, groups, engine=engine)
        except Exception as exc:  # noqa: BLE001 - the commit happened: report, never raise
            message = redact(f"{type(exc).__name__}: {exc}")
            log.error("scrypath_sa: dispatch of %d committed events in mode %s failed; they "
                      "stay in sync_events for sweep(): %s", events, mode_name, message,
                      extra=telemetry.fields("scrypath_sa.dispatch_failed", mode=mode_name,
                                             events=events, error_kind=type(exc).__name__))
            outcomes = [Outcome(mode=mode_name, event_ids=list(ids), error=message)
                        for ids in groups]
        if len(outcomes) == 1:
            span.set(state=outcomes[0].state, failed=len(outcomes[0].failures))
        else:
            span.set(groups=len(outcomes), failed=sum(len(o.failures) for o in outcomes))
        return outcomes


RUNS_AT_ONCE = 2
"""Shared runs of one configuration and mode in flight at once per process (see
:func:`dispatch_together`); commits arriving meanwhile wait and go in the next."""

_together: Together[Sequence[int], Outcome] = Together(slots=RUNS_AT_ONCE)


def dispatch_together(config: Config, mode_name: str, ids: Sequence[int]) -> Outcome:
    """:func:`dispatch` on the configuration's engine, sharing one run with the other
    commits of this process that wait at once (group commit): while runs are in flight,
    arriving commits wait, and the next run carries them all. A merging mode
    (``inline``, ``manual``) makes one claim, one bulk request and one refresh of them;
    each commit gets its own events' outcome. A lone commit runs at once."""
    return _together.run((id(config), mode_name), ids, _shared_run(config, mode_name))


def put_together(config: Config, mode_name: str, ids: Sequence[int],
                 settled: Callable[[Outcome | None, BaseException | None], None]) -> None:
    """:func:`dispatch_together` for a caller on an event loop, which must not wait:
    a ``scrypath-async`` thread makes the shared run and hands ``settled`` the outcome."""
    _together.put((id(config), mode_name, "async"), ids, _shared_run(config, mode_name),
                  settled, async_pool())


def _shared_run(config: Config,
                mode_name: str) -> Callable[[list[Sequence[int]]], list[Outcome]]:
    """What a shared run calls: :func:`dispatch_group` on the configuration's engine."""
    return functools.partial(dispatch_group, config, mode_name, engine=config.bind)


def redispatch(config: Config, events: Iterable[tuple[int, str | None]],
               mode: str | None = None) -> list[Outcome]:
    """Dispatch events again, as (id, recorded mode) pairs: each through ``mode`` when
    given, else its recorded mode when this configuration has it, else the default."""
    by_mode: dict[str, list[int]] = {}
    for event_id, recorded in events:
        chosen = mode or (recorded if recorded in config.modes else config.default_mode)
        by_mode.setdefault(chosen, []).append(event_id)
    return [dispatch(config, name, ids, config.bind) for name, ids in by_mode.items()]


def push_due(config: Config, *, older_than: dt.timedelta | None,
             enqueued_older_than: dt.timedelta | None, stale_after: dt.timedelta | None,
             limit: int) -> list[Outcome]:
    """Dispatch again what fell behind (see :func:`scrypath_sa.sweep`), each event once.

    Claims older than ``stale_after`` expire, and so do claims whose worker process is
    gone from this host, at any age. When a claim expired, a worker died holding
    messages nobody can see (its prefetch, which the broker hands back only much
    later): then every ``enqueued`` event is sent again. A duplicate is harmless: the
    claim lets one worker write each event, and it reads the row when it does.
    ``None`` leaves that kind of event alone (dead workers' claims always expire)."""
    with config.bind.begin() as conn:
        expired = outbox.expire_claims(conn, stale_after) if stale_after is not None else []
        expired += outbox.expire_dead_claims(conn)
    if expired:
        enqueued_older_than = dt.timedelta(0)
    with config.bind.begin() as conn:
        due = dict(expired)
        due.update(outbox.due(conn, older_than, enqueued_older_than, limit))
        outbox.rerequest(conn, list(due))
    return redispatch(config, due.items())
