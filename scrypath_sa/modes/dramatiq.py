"""``dramatiq``: after commit, a durable Dramatiq message carries the event ids; a worker
does the write later.

The actor is created explicitly on *your* broker when you build the mode, so importing
scrypath_sa never creates Dramatiq's implicit default broker::

    broker = RedisBroker(url=...)
    dramatiq.set_broker(broker)            # for the `dramatiq` worker command
    scrypath_sa.configure(Session, backend=..., mode="dramatiq",
                          modes={"dramatiq": DramatiqMode(broker)})

Run workers with ``dramatiq your.module`` where ``your.module`` makes that same call.
Messages carry event ids only (never documents); the worker re-reads the rows, so a
late message still writes the newest state. Only Dramatiq's broker abstraction is used:
Redis and RabbitMQ brokers both work.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scrypath_sa import outbox, processor, telemetry
from scrypath_sa.errors import MissingExtraError, NotConfiguredError
from scrypath_sa.modes.base import Mode, run_task
from scrypath_sa.modes.dispatch import push_due
from scrypath_sa.outcome import Outcome
from scrypath_sa.redaction import redact
from scrypath_sa.schema import State, utcnow
from scrypath_sa.threads import HandOff
from scrypath_sa.visibility import Visibility, flush_confirmations

try:
    import dramatiq
    from dramatiq.broker import Broker
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("dramatiq", "dramatiq") from exc

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config

log = logging.getLogger("scrypath_sa")

STREAM_WINDOWS = 4
"""In a stream of small commits a doorbell's window grows up to this many ``collect``:
one claim and one bulk request per window (measured in docs/performance.md)."""


def worker_id() -> str:
    return f"{outbox.this_process()}:{threading.get_ident()}"


class _Relay(HandOff[tuple["Engine", list[int], bool]]):
    """One background thread that (optionally) sends, then records ``enqueued``.

    Items are (engine, ids, send). With ``send`` the thread hands the ids to the broker
    first; ids the broker refused stay ``requested`` for ``sweep()``. Marks are written
    only ever after the broker accepted the message.

    The thread lingers up to ``mode.linger`` seconds after the first item for more, so
    that a stream of small commits costs one mark UPDATE (and, for ``background``
    sends, one message) per batch of commits rather than one each. A row reads
    ``requested`` that much longer, which under-promises; :meth:`flush` cuts it short.
    """

    thread_name = "scrypath-relay"

    def __init__(self, mode: DramatiqMode) -> None:
        super().__init__()
        self.mode = mode
        self._flush_now = threading.Event()

    def hurry(self) -> None:
        self._flush_now.set()
        self.queue.put(None)

    def _take(self) -> list[tuple[Engine, list[int], bool]]:
        """The next batch: the first item, then everything that arrived within the
        linger. The thread sleeps through the linger (items arriving meanwhile do not
        wake it: with one wake-up per commit it would compete with the committing
        threads for the interpreter), unless a flush wakes it."""
        first = self.next_item()
        if not self._flush_now.is_set():
            self._flush_now.wait(self.mode.linger)
        self._flush_now.clear()
        return [first, *self.pending()]

    def work(self) -> None:
        while True:
            batch = self._take()
            unsent: dict[Engine, list[int]] = {}
            accepted: dict[Engine, list[int]] = {}
            for engine, ids, send in batch:
                (unsent if send else accepted).setdefault(engine, []).extend(ids)
            for engine, ids in unsent.items():
                for start in range(0, len(ids), self.mode.chunk_size):
                    chunk = ids[start:start + self.mode.chunk_size]
                    if self.mode.send(chunk) is None:
                        accepted.setdefault(engine, []).extend(chunk)
            for engine, ids in accepted.items():
                try:
                    with engine.begin() as conn:
                        outbox.mark(conn, ids, State.ENQUEUED, only_from=[State.REQUESTED],
                                    mode=self.mode.name)
                except Exception as exc:  # noqa: BLE001 - they stay requested; sweep resends
                    log.warning("scrypath_sa: could not mark %d sent events enqueued; they "
                                "stay requested: %s", len(ids), redact(exc))
            self.done(len(batch))


class _Taken:
    """Ids of events this worker process took along from messages behind their own (the
    newest 100,000): such a message is done without asking the database. Were the
    process to die meanwhile, its claims are found like any dead worker's."""

    def __init__(self, keep: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._order: collections.deque[int] = collections.deque()
        self._ids: set[int] = set()
        self._keep = keep

    def add(self, ids: list[int]) -> None:
        with self._lock:
            self._order.extend(ids)
            self._ids.update(ids)
            while len(self._order) > self._keep:
                self._ids.discard(self._order.popleft())

    def covers(self, ids: list[int]) -> bool:
        with self._lock:
            return bool(ids) and all(i in self._ids for i in ids)


class _WorkerHooks(dramatiq.Middleware):
    """The mode's part in a worker process's life (one per broker).

    At boot: the OpenSearch client's per-request INFO lines off (unless the app set
    that logger's level); with ``freeze_gc``, ``gc.freeze()``, so that the cycle
    collector's full collections no longer walk everything the worker imported (see
    docs/performance.md).
    At a graceful shutdown: record what was made visible before the process exits
    (Dramatiq's forked worker processes end without running atexit handlers)."""

    def __init__(self) -> None:
        self.freeze_gc = False
        self.modes: list[DramatiqMode] = []

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        # The dramatiq command logs at INFO: opensearch-py would log every request (a
        # line per bulk and refresh, 6% of a busy worker's time). Left alone when the
        # application set that logger's level itself.
        client_log = logging.getLogger("opensearch")
        if client_log.level == logging.NOTSET:
            client_log.setLevel(logging.WARNING)
        for mode in self.modes:
            mode.recover_dead_workers()
        if self.freeze_gc:
            gc.collect()  # garbage made while booting is freed, not frozen for good
            gc.freeze()

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if not flush_confirmations(30.0):
            log.warning("scrypath_sa: some visible writes were not recorded before "
                        "shutdown; their claims will expire and they will be written again")


class DramatiqMode(Mode):
    """Enqueue event ids on ``broker``; a Dramatiq worker processes them.

    ``chunk_size`` ids go in one message. A retryable failure is retried by Dramatiq's
    own Retries middleware at the events' ``next_attempt_at`` (the configured backoff);
    after ``max_retries`` the events still ``retrying`` become ``discarded`` with the
    reason. Permanent failures are discarded at once and burn no retry.

    By default the committing thread sends the message, so its outcome can say
    ``enqueued``; the rows follow a moment later (a background thread records
    ``enqueued`` in batches, never before the send; until then a row reads
    ``requested``, which under-promises). With ``background=True`` the send moves to
    that thread too: the commit returns sooner and its outcome says ``requested``
    (recorded, nothing sent yet), which is all that is known then; the ids of commits
    that arrive within ``linger`` seconds of each other then share a message.

    ``collect``: a worker thread waits until a message is this many seconds old before
    it claims, and then takes along the due events of the messages behind it (one claim,
    one read, one request for a stream of small commits; those messages then find their
    events taken and cost no database work). On PostgreSQL a small commit's message is a
    doorbell: for a window after the broker took it, the small commits of this process
    send no message of their own (see :meth:`_rides_along`). The window is
    ``collect / 2``; while commits keep riding (a stream) each doorbell's is twice the
    last one's, up to ``collect * 4``: fewer, larger claims and bulk requests. It adds at
    most ``collect`` to a lone commit's time until visible, ``collect * 4`` in a stream.

    ``freeze_gc=True`` calls ``gc.freeze()`` in each worker process once it has booted
    (everything imported by then is left out of the cycle collector's walks; measured in
    docs/performance.md). It affects the whole worker process, so it is yours to turn on.
    """

    name = "dramatiq"

    def __init__(self, broker: Broker, *, queue_name: str = "scrypath_sa",
                 actor_name: str = "scrypath_sa_process", chunk_size: int = 500,
                 max_retries: int = 8, background: bool = False,
                 linger: float = 0.025, collect: float = 0.1,
                 freeze_gc: bool = False) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.chunk_size = chunk_size
        self.background = background
        # With background sends the commit knows only that its events are recorded.
        self.promise = frozenset({State.REQUESTED if background else State.ENQUEUED})
        self.linger = linger
        self.collect = collect
        self._taken = _Taken()
        self._bell_lock = threading.Lock()
        self._bell_until = 0.0  # monotonic: small commits ride the last doorbell until then
        self._bell_window = 0.0  # that doorbell's window
        self._bell_riders = 0  # commits that rode on it
        self._config: Config | None = None
        self._relay = _Relay(self)
        hooks = next((m for m in broker.middleware if isinstance(m, _WorkerHooks)), None)
        if hooks is None:
            hooks = _WorkerHooks()
            broker.add_middleware(hooks)
        hooks.freeze_gc = hooks.freeze_gc or freeze_gc
        hooks.modes.append(self)
        self.exhausted_actor: dramatiq.Actor[Any, Any] = dramatiq.Actor(
            self._retries_exhausted, broker=broker, actor_name=f"{actor_name}_exhausted",
            queue_name=queue_name, priority=0, options={"max_retries": 3},
        )
        self.actor: dramatiq.Actor[Any, Any] = dramatiq.Actor(
            self._work, broker=broker, actor_name=actor_name, queue_name=queue_name,
            priority=0,
            options={"max_retries": max_retries, "throws": (NotConfiguredError,),
                     "on_retry_exhausted": self.exhausted_actor.actor_name},
        )

        # Distributed rebuilds: one message per range, retried with Dramatiq's backoff
        # (a range resumes from its checkpoint).
        self.task_actor: dramatiq.Actor[Any, Any] = dramatiq.Actor(
            self._run_task, broker=broker, actor_name=f"{actor_name}_task",
            queue_name=queue_name, priority=10,
            options={"max_retries": 20, "throws": (NotConfiguredError,),
                     "time_limit": 24 * 3600 * 1000},
        )

    def attach(self, config: Config) -> None:
        self._config = config

    def _doorbell(self, ids: list[int]) -> bool:
        """Whether a message of ``ids`` is a doorbell (or ``ids`` may ride on one): a
        small commit, and a worker that can claim due events (PostgreSQL)."""
        return (0 < len(ids) < self.chunk_size and self._config is not None
                and self._config.bind.dialect.name == "postgresql")

    def send_task(self, kind: str, args: dict[str, Any]) -> None:
        self.task_actor.send(kind, args)

    def _run_task(self, kind: str, args: dict[str, Any]) -> None:
        run_task(self.config, kind, args)

    @property
    def config(self) -> Config:
        if self._config is None:
            raise NotConfiguredError(
                "this DramatiqMode is not installed: pass it to scrypath_sa.configure(..., "
                "modes={'dramatiq': mode}) in the worker's module too")
        return self._config

    # ------------------------------------------------------------- committing side

    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        """Send the ids in chunks. A broker that refuses or cannot be reached leaves the
        events ``requested`` (the outcome says so); ``scrypath_sa.sweep()`` sends them
        later."""
        engine = engine or config.bind
        ids = list(event_ids)
        outcome = Outcome(mode=self.name, event_ids=ids)
        if not self.background and self._rides_along(ids):
            outcome.states[State.ENQUEUED.value] += len(ids)
            return outcome
        for start in range(0, len(ids), self.chunk_size):
            chunk = ids[start:start + self.chunk_size]
            if self.background:
                self._relay.put((engine, chunk, True))
                outcome.states[State.REQUESTED.value] += len(chunk)
                continue
            error = self.send(chunk)
            if error is not None:
                outcome.error = error
                outcome.states[State.REQUESTED.value] += len(ids) - start
                break
            self._relay.put((engine, chunk, False))
            outcome.states[State.ENQUEUED.value] += len(chunk)
        return outcome

    def dispatch_unnamed(self, config: Config, count: int,
                         engine: Engine | None = None) -> Outcome:
        """Events database triggers recorded in a commit (ids unknown): they ride on a
        doorbell this process sent less than its window ago, or ring one (a message
        without ids), whose worker claims every due event of the mode."""
        outcome = Outcome(mode=self.name, event_ids=[])
        if not self._ride(time.monotonic()):
            outcome.error = self.send([])
        state = State.REQUESTED if outcome.error or self.background else State.ENQUEUED
        outcome.states[state.value] += count
        return outcome

    def _rides_along(self, ids: list[int]) -> bool:
        """Whether the events of a small commit are covered by a doorbell this process
        sent less than its window ago (see :meth:`_window`), so that they need no
        message of their own.

        A doorbell is a message of a small commit on PostgreSQL; it carries that window.
        The worker that runs it first waits as long (from when it starts, so no clock is
        compared across machines), then claims every due event of the mode, oldest first
        (and rings again when there were more than a batch). These events were committed
        before that wait began, so that claim finds them: their outcome can say
        ``enqueued`` honestly.
        Their rows read ``requested`` until the claim (no ``enqueued`` mark: an UPDATE
        holding their rows could make the claim skip them), which under-promises.
        """
        if not self._doorbell(ids):
            return False
        return self._ride(time.monotonic())

    def _ride(self, now: float) -> bool:
        with self._bell_lock:
            if now < self._bell_until:
                self._bell_riders += 1
                return True
            return False

    def _window(self, now: float) -> float:
        """How long commits may ride on a doorbell sent at ``now``: ``collect / 2``;
        twice the last doorbell's window while a stream goes on (commits rode on it and
        this one follows within a window of its end), up to ``collect * 4``."""
        with self._bell_lock:
            if self._bell_riders and now < self._bell_until + self._bell_window:
                return min(2 * self._bell_window, STREAM_WINDOWS * self.collect)
            return self.collect / 2

    def _rang(self, since: float, window: float) -> None:
        """A doorbell was accepted by the broker; it was sent no sooner than ``since``."""
        with self._bell_lock:
            if since + window > self._bell_until:
                self._bell_until, self._bell_window = since + window, window
                self._bell_riders = 0

    def send(self, ids: list[int]) -> str | None:
        """Hand ``ids`` to the broker; the redacted reason when it did not take them. A
        small message on PostgreSQL is a doorbell (see :meth:`_rides_along`), and so is
        one without ids (:meth:`dispatch_unnamed`)."""
        # A doorbell carries the time commits may ride on it: its worker waits that long.
        began = time.monotonic()
        bell = self._window(began) if not ids or self._doorbell(ids) else 0.0
        try:
            # The committing request's trace context rides along: the worker's spans join it.
            self.actor.send(ids, time.time(), telemetry.inject(), bell)
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves them requested
            error = redact(f"broker did not accept the message: {type(exc).__name__}: {exc}")
            log.warning("scrypath_sa: %d committed events stay requested: %s", len(ids), error)
            return error
        if bell:
            self._rang(began, bell)
        return None

    def check(self) -> str | None:
        """Ask the broker something cheap: a Redis broker's PING, a RabbitMQ broker's
        queue counts (which also declares the queue). Other brokers are not asked."""
        try:
            client = getattr(self.broker, "client", None)
            counts = getattr(self.broker, "get_queue_message_counts", None)
            if client is not None and callable(getattr(client, "ping", None)):
                client.ping()
            elif callable(counts):
                counts(self.queue_name)
        except Exception as exc:  # noqa: BLE001 - any failure means it cannot take work
            return redact(f"broker unreachable: {type(exc).__name__}: {exc}")
        return None

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every send and ``enqueued`` mark queued so far is done; False on
        timeout."""
        return self._relay.flush(timeout)

    # ------------------------------------------------------------------ worker side

    def recover_dead_workers(self) -> list[Outcome]:
        """At a worker's boot: the work of workers that died on this host (killed, or
        stopped mid-batch) is sent again, with every ``enqueued`` event when there was
        any (see :func:`~scrypath_sa.modes.dispatch.push_due`). Never raises."""
        if self._config is None:
            return []
        try:
            outcomes = push_due(self._config, older_than=None, enqueued_older_than=None,
                                stale_after=None, limit=100_000)
        except Exception as exc:  # noqa: BLE001 - a boot must not fail over this
            log.warning("scrypath_sa: could not look for dead workers' claims at boot; "
                        "sweep() finds them: %s", redact(exc))
            return []
        if outcomes:
            log.warning("scrypath_sa: sent again %d events that workers which died on "
                        "this host left unfinished",
                        sum(len(o.event_ids) for o in outcomes))
        return outcomes


    def _work(self, event_ids: list[int], sent_at: float | None = None,
              trace: dict[str, str] | None = None, bell: float = 0.0) -> None:
        with telemetry.span("scrypath_sa.work", context=telemetry.extract(trace),
                            events=len(event_ids)):
            self._work_on(event_ids, sent_at, bell)

    def _work_on(self, event_ids: list[int], sent_at: float | None, bell: float) -> None:
        # A message smaller than a batch waits until it is `collect` old, then takes
        # along the events of the messages behind it (one claim, one read, one request
        # for many small commits); those messages find their events taken by this
        # process and are done without a statement. A doorbell (or a ring again, with no
        # ids) always claims; a doorbell first waits its window from now whatever its
        # age: the commits that rode along on it count on a claim that late (its own
        # events being taken already says nothing of theirs).
        room = self.config.batch_size - len(event_ids)
        doorbell = bell > 0 or not event_ids
        if doorbell:
            time.sleep(bell)
        else:
            if self._taken.covers(event_ids):
                return
            if room > 0 and sent_at is not None:
                time.sleep(max(0.0, min(sent_at + self.collect - time.time(), self.collect)))
            if self._taken.covers(event_ids):
                return
        outcome = processor.process(self.config, event_ids, mode=self.name,
                                    visibility=Visibility.DEFERRED, worker=worker_id(),
                                    take_along=room)
        self._taken.add(outcome.extra)
        if doorbell and room > 0 and len(outcome.extra) >= room:
            self._ring_again()
        retrying = [f.event_id for f in outcome.failures if f.state == State.RETRYING.value]
        delay = 0
        if retrying:
            with self.config.bind.connect() as conn:
                when = outbox.next_attempt_of(conn, retrying)
            delay = max(0, int(((when - utcnow()).total_seconds() if when else 0.0) * 1000))
        taken = set(outcome.extra)
        theirs = [i for i in retrying if i in taken]
        if theirs:  # taken along: their retry is a message of their own
            try:
                self.actor.send_with_options(args=(theirs,), delay=delay)
            except Exception as exc:  # noqa: BLE001 - they stay retrying; sweep sends them
                log.warning("scrypath_sa: %d retrying events wait for sweep: %s",
                            len(theirs), redact(exc))
        if outcome.locked:
            raise dramatiq.Retry(f"{len(outcome.locked)} events were locked by another "
                                 "transaction; delivering again", delay=500)
        mine = len(retrying) - len(theirs)
        if mine:
            raise dramatiq.Retry(
                f"{mine} events are retrying; next attempt in {delay / 1000:.1f}s", delay=delay)

    def _ring_again(self) -> None:
        """A doorbell's claim was full: more due events may wait, some perhaps riding on
        it; a new doorbell claims them (or ``sweep`` does, if the broker refuses)."""
        try:
            self.actor.send([], time.time(), None, 0.0)
        except Exception as exc:  # noqa: BLE001 - sweep sends the requested ones later
            log.warning("scrypath_sa: could not ring again for more due events; sweep "
                        "sends them: %s", redact(exc))

    def _retries_exhausted(self, message: dict[str, Any], info: dict[str, Any]) -> None:
        ids = list(message.get("args", [[]])[0])
        with self.config.bind.begin() as conn:
            outbox.discard_exhausted(
                conn, ids, f"Dramatiq gave up after {info.get('retries')} retries; last error: ")
