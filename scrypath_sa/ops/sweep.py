"""sweep() and confirm(): push work that fell behind; close the loop on manual mode."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scrypath_sa import outbox
from scrypath_sa.config import Config
from scrypath_sa.install import resolve_config
from scrypath_sa.modes.dispatch import push_due, redispatch
from scrypath_sa.modes.manual import ConfirmReport, ManualMode
from scrypath_sa.modes.manual import confirm as _confirm
from scrypath_sa.ops.distributed import resend_stalled
from scrypath_sa.outcome import Outcome
from scrypath_sa.schema import State, utcnow


@dataclass
class SweepReport:
    """What :func:`sweep` redispatched, per mode, and the stale accepted writes it
    confirmed (``confirmed``) or could not check (``unverified``: the backend failed)."""

    outcomes: list[Outcome] = field(default_factory=list)
    confirmed: int = 0
    unverified: int = 0
    rebuild_tasks: int = 0  # ranges (and finishes) of distributed rebuilds sent again

    @property
    def dispatched(self) -> int:
        return sum(len(o.event_ids) for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"dispatched": self.dispatched, "confirmed": self.confirmed,
                "unverified": self.unverified, "rebuild_tasks": self.rebuild_tasks,
                "outcomes": [o.to_dict() for o in self.outcomes]}


def sweep(config: Config | None = None, *, older_than: dt.timedelta = dt.timedelta(seconds=30),
          enqueued_older_than: dt.timedelta = dt.timedelta(minutes=15),
          stale_after: dt.timedelta = dt.timedelta(minutes=15),
          limit: int = 10_000) -> SweepReport:
    """Push work that fell behind, each event through its recorded mode (or the default):

    * ``processing`` claims older than ``stale_after`` (a worker died or hangs), and
      claims whose worker process is gone from this host at any age, become
      ``retrying``, due now; when any did, every ``enqueued`` event is sent again too
      (the dead worker's prefetched messages cannot be seen; a duplicate is harmless);
    * ``requested`` events older than ``older_than`` and ``retrying`` events due for
      longer than ``older_than`` are redispatched;
    * ``enqueued`` events older than ``enqueued_older_than`` (a lost message) too;
    * ``backend_accepted`` events of the modes that confirm by themselves (all but
      ``manual``, whose caller confirms), accepted more than ``older_than`` ago (their
      refresh failed): confirmed as :func:`confirm` does, and those not found in the
      index at their version are written again;
    * the ranges of distributed rebuilds whose worker died on this host (or was not
      heard from for five minutes), and the finish of runs whose ranges are all done.

    Safe on a schedule and from several processes at once: the processor claims events
    before working on them, so each is worked by one caller at a time.
    """
    config = resolve_config(config)
    report = SweepReport(push_due(config, older_than=older_than,
                                  enqueued_older_than=enqueued_older_than,
                                  stale_after=stale_after, limit=limit))
    with config.bind.connect() as conn:
        stale = [(event_id, mode) for event_id, mode
                 in outbox.accepted_before(conn, utcnow() - older_than, limit)
                 if not isinstance(config.modes.get(mode or "", config.mode(
                     config.default_mode)), ManualMode)]
    if stale:
        checked = _confirm(config, [event_id for event_id, _ in stale], limit)
        report.confirmed = len(checked.confirmed)
        report.unverified = sum(len(u["event_ids"]) for u in checked.unverified)
        lost = {m["event_id"] for m in checked.missing}
        with config.bind.begin() as conn:
            outbox.mark(conn, sorted(lost), State.REQUESTED,
                        only_from=[State.BACKEND_ACCEPTED])
        report.outcomes += redispatch(config, [e for e in stale if e[0] in lost])
    report.rebuild_tasks = resend_stalled(config)
    return report


def confirm(event_ids: Sequence[int] | None = None, *, config: Config | None = None,
            limit: int = 10_000) -> ConfirmReport:
    """Close the loop on ``manual`` mode: refresh, verify documents at their versions,
    and mark the verified events ``completed``; report the rest as missing, or as
    unverified when the backend could not be asked."""
    return _confirm(resolve_config(config), event_ids, limit)
