"""backfill(), reindex() and cutover(): write the database's current state into an index.

Every write carries an external version: a backfill writes just below the version of
the first event after it started (see :func:`scrypath_sa.outbox.backfill_version`), so
a change committed during the run always wins over the backfill's copy, whichever lands
first, and the backfill's copy wins over everything older.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from scrypath_sa import documents, outbox, registry
from scrypath_sa.backends.base import AdminBackend, BulkOp, ItemResult, ItemStatus, admin_of
from scrypath_sa.config import Config
from scrypath_sa.documents import build_document
from scrypath_sa.errors import BackendError, IndexContractError
from scrypath_sa.install import resolve_config
from scrypath_sa.modes.dispatch import redispatch
from scrypath_sa.ops.common import jsonable, resolve_models
from scrypath_sa.ops.scan import column_pages, orphan_pages, row_pages
from scrypath_sa.pipeline import ahead_of_database
from scrypath_sa.redaction import redact
from scrypath_sa.registry import ModelInfo
from scrypath_sa.schema import (
    VERSION_SCALE,
    backfill_version,
    utcnow,
    version_of,
)
from scrypath_sa.threads import pool

log = logging.getLogger("scrypath_sa")


@dataclass(frozen=True)
class Progress:
    """Handed to a backfill's ``progress`` callback after every page: rows ``done`` of
    ``total`` (never less than ``done``: rows inserted meanwhile raise it), of which
    ``resumed`` were done by an earlier run; rate and ETA come from this run's own rows
    and ``elapsed`` seconds."""

    done: int
    total: int
    elapsed: float
    resumed: int = 0

    @property
    def rate(self) -> float:
        return (self.done - self.resumed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass
class BackfillReport:
    model: str
    index: str
    version: int
    rows_seen: int = 0
    indexed: int = 0
    deleted: int = 0
    orphans_removed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: list[Any] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        data["ok"] = self.ok
        return data


def _model(model: type | str) -> ModelInfo:
    (info,) = resolve_models([model])
    return info


def _checkpoint(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return outbox.checkpoint(conn, name)


def _save_checkpoint(engine: Engine, name: str, index: str, position: Any,
                     version: int, processed: int, state: str = "running",
                     error: str | None = None) -> None:
    with engine.begin() as conn:
        outbox.save_checkpoint(conn, name, index, position, version, processed, state, error)


def backfill(model: type | str, *, where: Any = None, batch_size: int = 1000,
             into: str | None = None, progress: Callable[[Progress], None] | None = None,
             resume: bool = True, remove_orphans: bool = False,
             config: Config | None = None) -> BackfillReport:
    """Write every row of ``model`` (optionally only ``where``) into its index.

    Rows are read by keyset pagination over the primary key and written with ``_bulk``;
    rows whose ``should_index`` is False are deleted from the index. The position is
    checkpointed after every acknowledged page: a run that stops (a crash, an outage)
    resumes there when called again. ``into`` writes into a physical index instead of
    the alias. ``remove_orphans`` also deletes documents whose row is gone.
    A document the backend rejects is reported in ``failures``; the rest still land.
    """
    config = resolve_config(config)
    info = _model(model)
    target = into or info.index
    if into is None:
        admin_of(config.backend).ensure_index(info.index, info.contract, info.name, fresh=True)
    return fill(config, info, target, f"backfill:{target}", where=where,
                batch_size=batch_size, progress=progress, resume=resume,
                remove_orphans=remove_orphans)


def fill(config: Config, info: ModelInfo, target: str, name: str, *, where: Any,
         batch_size: int, progress: Callable[[Progress], None] | None, resume: bool,
         remove_orphans: bool = False, version: int | None = None) -> BackfillReport:
    """The backfill loop: the rows of ``info`` (``where``) into ``target``, checkpointed
    as ``name`` after every acknowledged page, at ``version`` (default: above every event
    so far; a resumed run keeps the version it started with)."""
    engine = config.bind
    backend = admin_of(config.backend)
    began = time.monotonic()
    saved = _checkpoint(engine, name) if resume else None
    after: list[Any] | None = None
    if saved is not None and saved.finished_at is None and saved.position is not None:
        after = list(documents.typed_key(info, list(saved.position)) or saved.position)
        version, done = int(saved.version), int(saved.processed)
        resumed = done
    else:
        if version is None:
            with engine.connect() as conn:
                version = backfill_version(outbox.high_water_mark(conn))
        done = resumed = 0
    report = BackfillReport(info.name, target, version, resumed_from=after)
    with engine.connect() as conn:
        count_query = select(func.count()).select_from(info.cls)
        total = conn.execute(count_query.where(where) if where is not None
                             else count_query).scalar_one()
    _save_checkpoint(engine, name, target, after, version, done)
    known_ids: set[str] | None = (set() if remove_orphans
                                  and not registry.uses_default_ids(info.cls) else None)
    def settle(pending: tuple[list[BulkOp], int, list[Any], Future[list[ItemResult]]]) -> None:
        nonlocal done
        ops, rows, position, future = pending
        results = _ride_out(backend, ops, future.result(), config)
        retryable = [r for r in results if r.status is ItemStatus.RETRYABLE]
        if retryable:
            raise BackendError(
                f"backfill of {info.name} stopped after {done} rows: {retryable[0].error}. "
                "Its position is saved: run it again to resume.")
        ceiling = version  # conflicts at or below it cannot be above the database
        if any(r.status is ItemStatus.CONFLICT and (r.stored_version or 0) > version
               for r in results):  # a newer event's write, or above the database
            with engine.connect() as conn:
                ceiling = outbox.highest_issued_version(conn)
        for op, result in zip(ops, results, strict=True):
            if result.status is ItemStatus.PERMANENT:
                report.failures.append({"document_id": op.id, "error": result.error})
            elif (result.status is ItemStatus.CONFLICT and result.stored_version is not None
                  and result.stored_version > ceiling):
                report.failures.append({"document_id": op.id, "error": ahead_of_database(
                    target, result.stored_version, ceiling)})
            elif op.is_delete:
                report.deleted += 1
            else:
                report.indexed += 1
        done += rows
        report.rows_seen += rows
        _save_checkpoint(engine, name, target, position, version, done)
        if progress is not None:
            progress(Progress(done, max(total, done), time.monotonic() - began, resumed))

    try:
        # Page N+1 is read and built while page N is in flight; a page's position is saved
        # only once the backend acknowledged it.
        with pool("scrypath-backfill", 1) as sender:
            in_flight = None
            for page in _document_pages(engine, info, where, after, batch_size):
                ops: list[BulkOp] = []
                for doc_id, action, payload in page:
                    if action == "error":
                        report.failures.append({"document_id": doc_id, "error": payload})
                        continue
                    if known_ids is not None and action == "upsert":
                        known_ids.add(doc_id)
                    ops.append(BulkOp(target, doc_id, version, payload))
                if in_flight is not None:
                    settle(in_flight)
                in_flight = (ops, len(page), page.position,
                             sender.submit(backend.bulk, ops, wait_for_visibility=False))
            if in_flight is not None:
                settle(in_flight)
        backend.refresh(target)
        if remove_orphans:
            for orphans in orphan_pages(engine, backend, info, target,
                                        page_size=batch_size, known_ids=known_ids):
                results = backend.bulk(
                    [BulkOp(target, doc_id, version, None) for doc_id, _ in orphans],
                    wait_for_visibility=False)
                report.orphans_removed += sum(r.status in (ItemStatus.OK, ItemStatus.CONFLICT)
                                              for r in results)
            backend.refresh(target)
    except BaseException as exc:  # a failure or an interrupt: say so, keep the position
        _record_failure(engine, name, target, exc)
        raise
    _save_checkpoint(engine, name, target, None, version, done, state="finished")
    report.seconds = time.monotonic() - began
    return report


def _record_failure(engine: Engine, name: str, target: str, exc: BaseException) -> None:
    """Mark the run ``failed`` with why, keeping its saved position (the last page the
    backend acknowledged) for the next run to resume from."""
    try:
        with engine.begin() as conn:
            outbox.fail_checkpoint(conn, name, redact(f"{type(exc).__name__}: {exc}"))
    except Exception as also:  # noqa: BLE001 - the database may be what failed
        log.warning("scrypath_sa: could not record that %s of %s stopped: %s", name,
                    target, redact(also))


BACKFILL_RETRIES = 6
"""How often a page's retryable writes are sent again (with the configured backoff,
each wait at most 30 s: about a minute in all) before a backfill stops: long enough
for a cluster to promote replicas and elect a manager after losing a node."""


def _ride_out(backend: AdminBackend, ops: list[BulkOp], results: list[ItemResult],
              config: Config) -> list[ItemResult]:
    """``results`` with the retryable writes of ``ops`` sent again until they land or
    :data:`BACKFILL_RETRIES` tries are spent. A write that did land before its answer
    was lost comes back as a conflict at its own version, which counts as written."""
    results = list(results)
    for attempt in range(BACKFILL_RETRIES):
        again = [i for i, r in enumerate(results) if r.status is ItemStatus.RETRYABLE]
        if not again:
            break
        wait = min(30.0, config.backoff_max, config.backoff_base * 2 ** attempt)
        log.warning("scrypath_sa: %d backfill writes failed (%s); again in %.1fs",
                    len(again), results[again[0]].error, wait)
        time.sleep(wait)  # backoff before asking the engine again, not a synchronisation
        for i, result in zip(again, backend.bulk([ops[i] for i in again],
                                                 wait_for_visibility=False), strict=True):
            results[i] = result
    return results


class _Page(list[tuple[str, str, Any]]):
    """(document id, action, payload) for one page, and the page's last primary key."""

    position: list[Any]


def _document_pages(engine: Engine, info: ModelInfo, where: Any, after: list[Any] | None,
                    page_size: int) -> Iterator[_Page]:
    if registry.uses_default_documents(info.cls):
        for rows in column_pages(engine, info, where=where, after=after, page_size=page_size):
            page = _Page((documents.pk_document_id([documents.json_safe(v) for v in key]),
                          "upsert", doc) for key, doc in rows)
            page.position = [documents.json_safe(v) for v in rows[-1][0]]
            yield page
        return
    for objs in row_pages(engine, info, where=where, after=after, page_size=page_size):
        page = _Page((str(obj.search_document_id()), *build_document(obj)) for obj in objs)
        page.position = documents.primary_key(objs[-1])
        yield page


@dataclass
class ReindexReport:
    model: str
    alias: str
    new_index: str
    since_event: int
    backfill: BackfillReport
    replayed: int = 0
    retried: int = 0
    expected_documents: int = 0
    documents: int = 0
    cut_over: bool = False
    previous_indices: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        data["ok"] = self.ok
        return data


CLOCK_MARGIN = dt.timedelta(minutes=5)
"""How far apart the clocks of the processes that record transitions may be."""


@dataclass(frozen=True)
class Mark:
    """Where a catch-up pass starts: events after ``event_id``, and events whose state
    changed at or after ``at`` (less :data:`CLOCK_MARGIN`).

    Ids are taken at flush, not at commit: a transaction that took its event id before
    the mark was read and committed after it has an id below the mark. It is processed
    after it commits, so its event changes state after the mark's time; the second
    condition replays it. Replaying more than needed is harmless (external versions)."""

    event_id: int
    at: dt.datetime


def _mark(engine: Engine) -> Mark:
    at = utcnow()  # before the high-water mark: nothing between them can be missed
    with engine.connect() as conn:
        return Mark(outbox.high_water_mark(conn), at)


def _replay(config: Config, info: ModelInfo, into: str, since: Mark,
            floor: int) -> tuple[int, Mark]:
    """Write the current state of every document with events after ``since`` into
    ``into``, at its newest event's version but never below ``floor``, the version the
    rebuild's backfill wrote at: a transaction that spans the rebuild's start has an
    event id below the backfill's version, and its write must still replace the copy
    the backfill read before it committed (the row is read now, so it is the newer
    one; every later event's version is above ``floor``). Returns (documents written,
    the mark this pass started from, for the next one)."""
    engine = config.bind
    # The mark first: an event committed after it is replayed next time; read after the
    # rows, an event committed in between would be skipped for good.
    mark = _mark(engine)
    with engine.connect() as conn:
        changed = outbox.changed_documents(conn, info.index, since.event_id,
                                           since.at - CLOCK_MARGIN)
    written = 0
    for start in range(0, len(changed), 1000):
        chunk = changed[start:start + 1000]
        keys = {doc_id: documents.typed_key(info, pk) for doc_id, _, pk in chunk}
        ops = []
        with Session(engine) as session:
            found = documents.rows_by_document_id(session, info, keys)
            for doc_id, version, _ in chunk:
                obj = found.get(doc_id)
                action, payload = build_document(obj) if obj is not None else ("delete", None)
                if action != "error":
                    ops.append(BulkOp(into, doc_id, max(version_of(int(version)), floor),
                                      payload))
        results = config.backend.bulk(ops, wait_for_visibility=False)
        written += sum(r.status in (ItemStatus.OK, ItemStatus.CONFLICT) for r in results)
    return written, mark


def _expected_documents(engine: Engine, info: ModelInfo) -> int:
    if registry.uses_default_should_index(info.cls):
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(info.cls)).scalar_one())
    return sum(1 for page in row_pages(engine, info, load_options=False)
               for obj in page if obj.should_index())


def reindex(model: type | str, *, cutover: bool = True, batch_size: int = 1000,
            progress: Callable[[Progress], None] | None = None,
            config: Config | None = None) -> ReindexReport:
    """Build a new physical index ``<alias>_<timestamp>`` from the current contract.

    Refresh is off while loading. Changes committed during the rebuild reach the new
    index: their events (ids above the start) are replayed into it before the switch,
    and once more right after it. Counts are verified before the alias moves
    (atomically); the previous index is kept for rollback until ``prune``.
    """
    config = resolve_config(config)
    engine = config.bind
    backend = admin_of(config.backend)
    info = _model(model)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S%f")
    new_index = f"{info.index}_{stamp}"
    since = _mark(engine)
    backend.create_index(new_index, info.contract, info.name, alias_for=info.index)
    backend.set_refresh_interval(new_index, "-1")
    try:
        filled = backfill(info.cls, batch_size=batch_size, into=new_index, progress=progress,
                          resume=False, config=config)
    finally:
        backend.set_refresh_interval(new_index, None)
    replayed, since_replay = _replay(config, info, new_index, since, filled.version)
    report = ReindexReport(info.name, info.index, new_index, since.event_id, filled, replayed)
    report.problems += [f"document {f['document_id']}: {f['error']}" for f in filled.failures]
    if cutover:
        _cutover(config, info, report, since_replay)
    else:
        _verify(config, engine, info, report, since_replay)
    return report


def _verify(config: Config, engine: Engine, info: ModelInfo, report: ReindexReport,
            since: Mark) -> Mark:
    """Compare the new index's count with the database's indexable rows. Writes keep
    landing while we look, so a difference is accepted only up to the number of events
    recorded for this model after the database was counted. Returns the mark the new
    index has caught up with."""
    with engine.connect() as conn:
        counted_at = outbox.high_water_mark(conn)
    report.expected_documents = _expected_documents(engine, info)
    replayed, since = _replay(config, info, report.new_index, since, report.backfill.version)
    report.replayed += replayed
    backend = admin_of(config.backend)
    backend.refresh(report.new_index)
    report.documents = backend.count(report.new_index)
    with engine.connect() as conn:
        moving = outbox.count_since(conn, info.index, counted_at)
    if abs(report.documents - report.expected_documents) > moving:
        report.problems.append(
            f"{report.new_index} holds {report.documents} documents, the database has "
            f"{report.expected_documents} indexable rows ({moving} changes since counted)")
    return since


def _cutover(config: Config, info: ModelInfo, report: ReindexReport, since: Mark,
             force: bool = False) -> None:
    since = _verify(config, config.bind, info, report, since)
    if report.problems and not force:
        return
    report.previous_indices = admin_of(config.backend).swap_alias(info.index, report.new_index)
    report.cut_over = True
    with config.bind.begin() as conn:  # prune keeps these first for rollback
        outbox.save_checkpoint(conn, f"cutover:{info.index}", report.new_index,
                               report.previous_indices, 0, 0, state="finished")
    # Writes processed between the replay and the switch went to the old index.
    more, _ = _replay(config, info, report.new_index, since, report.backfill.version)
    report.replayed += more
    # Writes the old index refused as being behind it (a restored database) can land
    # now: the new index was built from this database's versions.
    with config.bind.begin() as conn:
        refused = outbox.reopen(conn, info.index, discarded_as="index_ahead")
    report.retried = sum(len(o.event_ids) for o in redispatch(config, refused))
    config.backend.refresh(info.index)


def cutover(model: type | str, index: str, *, force: bool = False,
            config: Config | None = None) -> ReindexReport:
    """Move ``model``'s alias to ``index`` (built by ``reindex(cutover=False)``),
    replaying the changes committed since that build started."""
    config = resolve_config(config)
    info = _model(model)
    built = {p.name: p for p in admin_of(config.backend).physical_indices(info.index)}
    if index not in built:
        raise IndexContractError(
            f"{index!r} is not an index built for {info.index!r}; known: {sorted(built)}")
    since, floor = _built_since(config, index)
    replayed, since_replay = _replay(config, info, index, since, floor)
    empty = BackfillReport(info.name, index, floor)
    report = ReindexReport(info.name, info.index, index, since.event_id, empty, replayed)
    _cutover(config, info, report, since_replay, force=force)
    return report


def _built_since(config: Config, index: str) -> tuple[Mark, int]:
    """Where a rebuild of ``index`` started, and the version its backfill wrote at
    (from the backfill's checkpoint)."""
    saved = _checkpoint(config.bind, f"backfill:{index}")
    if saved is None:
        raise IndexContractError(f"no backfill of {index!r} is recorded; reindex it first")
    return Mark(int(saved.version) // VERSION_SCALE, saved.started_at), int(saved.version)
