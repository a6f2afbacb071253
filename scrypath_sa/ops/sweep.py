"""sweep() and confirm(): push work that fell behind; close the loop on manual mode."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scrypath_sa.config import Config
from scrypath_sa.install import resolve_config
from scrypath_sa.modes.dispatch import push_due
from scrypath_sa.modes.manual import ConfirmReport
from scrypath_sa.modes.manual import confirm as _confirm
from scrypath_sa.outcome import Outcome


@dataclass
class SweepReport:
    """What :func:`sweep` redispatched, per mode."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def dispatched(self) -> int:
        return sum(len(o.event_ids) for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"dispatched": self.dispatched, "outcomes": [o.to_dict() for o in self.outcomes]}


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
    * ``enqueued`` events older than ``enqueued_older_than`` (a lost message) too.

    Safe on a schedule and from several processes at once: the processor claims events
    before working on them, so each is worked by one caller at a time.
    """
    config = resolve_config(config)
    return SweepReport(push_due(config, older_than=older_than,
                                enqueued_older_than=enqueued_older_than,
                                stale_after=stale_after, limit=limit))


def confirm(event_ids: Sequence[int] | None = None, *, config: Config | None = None,
            limit: int = 10_000) -> ConfirmReport:
    """Close the loop on ``manual`` mode: refresh, verify documents at their versions,
    and mark the verified events ``completed``; report the rest as missing, or as
    unverified when the backend could not be asked."""
    return _confirm(resolve_config(config), event_ids, limit)
