"""status(), failed(), retry(): what the outbox and the index say, and one explicit retry."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scrypath_sa import migrations, outbox, triggers
from scrypath_sa.backends.base import IndexHealth, PhysicalIndex, admin_of
from scrypath_sa.config import Config
from scrypath_sa.errors import EventError, ScrypathError
from scrypath_sa.install import resolve_config
from scrypath_sa.modes.dispatch import redispatch
from scrypath_sa.modes.manual import NOT_FOUND
from scrypath_sa.ops.common import jsonable, resolve_models
from scrypath_sa.ops.distributed import RunProgress, latest_rebuild
from scrypath_sa.outcome import Outcome
from scrypath_sa.redaction import redact
from scrypath_sa.schema import UNFINISHED, State, utcnow


@dataclass
class ModelStatus:
    """One model's sync posture. Counts are events per lifecycle state."""

    model: str
    index: str
    counts: dict[str, int]
    oldest_unfinished_at: dt.datetime | None
    oldest_unfinished_age_seconds: float | None
    stuck: int
    lost: int
    retrying: int
    next_attempt_at: dt.datetime | None
    discarded: int
    alias_points_to: list[str]
    documents: int | None
    physical_indices: list[PhysicalIndex]
    rebuild_in_progress: str | None
    rebuilds: list[dict[str, Any]]
    contract_hash: str
    live_contract_hash: str | None
    contract_matches: bool | None
    health: IndexHealth | None = None
    distributed: RunProgress | None = None  # the newest distributed rebuild
    backend_error: str | None = None
    capture_trigger_missing: bool = False  # captured by trigger, its table has none

    @property
    def problems(self) -> list[str]:
        out = []
        if self.backend_error:
            out.append(f"backend: {self.backend_error}")
        elif not self.alias_points_to and self.counts.get(State.COMPLETED.value):
            out.append(f"the alias {self.index} is missing, though "
                       f"{self.counts[State.COMPLETED.value]} writes to it were completed: "
                       "backfill (or reconcile) to rebuild it")
        if self.health is not None and self.health.status == "red":
            out.append(f"index {self.index} is red: {self.health.unassigned_shards} shards "
                       "are unassigned, primaries among them: writes to those shards fail "
                       "and retry until their nodes are back")
        elif self.health is not None and self.health.status == "yellow":
            out.append(f"index {self.index} is yellow: {self.health.unassigned_shards} "
                       f"replica shards are unassigned ({self.health.nodes} nodes): writes "
                       "go on, but losing another node may lose them; bring the nodes "
                       "back, or lower number_of_replicas in the contract")
        run = self.distributed
        if run is not None:
            if run.state == "failed":
                out.append(f"distributed rebuild of {run.index} failed: {run.error}: sweep "
                           "sends its ranges again, or start it again")
            elif run.stalled_ranges:
                out.append(f"distributed rebuild of {run.index}: ranges "
                           f"{run.stalled_ranges} have no live worker: sweep sends them again")
            elif run.state == "finished" and run.problems:
                out.append(f"distributed rebuild of {run.index} finished with problems"
                           f"{' (not cut over)' if run.reindex_of else ''}: "
                           + "; ".join(run.problems))
        if self.stuck:
            out.append(f"{self.stuck} events unfinished for too long")
        if self.lost:
            out.append(f"{self.lost} accepted writes were not found by confirm(): retry "
                       "them, or reconcile")
        if self.retrying:
            out.append(f"{self.retrying} events retrying")
        if self.discarded:
            out.append(f"{self.discarded} events discarded")
        if self.contract_matches is False:
            out.append("the live index was built for another contract: reindex")
        if self.capture_trigger_missing:
            out.append(f"{self.model} is captured by trigger, but its table's capture "
                       "triggers are missing or out of date: sessions record its changes "
                       "meanwhile, other writers' may not be recorded; run "
                       f"scrypath_sa.triggers.ddl({self.model}) in a migration, then "
                       "reconcile")
        for rebuild in self.rebuilds:
            if rebuild["state"] == "abandoned":
                owner = rebuild["owner"] or "an unknown process"
                out.append(f"rebuild {rebuild['index']} by {owner} was abandoned (its "
                           "process is gone, or it stopped making progress at "
                           f"{rebuild['last_progress_at']}): reindex again; prune removes it")
            elif rebuild["state"] == "failed":
                out.append(f"rebuild {rebuild['index']} failed at "
                           f"{rebuild['last_progress_at']}: {rebuild['error']}: reindex "
                           "again; prune removes it")
        return out


@dataclass
class StatusReport:
    """Per model, its posture; per configured mode, why it could not hand work over
    now (``mode_errors``: a broker that cannot be reached), if it could not."""

    models: list[ModelStatus]
    mode_errors: dict[str, str] = field(default_factory=dict)
    schema_behind: str | None = None  # the sync tables need a migration: what to run
    generated_at: dt.datetime = field(default_factory=utcnow)

    @property
    def problems(self) -> list[str]:
        """What needs attention beyond any one model."""
        found = [f"mode {name}: {error}: committed events stay requested until it is "
                 "back (sweep sends them)" for name, error in self.mode_errors.items()]
        return found + ([self.schema_behind] if self.schema_behind else [])

    @property
    def needs_attention(self) -> bool:
        return bool(self.problems) or any(m.problems for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        for entry, model in zip(data["models"], self.models, strict=True):
            entry["problems"] = model.problems
        data["problems"] = self.problems
        data["needs_attention"] = self.needs_attention
        return data


def status(models: Iterable[type | str] | None = None, *, config: Config | None = None,
           stuck_after: dt.timedelta = dt.timedelta(minutes=5)) -> StatusReport:
    """Per model: events by state, the oldest unfinished one, retrying (and when next),
    discarded, where the alias points, document count, the index's health (yellow or
    red is a problem), a rebuild in progress, and whether the live index was built for
    the model's current contract."""
    config = resolve_config(config)
    backend = admin_of(config.backend)
    infos = resolve_models(models)
    now = utcnow()
    indices = [m.index for m in infos]
    with config.bind.connect() as conn:
        counts = outbox.state_counts(conn, indices)
        oldest = outbox.oldest_unfinished(conn, indices)
        stuck = outbox.stuck_counts(conn, indices, UNFINISHED - {State.RETRYING},
                                    now - stuck_after)
        next_attempt = outbox.next_attempts(conn, indices)
        lost = outbox.unconfirmed_counts(conn, indices, NOT_FOUND)
        missing = {info.index for info in infos if info.by_trigger
                   and conn.dialect.name == "postgresql"
                   and not triggers.installed(conn, info.cls)}
    report = StatusReport(models=[], schema_behind=migrations.behind(config.bind), mode_errors={
        name: error for name, mode in sorted(config.modes.items())
        if (error := mode.check()) is not None})
    for info in infos:
        by_state = {s.value: counts.get(info.index, {}).get(s.value, 0) for s in State}
        started = oldest.get(info.index)
        if started is not None and started.tzinfo is None:
            started = started.replace(tzinfo=dt.timezone.utc)
        entry = ModelStatus(
            model=info.name, index=info.index, counts=by_state,
            oldest_unfinished_at=started,
            oldest_unfinished_age_seconds=(now - started).total_seconds() if started else None,
            stuck=stuck.get(info.index, 0), lost=lost.get(info.index, 0),
            retrying=by_state[State.RETRYING.value],
            next_attempt_at=next_attempt.get(info.index),
            discarded=by_state[State.DISCARDED.value], alias_points_to=[], documents=None,
            physical_indices=[], rebuild_in_progress=None, rebuilds=[],
            contract_hash=info.contract.hash,
            live_contract_hash=None, contract_matches=None,
            capture_trigger_missing=info.index in missing)
        if report.schema_behind is None:  # older sync tables cannot say
            entry.distributed = latest_rebuild(config, info)
        try:
            posture = backend.posture(info.index)
            entry.physical_indices = backend.physical_indices(info.index)
            if posture is not None:
                entry.alias_points_to = list(posture.indices)
                entry.live_contract_hash = posture.contract_hash
                entry.contract_matches = posture.contract_hash == info.contract.hash
                entry.documents = backend.count(info.index)
                entry.health = backend.health(info.index)
            live = set(entry.alias_points_to)
            newest_live = max((p.created_at or "" for p in entry.physical_indices
                               if p.name in live), default="")
            building = [p.name for p in entry.physical_indices
                        if p.name not in live and (p.created_at or "") > newest_live]
            entry.rebuilds = _rebuilds(config, building, now - stuck_after)
            running = [r["index"] for r in entry.rebuilds if r["state"] == "running"]
            entry.rebuild_in_progress = running[-1] if running else None
        except ScrypathError as exc:
            entry.backend_error = redact(exc)
        report.models.append(entry)
    return report


def _rebuilds(config: Config, names: list[str],
              stale_before: dt.datetime) -> list[dict[str, Any]]:
    """Each unaliased index newer than the live one, with what its backfill recorded:
    ``running`` (its owner is alive, or elsewhere and heard from since
    ``stale_before``), ``failed`` (it stopped on an error or an interrupt: ``error``
    says which), ``abandoned`` (its process is gone from this host, or it has not been
    heard from since ``stale_before``), ``built`` (finished, not cut over), ``unknown``
    (no record)."""
    found = []
    with config.bind.connect() as conn:
        for name in names:
            saved = outbox.checkpoint(conn, f"backfill:{name}")
            entry: dict[str, Any] = {"index": name, "state": "unknown",
                                     "last_progress_at": None, "owner": None, "error": None}
            if saved is not None:
                entry.update(last_progress_at=saved.updated_at, owner=saved.owner,
                             error=saved.last_error)
                if saved.finished_at is not None:
                    entry["state"] = "built"
                elif saved.state == "failed":
                    entry["state"] = "failed"
                elif outbox.process_gone(saved.owner) or saved.updated_at <= stale_before:
                    entry["state"] = "abandoned"
                else:
                    entry["state"] = "running"
            found.append(entry)
    return found


@dataclass
class FailedEvent:
    id: int
    model: str
    index: str
    document_id: str
    operation: str
    state: str
    attempts: int
    failure_class: str
    error_kind: str | None
    last_error: str | None
    requested_at: dt.datetime
    updated_at: dt.datetime
    next_attempt_at: dt.datetime | None
    discarded_at: dt.datetime | None


@dataclass
class FailedReport:
    events: list[FailedEvent]
    next_after_id: int | None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        return data


def _failure_class(state: str, error_kind: str | None) -> str:
    if state == State.RETRYING.value:
        return "retryable"
    if error_kind in {"retries_exhausted"}:
        return "retries_exhausted"
    return "permanent"


def failed(models: Iterable[type | str] | None = None, *, config: Config | None = None,
           states: Sequence[str] = ("retrying", "discarded"), error_kind: str | None = None,
           limit: int = 50, after_id: int | None = None) -> FailedReport:
    """Retrying and discarded events, oldest first, ``limit`` at a time. Pass the
    report's ``next_after_id`` as ``after_id`` for the next page."""
    config = resolve_config(config)
    indices = [m.index for m in resolve_models(models)] if models is not None else None
    with config.bind.connect() as conn:
        rows = outbox.failed(conn, states, indices, error_kind, after_id, limit + 1)
    events = [FailedEvent(
        id=r.id, model=r.model, index=r.index_name, document_id=r.document_id,
        operation=r.operation, state=r.state, attempts=r.attempts,
        failure_class=_failure_class(r.state, r.error_kind), error_kind=r.error_kind,
        last_error=r.last_error, requested_at=r.requested_at, updated_at=r.updated_at,
        next_attempt_at=r.next_attempt_at, discarded_at=r.discarded_at) for r in rows[:limit]]
    return FailedReport(events, events[-1].id if len(rows) > limit else None)


_RETRYABLE_FROM = (State.REQUESTED, State.ENQUEUED, State.RETRYING, State.DISCARDED)


def retry(event_id: int, *, mode: str | None = None, config: Config | None = None) -> Outcome:
    """Send exactly one event again, through its original mode unless ``mode`` says
    otherwise. Its attempts start over (an explicit retry is a new series)."""
    config = resolve_config(config)
    if mode is not None:
        config.mode(mode)  # an unknown mode fails before anything changes
    with config.bind.begin() as conn:
        row = outbox.get(conn, event_id)
        if row is None:
            raise EventError(f"there is no sync event with id {event_id}")
        if row.state == State.COMPLETED.value:
            raise EventError(
                f"event {event_id} is completed: there is nothing to retry. If the index "
                "still looks wrong, run reconcile to find the drift.")
        if row.state == State.PROCESSING.value:
            raise EventError(
                f"event {event_id} is being processed since {row.processing_at} by "
                f"{row.claimed_by or 'a worker'}; if that worker died, sweep with a "
                "stale_after expires its claim")
        if row.state == State.BACKEND_ACCEPTED.value and row.error_kind != NOT_FOUND:
            raise EventError(
                f"event {event_id} was accepted by the backend; confirm() verifies it and "
                "marks it completed")
        outbox.mark(conn, [event_id], State.REQUESTED,
                    only_from=[*_RETRYABLE_FROM, State.BACKEND_ACCEPTED], attempts=0,
                    next_attempt_at=None)
    (outcome,) = redispatch(config, [(event_id, row.mode)], mode=mode)
    return outcome
