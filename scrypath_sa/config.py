"""The installed configuration, as data: what :func:`scrypath_sa.configure` built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from scrypath_sa.backends.base import Backend
from scrypath_sa.errors import ConfigurationError
from scrypath_sa.schema import State

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.outcome import Outcome


class SyncMode(Protocol):
    """What a configuration holds of a mode. Subclass
    :class:`scrypath_sa.modes.Mode` to write one."""

    @property
    def name(self) -> str: ...

    @property
    def promise(self) -> frozenset[State]: ...

    @property
    def merges(self) -> bool: ...

    def attach(self, config: Config) -> None: ...

    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome: ...

    def dispatch_group(self, config: Config, groups: Sequence[Sequence[int]],
                       engine: Engine | None = None) -> list[Outcome]: ...

    def dispatch_unnamed(self, config: Config, count: int,
                         engine: Engine | None = None) -> Outcome: ...

    def kept_promise(self, outcome: Outcome) -> bool: ...

    def check(self) -> str | None: ...

    def send_task(self, kind: str, args: dict[str, Any]) -> None: ...


@dataclass
class Config:
    """What :func:`scrypath_sa.configure` installed on one session target.

    ``bind`` is the engine that work outside a session (workers, the operator API) runs
    on; a commit's own events are processed on the engine its session flushed to."""

    target: Any
    backend: Backend
    bind: Engine
    default_mode: str = "inline"
    modes: dict[str, SyncMode] = field(default_factory=dict)
    batch_size: int = 500
    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    strict: bool = False
    inline_timeout: float | None = 30.0
    enabled: bool = True  # False: nothing is recorded or written (see disabled())

    def mode(self, name: str) -> SyncMode:
        try:
            return self.modes[name]
        except KeyError:
            hint = (" (install the dramatiq extra and pass modes={'dramatiq': DramatiqMode(broker)}"
                    " to configure())"
                    if name == "dramatiq" else "")
            raise ConfigurationError(
                f"sync mode {name!r} is not configured; available: {sorted(self.modes)}{hint}"
            ) from None
