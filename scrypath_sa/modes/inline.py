"""``inline``: the caller waits until the backend write is done and visible."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from scrypath_sa import processor
from scrypath_sa.modes.base import Mode
from scrypath_sa.schema import State
from scrypath_sa.visibility import Visibility

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config
    from scrypath_sa.outcome import Outcome


class InlineMode(Mode):
    """Process before the commit returns, until visible: success is ``completed``. A
    run takes at most about ``configure(inline_timeout=...)`` seconds (plus one request
    in flight): what is not written by then is ``retrying``. Concurrent commits share
    runs (``merges``): one that arrives while two runs are in flight waits for one of
    them first, so it can wait up to about twice that."""

    name = "inline"
    promise = frozenset({State.COMPLETED})
    merges = True

    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        return processor.process(config, event_ids, mode=self.name,
                                 visibility=Visibility.VISIBLE, bind=engine,
                                 timeout=config.inline_timeout)
