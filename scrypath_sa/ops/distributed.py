"""Backfill and reindex spread over workers: the primary-key space split into ranges,
each range a task a worker runs (a Dramatiq message), each checkpointed page by page.

A run is recorded in ``sync_checkpoints``: the run ``distributed:<index>`` (its ranges'
bounds, the version every range writes at, what to do when all are done) and one row
per range ``distributed:<index>#<i>`` (``queued``, ``running`` by a worker, ``failed``,
``finished``). A worker claims a range before it works on it, so a duplicate message
does nothing; a range whose worker died is claimed again from its last acknowledged
page (``sweep`` sends it again, or the broker redelivers it). The worker that finishes
the last range finishes the run: for a reindex, it turns refresh back on, replays the
changes committed meanwhile, verifies the counts and moves the alias.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select, update

from scrypath_sa import outbox
from scrypath_sa.backends.base import admin_of
from scrypath_sa.config import Config
from scrypath_sa.documents import json_safe, typed_key
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.install import resolve_config
from scrypath_sa.modes.base import Mode, task
from scrypath_sa.ops.common import jsonable
from scrypath_sa.ops.rebuild import (
    BackfillReport,
    Mark,
    ReindexReport,
    _cutover,
    _mark,
    _model,
    _record_failure,
    _replay,
    _save_checkpoint,
    _verify,
    fill,
)
from scrypath_sa.registry import ModelInfo
from scrypath_sa.schema import backfill_version, sync_checkpoints, utcnow

log = logging.getLogger("scrypath_sa")

RANGE_TASK = "rebuild_range"
FINISH_TASK = "rebuild_finish"
ROWS_PER_RANGE = 100_000
"""The default split: about this many rows per range (at least 1, at most 64 ranges)."""


def run_name(target: str) -> str:
    return f"distributed:{target}"


def _range_name(target: str, part: int) -> str:
    return f"{run_name(target)}#{part}"


@dataclass
class RunProgress:
    """Where a distributed rebuild of ``index`` stands: ranges done of all, rows written
    of the rows counted at its start, the rate so far and the time left at that rate;
    ``state`` is ``running``, ``finishing`` (the last range is done; the replay, the
    check and the cutover run), ``finished`` or ``failed`` (``error`` says why), and
    ``problems`` what the finish found (a reindex whose counts differ is not cut over).
    """

    index: str
    model: str
    state: str
    ranges: int
    ranges_done: int
    rows: int
    rows_done: int
    started_at: dt.datetime
    updated_at: dt.datetime
    rows_per_second: float | None = None
    eta_seconds: float | None = None
    reindex_of: str | None = None
    cut_over: bool = False
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    stalled_ranges: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed")

    @property
    def ok(self) -> bool:
        return self.state == "finished" and not self.problems

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        data["ok"] = self.ok
        return data


# ---------------------------------------------------------------- starting a run

def start_backfill(model: type | str, *, ranges: int | None = None, into: str | None = None,
                   batch_size: int = 1000, mode: str = "dramatiq",
                   config: Config | None = None) -> RunProgress:
    """Backfill ``model`` on the workers of ``mode``: the rows split into ``ranges``
    (default: about 100,000 rows each), one task per range. Returns at once; follow it
    with :func:`rebuild_progress` (``scrypath-sa backfill --distributed --wait``)."""
    config = resolve_config(config)
    info = _model(model)
    _check(config, info, ranges, mode)
    target = into or info.index
    if into is None:
        admin_of(config.backend).ensure_index(info.index, info.contract, info.name, fresh=True)
    return _start(config, info, target, ranges, batch_size, mode, reindex=None)


def start_reindex(model: type | str, *, ranges: int | None = None, cutover: bool = True,
                  batch_size: int = 1000, mode: str = "dramatiq",
                  config: Config | None = None) -> RunProgress:
    """Rebuild ``model``'s index behind its alias on the workers of ``mode``, as
    :func:`~scrypath_sa.reindex` does in one process: a new physical index (refresh off
    while loading), the ranges, then, once every range is done, the catch-up replay,
    the count check and (``cutover``, when the check passes) the alias move."""
    config = resolve_config(config)
    info = _model(model)
    _check(config, info, ranges, mode)
    backend = admin_of(config.backend)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S%f")
    new_index = f"{info.index}_{stamp}"
    since = _mark(config.bind)
    backend.create_index(new_index, info.contract, info.name, alias_for=info.index)
    backend.set_refresh_interval(new_index, "-1")
    return _start(config, info, new_index, ranges, batch_size, mode, reindex={
        "alias": info.index, "cutover": cutover, "since_event": since.event_id,
        "since_at": since.at.isoformat()})


def _check(config: Config, info: ModelInfo, ranges: int | None, mode: str) -> None:
    """Everything that can be wrong with a request, before anything is recorded."""
    runner = config.mode(mode)  # an unknown mode names the configured ones
    if getattr(type(runner), "send_task", Mode.send_task) is Mode.send_task:
        raise ConfigurationError(
            f"the {mode} mode runs nothing on workers: distributed rebuilds need a mode "
            "that does (a DramatiqMode, as modes={'dramatiq': DramatiqMode(broker)})")
    if ranges is not None and ranges < 1:
        raise ConfigurationError(f"ranges must be 1 or more, got {ranges}")
    pk = list(info.mapper.primary_key)
    if len(pk) != 1:
        raise ConfigurationError(
            f"{info.name} has a primary key of {len(pk)} columns: distributed rebuilds "
            "split one column's key space; run backfill() in one process instead")
    running = latest_rebuild(config, info)
    if running is not None and not running.done:
        raise ConfigurationError(
            f"a distributed rebuild of {info.name} into {running.index} is {running.state} "
            f"({running.ranges_done} of {running.ranges} ranges done): wait for it (status "
            "shows it); if its workers are gone, sweep sends its ranges again")


def _start(config: Config, info: ModelInfo, target: str, ranges: int | None,
           batch_size: int, mode: str, reindex: dict[str, Any] | None) -> RunProgress:
    sender = config.mode(mode)
    engine = config.bind
    name = run_name(target)
    with engine.connect() as conn:
        running = outbox.checkpoint(conn, name)
        rows = int(conn.execute(select(func.count()).select_from(info.cls)).scalar_one())
        version = backfill_version(outbox.high_water_mark(conn))
    if running is not None and running.finished_at is None and running.state != "failed":
        raise ConfigurationError(
            f"a distributed rebuild of {target} is already running (started "
            f"{running.started_at}): follow it with rebuild_progress(), or wait for it")
    parts = ranges or max(1, min(64, math.ceil(rows / ROWS_PER_RANGE)))
    bounds = _split(engine, info, rows, parts)
    plan = {"model": info.name, "bounds": bounds, "rows": rows, "batch_size": batch_size,
            "mode": mode, "reindex": reindex}
    names = [_range_name(target, i) for i in range(len(bounds) + 1)]
    with engine.begin() as conn:  # a finished or failed run before this one goes
        old = [p.name for p in outbox.checkpoints_like(conn, f"{name}#")]
        t = sync_checkpoints
        conn.execute(t.delete().where(t.c.name.in_([name, *names, *old])))
        outbox.save_checkpoint(conn, name, target, plan, version, 0)
        outbox.queue_checkpoints(conn, names, target, version)
    for part in range(len(names)):
        sender.send_task(RANGE_TASK, {"index": target, "part": part})
    progress = rebuild_progress(target, config=config)
    assert progress is not None
    return progress


def _split(engine: Engine, info: ModelInfo, rows: int, parts: int) -> list[Any]:
    """Upper bounds (inclusive) of the first ``parts - 1`` ranges: every
    ``ceil(rows / parts)``-th key; the last range takes the rest."""
    (key,) = info.mapper.primary_key
    step = max(1, math.ceil(rows / parts))
    numbered = select(key.label("k"), func.row_number().over(order_by=key).label("n")).subquery()
    query = select(numbered.c.k).where(numbered.c.n % step == 0).order_by(numbered.c.k)
    with engine.connect() as conn:
        found = [json_safe(v) for v in conn.execute(query).scalars()]
    return found[:parts - 1]


# ------------------------------------------------------------ on the workers

@task(RANGE_TASK)
def run_range(config: Config, args: dict[str, Any]) -> None:
    """Claim range ``part`` of the run on ``index`` and write it (from its checkpoint);
    the worker that completes the last range finishes the run."""
    target, part = str(args["index"]), int(args["part"])
    engine = config.bind
    name = _range_name(target, part)
    with engine.connect() as conn:
        run = outbox.checkpoint(conn, run_name(target))
        mine = outbox.checkpoint(conn, name)
    if run is None or mine is None or run.finished_at is not None or run.state == "failed":
        return  # a run started again, or over: nothing of this message is left to do
    if mine.finished_at is None:
        if mine.owner is not None and not _claimable(mine):
            return  # another live worker has it (a duplicate delivery)
        with engine.begin() as conn:
            if not outbox.claim_checkpoint(conn, name, mine.owner):
                return
        plan = run.position
        info = _model(plan["model"])
        bounds = plan["bounds"]
        (key,) = info.mapper.primary_key
        where = None
        if part > 0:
            where = key > _typed(info, bounds[part - 1])
        if part < len(bounds):
            upper = key <= _typed(info, bounds[part])
            where = upper if where is None else where & upper
        fill(config, info, target, name, where=where, batch_size=int(plan["batch_size"]),
             progress=None, resume=True, version=int(run.version))
    finish_run(config, {"index": target})


def _typed(info: ModelInfo, bound: Any) -> Any:
    """A range bound as stored (JSON-safe) -> a value of the key column's type."""
    typed = typed_key(info, [bound])
    return typed[0] if typed is not None else bound


def _claimable(saved: Any) -> bool:
    """A range whose owner died on this host, or has not been heard from for a while
    (it saves its position after every page)."""
    return bool(outbox.process_gone(saved.owner) or saved.state == "failed"
                or saved.updated_at <= utcnow() - STALE_AFTER)


STALE_AFTER = dt.timedelta(minutes=5)
"""A range not heard from for this long is taken over (its worker hangs or is gone)."""


@task(FINISH_TASK)
def finish_run(config: Config, args: dict[str, Any]) -> None:
    """When every range of the run on ``index`` is finished: take the run (one worker
    does) and finish it; a reindex replays, verifies and cuts over."""
    target = str(args["index"])
    engine = config.bind
    name = run_name(target)
    with engine.connect() as conn:
        parts = outbox.checkpoints_like(conn, f"{name}#")
        run = outbox.checkpoint(conn, name)
    if run is None or run.finished_at is not None or any(
            p.finished_at is None for p in parts):
        return
    if run.state == "finishing" and not _claimable(run):
        return
    t = sync_checkpoints
    with engine.begin() as conn:
        took = conn.execute(update(t).where(
            (t.c.name == name) & t.c.finished_at.is_(None)
            & ((t.c.state == "running") | (t.c.owner == run.owner))).values(
            state="finishing", owner=outbox.this_process(), updated_at=utcnow()))
    if took.rowcount != 1:
        return
    plan = dict(run.position)
    done = sum(int(p.processed) for p in parts)
    try:
        plan["result"] = _finish(config, target, plan, int(run.version))
    except Exception as exc:
        _record_failure(engine, name, target, exc)
        raise
    _save_checkpoint(engine, name, target, plan, int(run.version), done, state="finished")
    # What a one-process backfill leaves: cutover() and status() read it.
    _save_checkpoint(engine, f"backfill:{target}", target, None, int(run.version), done,
                     state="finished")


def _finish(config: Config, target: str, plan: dict[str, Any],
            version: int) -> dict[str, Any]:
    backend = admin_of(config.backend)
    reindex = plan.get("reindex")
    if reindex is None:
        backend.refresh(target)
        return {"problems": [], "cut_over": False}
    info = _model(plan["model"])
    backend.set_refresh_interval(target, None)
    since = Mark(int(reindex["since_event"]), dt.datetime.fromisoformat(reindex["since_at"]))
    replayed, since_replay = _replay(config, info, target, since, version)
    report = ReindexReport(info.name, info.index, target, since.event_id,
                           BackfillReport(info.name, target, version), replayed)
    if reindex["cutover"]:
        _cutover(config, info, report, since_replay)
    else:
        _verify(config, config.bind, info, report, since_replay)
    return {"problems": report.problems, "cut_over": report.cut_over,
            "documents": report.documents, "expected_documents": report.expected_documents,
            "replayed": report.replayed}


# ------------------------------------------------------------ progress, recovery

def rebuild_progress(index: str, *, config: Config | None = None) -> RunProgress | None:
    """The distributed rebuild writing ``index`` (an alias or a physical index), or
    None when none was started."""
    config = resolve_config(config)
    with config.bind.connect() as conn:
        run = outbox.checkpoint(conn, run_name(index))
        parts = outbox.checkpoints_like(conn, f"{run_name(index)}#")
    if run is None:
        return None
    return _progress(run, parts)


def latest_rebuild(config: Config, info: ModelInfo) -> RunProgress | None:
    """The newest distributed rebuild of ``info``'s model (into its alias or an index
    built behind it), or None."""
    with config.bind.connect() as conn:
        rows = outbox.checkpoints_like(conn, run_name(info.index))
    runs = [r for r in rows if "#" not in r.name
            and (r.position or {}).get("model") == info.name]
    if not runs:
        return None
    run = max(runs, key=lambda r: r.started_at)
    return _progress(run, [p for p in rows if p.name.startswith(f"{run.name}#")])


def _progress(run: Any, parts: list[Any]) -> RunProgress:
    plan = run.position or {}
    result = plan.get("result") or {}
    done = [p for p in parts if p.finished_at is not None]
    rows_done = sum(int(p.processed) for p in parts)
    now = utcnow()
    started = run.started_at
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.timezone.utc)
    elapsed = (now - started).total_seconds()
    rate = rows_done / elapsed if elapsed > 0 and rows_done else None
    rows = int(plan.get("rows", 0))
    state = "finished" if run.finished_at is not None else str(run.state or "running")
    stalled = [int(p.name.rsplit("#", 1)[1]) for p in parts
               if p.finished_at is None and p.owner is not None and _claimable(p)]
    return RunProgress(
        index=run.index_name, model=str(plan.get("model", "")), state=state,
        ranges=len(parts), ranges_done=len(done), rows=rows, rows_done=rows_done,
        started_at=started, updated_at=max([run.updated_at, *[p.updated_at for p in parts]]),
        rows_per_second=rate,
        eta_seconds=(max(0, rows - rows_done) / rate if rate and state == "running" else None),
        reindex_of=(plan.get("reindex") or {}).get("alias"),
        cut_over=bool(result.get("cut_over")), problems=list(result.get("problems", [])),
        error=run.last_error if state == "failed" else None, stalled_ranges=stalled)


def resend_stalled(config: Config) -> int:
    """Send again the ranges of every unfinished run whose worker died on this host
    (or has not been heard from for :data:`STALE_AFTER`), and the finish of runs whose
    ranges are all done but whose finish did not happen. Returns how many were sent."""
    with config.bind.connect() as conn:
        rows = outbox.checkpoints_like(conn, "distributed:")
    sent = 0
    for run in (r for r in rows if "#" not in r.name and r.finished_at is None):
        plan = run.position or {}
        sender = config.modes.get(str(plan.get("mode")))
        if sender is None:
            continue
        parts = [p for p in rows if p.name.startswith(f"{run.name}#")]
        dead = [p for p in parts if p.finished_at is None and p.owner is not None
                and _claimable(p)]
        # A worker that died may have held queued ranges' messages too (its prefetch,
        # handed back by the broker much later): those are sent again as well; a
        # duplicate finds its range claimed or finished and does nothing.
        queued = [p for p in parts if p.owner is None] if dead else []
        for p in [*dead, *queued]:
            sender.send_task(RANGE_TASK, {"index": run.index_name,
                                          "part": int(p.name.rsplit("#", 1)[1])})
            sent += 1
        if all(p.finished_at is not None for p in parts) and (
                run.state == "running" or _claimable(run)):
            sender.send_task(FINISH_TASK, {"index": run.index_name})
            sent += 1
    return sent
