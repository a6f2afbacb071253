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
    """Process in the committing thread until visible: success is ``completed``. The
    commit waits at most about ``configure(inline_timeout=...)`` seconds (plus one
    request in flight): what is not written by then is ``retrying``."""

    name = "inline"
    promise = frozenset({State.COMPLETED})
    merges = True

    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        return processor.process(config, event_ids, mode=self.name,
                                 visibility=Visibility.VISIBLE, bind=engine,
                                 timeout=config.inline_timeout)
