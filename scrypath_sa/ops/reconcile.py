"""reconcile(): compare database and index in both directions; recommend, act if asked."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scrypath_sa import outbox, registry
from scrypath_sa.backends.base import admin_of
from scrypath_sa.config import Config
from scrypath_sa.documents import build_document
from scrypath_sa.errors import ConfigurationError, ScrypathError
from scrypath_sa.install import resolve_config
from scrypath_sa.modes.dispatch import redispatch
from scrypath_sa.ops.common import jsonable, resolve_models
from scrypath_sa.ops.rebuild import backfill, reindex
from scrypath_sa.ops.scan import orphan_pages, row_pages
from scrypath_sa.redaction import redact
from scrypath_sa.registry import ModelInfo
from scrypath_sa.schema import State, utcnow

ACTIONS = ("retry", "backfill", "reindex")
SAMPLE = 20


@dataclass
class ModelDrift:
    """What differs between one model's table and its index, and what to do about it."""

    model: str
    index: str
    rows: int = 0
    indexable_rows: int = 0
    documents: int = 0
    missing_from_index: int = 0
    orphaned_in_index: int = 0
    behind_completed_version: int = 0
    ahead_of_database: int = 0
    content_differs: int = 0
    in_flight: int = 0
    stuck: int = 0
    retrying: int = 0
    discarded: int = 0
    completed_events: int = 0
    contract_matches: bool | None = None
    samples: dict[str, list[str]] = field(default_factory=dict)
    recommendation: str = "nothing"
    reasons: list[str] = field(default_factory=list)
    error: str | None = None

    def _sample(self, kind: str, ids: Iterable[str]) -> None:
        ids = list(ids)
        if not ids:
            return
        bucket = self.samples.setdefault(kind, [])
        bucket.extend(ids[: SAMPLE - len(bucket)])


@dataclass
class ReconcileReport:
    """Per model, what differs (``models``). With an ``action``: per model that needed a
    repair, what was done (``actions_taken``: ``done``, ``result`` or ``error`` or the
    reason it was not done, and ``after``, the recommendation of a fresh comparison)."""

    models: list[ModelDrift]
    action: str | None = None
    forced: bool = False
    actions_taken: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when a model could not be compared (the backend or database failed)."""
        return any(m.error for m in self.models)

    @property
    def needs_attention(self) -> bool:
        """Without an action: a model needs a repair or could not be compared. With
        one: something was not repaired (not done, failed, or still drifting after)."""
        if self.action is None:
            return any(m.recommendation != "nothing" or m.error for m in self.models)
        return self.failed or any(not taken["done"] or taken["after"] != "nothing"
                                  for taken in self.actions_taken)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(self)
        data["needs_attention"] = self.needs_attention
        data["failed"] = self.failed
        return data


def reconcile(models: Iterable[type | str] | None = None, *, action: str | None = None,
              force: bool = False, config: Config | None = None, page_size: int = 1000,
              stuck_after: dt.timedelta = dt.timedelta(minutes=5)) -> ReconcileReport:
    """Compare each model's rows and index documents in both directions, page by page:
    rows missing from the index, documents whose row is gone (or must not be indexed),
    documents older than their newest completed write, stuck and failed work, and
    contract drift. Recommends one of nothing / retry / backfill / reindex with reasons.

    Acts only when ``action`` names the repair to perform, and only on models whose
    recommendation it is (``force=True``: on every model that needs a repair); each
    repair is followed by a fresh comparison, whose recommendation the report keeps."""
    if action is not None and action not in ACTIONS:
        raise ConfigurationError(f"unknown reconcile action {action!r}: choose one of {ACTIONS}")
    config = resolve_config(config)
    report = ReconcileReport(models=[], action=action, forced=force)
    for info in resolve_models(models):
        drift = _drift(config, info, page_size, stuck_after)
        report.models.append(drift)
        if action is None or drift.error is not None or drift.recommendation == "nothing":
            continue
        taken: dict[str, Any] = {"model": info.name, "action": action, "done": False,
                                 "after": drift.recommendation}
        if action != drift.recommendation and not force:
            taken["reason"] = (f"not done: the report recommends {drift.recommendation}; "
                               f"force it to {action} anyway")
        else:
            try:
                taken["result"], taken["done"] = _act(config, info, action, stuck_after)
            except ScrypathError as exc:
                taken["error"] = redact(exc)
            after = _drift(config, info, page_size, stuck_after)
            taken["after"] = after.recommendation if after.error is None else "unknown"
            taken["after_reasons"] = after.reasons
        report.actions_taken.append(taken)
    return report


def _drift(config: Config, info: ModelInfo, page_size: int,
           stuck_after: dt.timedelta) -> ModelDrift:
    drift = ModelDrift(info.name, info.index)
    try:
        _compare(config, info, drift, page_size, stuck_after)
    except ScrypathError as exc:
        drift.error = redact(exc)
        drift.recommendation = "unknown"
        drift.reasons.append(f"could not compare: {drift.error}")
    else:
        _recommend(drift)
    return drift


def _compare(config: Config, info: ModelInfo, drift: ModelDrift, page_size: int,
             stuck_after: dt.timedelta) -> None:
    engine = config.bind
    backend = admin_of(config.backend)
    posture = backend.posture(info.index)
    if posture is None:
        drift.contract_matches = None
    else:
        drift.contract_matches = posture.contract_hash == info.contract.hash
        drift.documents = backend.count(info.index)
    with engine.connect() as conn:
        ceiling = outbox.highest_issued_version(conn)
    custom_ids = not registry.uses_default_ids(info.cls)
    known_ids: set[str] | None = set() if custom_ids else None
    for page in row_pages(engine, info, page_size=page_size):
        wanted: dict[str, bool] = {}
        built: dict[str, Any] = {}
        for obj in page:
            action, document = build_document(obj)
            doc_id = str(obj.search_document_id())
            wanted[doc_id] = action == "upsert"
            built[doc_id] = document
        drift.rows += len(page)
        drift.indexable_rows += sum(wanted.values())
        if known_ids is not None:
            known_ids.update(i for i, keep in wanted.items() if keep)
        found = backend.documents(info.index, list(wanted)) if posture is not None else {}
        stored = {i: (hit[0] if hit is not None else None) for i, hit in found.items()}
        ahead = [i for i, version in stored.items() if version is not None and version > ceiling]
        drift.ahead_of_database += len(ahead)
        drift._sample("ahead_of_database", ahead)
        with engine.connect() as conn:
            newest = outbox.newest_completed(conn, info.index, list(wanted))
            moving = outbox.in_flight(conn, info.index, list(wanted))
        lagging = {i for i in wanted if i in moving}  # their events are on the way
        differs = [i for i, keep in wanted.items() if keep and i not in lagging
                   and found.get(i) is not None
                   and _normal(found[i][1]) != _normal(built[i])]  # type: ignore[index]
        drift.content_differs += len(differs)
        drift._sample("content_differs", differs)
        missing = [i for i, keep in wanted.items()
                   if keep and i not in lagging and stored.get(i) is None]
        drift.missing_from_index += len(missing)
        drift._sample("missing_from_index", missing)
        behind = [i for i, keep in wanted.items()
                  if keep and i not in lagging and stored.get(i) is not None and i in newest
                  and stored[i] < newest[i][1]]  # type: ignore[operator]
        drift.behind_completed_version += len(behind)
        drift._sample("behind_completed_version", behind)
        drift.in_flight += len(lagging)
    if posture is not None:
        for orphans in orphan_pages(engine, backend, info, info.index, page_size=page_size,
                                    known_ids=known_ids):
            with engine.connect() as conn:
                moving = outbox.in_flight(conn, info.index, [i for i, _ in orphans])
            orphaned = [doc_id for doc_id, _ in orphans if doc_id not in moving]
            drift.orphaned_in_index += len(orphaned)
            drift.in_flight += len(orphans) - len(orphaned)
            drift._sample("orphaned_in_index", orphaned)
    with engine.connect() as conn:
        by_state = outbox.state_counts(conn, [info.index]).get(info.index, {})
        drift.stuck = outbox.stuck_counts(
            conn, [info.index], [State.REQUESTED, State.ENQUEUED, State.PROCESSING],
            utcnow() - stuck_after).get(info.index, 0)
    drift.retrying = int(by_state.get(State.RETRYING.value, 0))
    drift.discarded = int(by_state.get(State.DISCARDED.value, 0))
    drift.completed_events = int(by_state.get(State.COMPLETED.value, 0))


def _normal(document: Any) -> str:
    """Compare documents as JSON would store them (key order, tuples, floats)."""
    return json.dumps(document, sort_keys=True, default=str)


def _recommend(drift: ModelDrift) -> None:
    reasons = drift.reasons
    if drift.contract_matches is False:
        reasons.append("the live index was built for another contract")
    missing_alias = drift.contract_matches is None and (
        drift.indexable_rows > drift.in_flight or drift.completed_events)
    if missing_alias and drift.completed_events:
        reasons.append(f"the alias is missing, though {drift.completed_events} writes to it "
                       "were completed (deleted behind the library's back?)")
    elif missing_alias:
        reasons.append("the alias does not exist yet")
    drifted = (drift.missing_from_index + drift.orphaned_in_index
               + drift.behind_completed_version + drift.content_differs
               + drift.ahead_of_database)
    if drift.ahead_of_database:
        reasons.append(f"{drift.ahead_of_database} documents are at versions above every "
                       "version this database issued (restored from an older backup, or "
                       "another writer): nothing written in place can replace them")
    if drift.missing_from_index:
        reasons.append(f"{drift.missing_from_index} rows are missing from the index")
    if drift.orphaned_in_index:
        reasons.append(f"{drift.orphaned_in_index} documents have no (indexable) row")
    if drift.behind_completed_version:
        reasons.append(f"{drift.behind_completed_version} documents are older than their "
                       "newest completed write")
    if drift.content_differs:
        reasons.append(f"{drift.content_differs} documents differ from what their row "
                       "builds (a change the library did not see, e.g. raw SQL)")
    if drift.in_flight:
        reasons.append(f"{drift.in_flight} documents have events still on their way "
                       "(not drift: status shows how far behind they are)")
    if drift.stuck:
        reasons.append(f"{drift.stuck} events are stuck (requested, enqueued or processing)")
    if drift.retrying or drift.discarded:
        reasons.append(f"{drift.retrying} events retrying, {drift.discarded} discarded")
    if (drift.contract_matches is False or drift.ahead_of_database
            or drifted > max(drift.indexable_rows // 2, 10_000)):
        # Most of a large index is wrong: rebuilding behind the alias is safer and
        # faster than patching it in place.
        drift.recommendation = "reindex"
    elif drifted or missing_alias:
        drift.recommendation = "backfill"
    elif drift.stuck or drift.retrying or drift.discarded:
        drift.recommendation = "retry"
    else:
        drift.recommendation = "nothing"


def _act(config: Config, info: ModelInfo, action: str,
         stuck_after: dt.timedelta) -> tuple[Any, bool]:
    """Run the repair; its result, and whether it did all it set out to do (a rebuild
    that did not check out left the alias where it was; a retry whose events the mode
    could not hand over, e.g. to an unreachable broker, did not retry them)."""
    if action == "backfill":
        built = backfill(info.cls, remove_orphans=True, resume=False, config=config)
        return built.to_dict(), built.ok
    if action == "reindex":
        rebuilt = reindex(info.cls, config=config)
        return rebuilt.to_dict(), rebuilt.ok
    with config.bind.begin() as conn:
        outbox.expire_claims(conn, stuck_after)
        reopened = outbox.reopen(conn, info.index)
    outcomes = redispatch(config, reopened)
    kept = all(config.mode(o.mode).kept_promise(o) for o in outcomes)
    return [o.to_dict() for o in outcomes], kept
