"""The one place sync work is done: claim events, coalesce them per document, read the
rows and build the operations; :mod:`scrypath_sa.pipeline` sends them and records what
became of them.

A mode decides *when and where* :func:`process` runs and which
:class:`~scrypath_sa.visibility.Visibility` it wants, never *what* it does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from scrypath_sa import outbox, telemetry
from scrypath_sa.backends.base import BulkOp
from scrypath_sa.documents import load_documents
from scrypath_sa.outbox import Event, Transition
from scrypath_sa.outcome import Failure, Outcome
from scrypath_sa.pipeline import PIPELINE_DEPTH, Doc, Prepared, Writer, each
from scrypath_sa.registry import ModelInfo, info_for_index
from scrypath_sa.schema import State
from scrypath_sa.sql import Bind, begin, connect
from scrypath_sa.threads import ahead
from scrypath_sa.visibility import Visibility, plan

if TYPE_CHECKING:
    from scrypath_sa.config import Config

log = logging.getLogger("scrypath_sa")

CLAIM_CHUNK = 2000
"""Events claimed per statement: one claim per few thousand events costs far less than
one per batch."""


def process(config: Config, event_ids: Sequence[int], *, mode: str,
            visibility: Visibility = Visibility.VISIBLE, bind: Bind | None = None,
            worker: str | None = None, timeout: float | None = None,
            take_along: int = 0) -> Outcome:
    """Claim ``event_ids``, write their documents, and record every outcome.

    A successful write ends ``completed`` (visible to search) unless ``visibility`` is
    ``NONE`` (then ``backend_accepted``) or ``DEFERRED`` (then the process's confirmer
    records it a moment later). Ids that are not claimable (unknown, rolled back,
    already done, claimed by someone else) are reported as ``skipped`` and left alone.

    Work streams: events are claimed a few thousand at a time and written in batches of
    ``config.batch_size``. In a run of several batches, sender threads send them back to
    back, a reader thread (not on SQLite, nor on a caller's connection) claims, reads
    rows and builds documents ahead of them, and this thread records the outcomes that
    are final as they come in (so an interrupted run keeps what it finished; events
    claimed but not written when a run fails stay ``processing`` until their claim
    expires).

    ``timeout`` (seconds) bounds the run: no request is sent after it, and none after
    one that got no answer; the events not sent are ``retrying`` with the reason.

    ``take_along``: also claim up to this many other events handed to ``mode`` that nobody
    works on (:func:`~scrypath_sa.outbox.claim_due`), written in the same batches; their
    outcomes are in the result (``outcome.extra`` lists their ids).
    """
    bind = bind or config.bind
    ids = list(dict.fromkeys(event_ids))
    outcome = Outcome(mode=mode, event_ids=ids)
    policy = plan(visibility, bind)
    writer = Writer(config, bind, policy, pipelined=len(ids) + take_along > config.batch_size,
                    deadline=None if timeout is None else time.monotonic() + timeout)
    began = time.perf_counter()
    with telemetry.span("scrypath_sa.process", mode=mode, events=len(ids)) as span:
        _process(config, bind, ids, outcome, writer, mode, worker, take_along)
        span.set(documents=outcome.documents, taken_along=len(outcome.extra),
                 **{f"state.{state}": n for state, n in outcome.states.items()})
    if outcome.failures or log.isEnabledFor(logging.DEBUG):
        details = telemetry.fields(
            "scrypath_sa.run", mode=mode, events=len(ids) + len(outcome.extra),
            indices=sorted({doc.info.index for doc in writer.where.values()}) or None,
            documents=outcome.documents, states=dict(outcome.states),
            error_kinds=sorted({f.error_kind or "" for f in outcome.failures}) or None,
            seconds=round(time.perf_counter() - began, 6))
        if outcome.failures:
            log.warning("scrypath_sa: %s", outcome.describe(), extra=details)
        else:
            log.debug("scrypath_sa: run of %d events done", len(ids), extra=details)
    return outcome


def _process(config: Config, bind: Bind, ids: list[int], outcome: Outcome, writer: Writer,
             mode: str, worker: str | None, take_along: int) -> Outcome:
    claimed: set[int] = set()
    docs_total = 0
    items = _read(config, bind, ids, mode, worker, take_along)
    if writer.pipelined and isinstance(bind, Engine) and bind.dialect.name != "sqlite":
        # Claims and row reads wait on the database most of the time: a reader thread
        # does them ahead, this thread hands batches to the senders and records outcomes.
        items = ahead(items, PIPELINE_DEPTH)
    try:
        for item in items:
            if isinstance(item, _Claimed):
                outcome.locked.extend(item.locked)
                outcome.extra.extend(item.extra)
                claimed.update(item.ids)
                writer.record(item.unknown)
            else:
                docs_total += len(item.batch)
                writer.submit(item)
    finally:
        items.close()  # on an error, stop the reader now, not when the traceback goes
        transitions = writer.finish()

    outcome.skipped = [i for i in ids if i not in claimed]
    outcome.documents = docs_total
    outcome.event_documents = writer.where
    for tr in transitions:
        outcome.states[tr.state.value] += 1
        outcome.event_states[tr.event_id] = tr.state.value
        if tr.state in (State.RETRYING, State.DISCARDED):
            doc = writer.where.get(tr.event_id)
            index, document_id = (doc.info.index, doc.document_id) if doc else ("?", "?")
            outcome.failures.append(Failure(tr.event_id, index, document_id, tr.state.value,
                                            tr.error_kind, tr.error))
    return outcome


@dataclass
class _Claimed:
    ids: list[int]
    locked: list[int]
    unknown: list[Transition]
    extra: list[int]


def _read(config: Config, bind: Bind, ids: list[int], mode: str, worker: str | None,
          take_along: int) -> Generator[_Claimed | Prepared, None, None]:
    """Claim ``ids`` a chunk at a time (and, with the first, up to ``take_along`` other due
    events); for each chunk, what was claimed, then its batches with rows read and
    documents built."""
    claim_size = max(config.batch_size, CLAIM_CHUNK)
    # No ids of its own (a doorbell rung again) still takes along.
    for start in range(0, max(len(ids), 1 if take_along > 0 else 0), claim_size):
        events, locked = _claim(bind, ids[start:start + claim_size], mode, worker)
        extra: list[Event] = []
        if start == 0 and take_along > 0:
            with begin(bind) as conn:
                extra = outbox.claim_due(conn, mode, take_along, worker)
            events.extend(extra)
        groups, unknown = _coalesce(events)
        yield _Claimed([e.id for e in events], locked, unknown, [e.id for e in extra])
        del events  # the documents carry what the rest of the run needs
        for group in groups.values():
            for first in range(0, len(group), config.batch_size):
                yield _prepare(bind, group[0].info, group[first:first + config.batch_size])


def _claim(bind: Bind, ids: list[int], mode: str,
           worker: str | None) -> tuple[list[Event], list[int]]:
    """Claim ``ids``; returns (claimed events, ids still locked by someone else).

    ``SKIP LOCKED`` also skips rows that a non-claimer (the ``enqueued`` marker, a
    sweep) holds for a moment. Such ids are still claimable: try them again briefly,
    then give them back as locked so the caller can redeliver them later.
    """
    with begin(bind) as conn:
        events = outbox.claim(conn, ids, mode, worker)
    missing = sorted(set(ids) - {e.id for e in events})
    delay = 0.01
    while missing:
        with connect(bind) as conn:
            missing = outbox.claimable(conn, missing)
        if not missing or delay > 0.5:
            break
        time.sleep(delay)
        delay *= 2
        with begin(bind) as conn:
            more = outbox.claim(conn, missing, mode, worker)
        events.extend(more)
        missing = sorted(set(missing) - {e.id for e in more})
    return events, missing


def _coalesce(events: list[Event]) -> tuple[dict[str, list[Doc]], list[Transition]]:
    """Group claimed events per model and per document; events of unknown models are
    discarded with the reason."""
    unknown: list[Transition] = []
    docs: dict[str, dict[str, Doc]] = {}  # index -> document id -> document
    infos: dict[str, ModelInfo | None] = {}
    for event in events:
        if event.index_name in infos:
            info = infos[event.index_name]
        else:
            info = infos[event.index_name] = info_for_index(event.index_name)
        if info is None:
            unknown.append(Transition(
                event.id, State.DISCARDED, error_kind="unknown_model",
                error=f"no Searchable model for index {event.index_name!r} ({event.model}) "
                      "is defined in this process: import the model before processing",
            ))
            continue
        of_index = docs.get(event.index_name)
        if of_index is None:
            of_index = docs[event.index_name] = {}
        doc = of_index.get(event.document_id)
        if doc is None:
            of_index[event.document_id] = Doc(info, event.document_id, event.pk,
                                              (event.id,), event.attempts)
        else:
            doc.event_ids += (event.id,)
            doc.attempts = max(doc.attempts, event.attempts)
    return {index: list(of_index.values()) for index, of_index in docs.items()}, unknown


def _prepare(bind: Bind, info: ModelInfo, batch: list[Doc]) -> Prepared:
    """Read the batch's rows and build its operations (documents that cannot be built
    are discarded here, with the reason)."""
    prepared = Prepared(info, batch)
    built = load_documents(bind, info, [doc.pk for doc in batch])
    for doc in batch:
        action, payload = built.get(doc.pk, ("delete", None))
        if action == "error":
            prepared.failed.extend(each(doc, State.DISCARDED, error_kind="document_error",
                                        error=str(payload)))
            continue
        prepared.ops.append(BulkOp(info.index, doc.document_id, doc.version, payload))
        prepared.sent.append(doc)
    return prepared
