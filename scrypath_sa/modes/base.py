"""The Mode contract: a mode decides *when and where* the processor runs, never *what* it does."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config
    from scrypath_sa.outcome import Outcome


class Mode(abc.ABC):
    """Hands committed events to the processor.

    ``dispatch`` is called after the data's transaction committed, outside it. It must
    not raise for sync failures: they are recorded on the events and returned in the
    :class:`~scrypath_sa.outcome.Outcome`.
    """

    name: ClassVar[str]

    def attach(self, config: Config) -> None:  # noqa: B027 - optional hook
        """Called by ``configure()`` with the configuration this mode serves."""

    @abc.abstractmethod
    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        """Run or hand over the work for ``event_ids``."""
