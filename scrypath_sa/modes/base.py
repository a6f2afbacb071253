"""The Mode contract: a mode decides *when and where* the processor runs, never *what* it
does, and declares what a successful dispatch promises."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from scrypath_sa.errors import ConfigurationError
from scrypath_sa.outcome import Outcome
from scrypath_sa.schema import State

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scrypath_sa.config import Config


class Mode(abc.ABC):
    """Hands committed events to the processor.

    ``dispatch`` is called after the data's transaction committed, outside it. It must
    not raise for sync failures: they are recorded on the events and returned in the
    :class:`~scrypath_sa.outcome.Outcome`.

    ``promise`` is the set of states a dispatch that went as planned leaves its events
    in; ``configure(..., strict=True)`` raises after a commit whose outcome is anything
    else. A custom mode that does not say promises ``completed``.
    """

    name: ClassVar[str]
    promise: frozenset[State] = frozenset({State.COMPLETED})
    merges: ClassVar[bool] = False
    """True when :meth:`dispatch_group` serves several callers' ids with one dispatch
    (a mode whose outcome tells each event's state, as the processor's does)."""

    def attach(self, config: Config) -> None:  # noqa: B027 - optional hook
        """Called by ``configure()`` with the configuration this mode serves."""

    @abc.abstractmethod
    def dispatch(self, config: Config, event_ids: Sequence[int],
                 engine: Engine | None = None) -> Outcome:
        """Run or hand over the work for ``event_ids``."""

    def dispatch_group(self, config: Config, groups: Sequence[Sequence[int]],
                       engine: Engine | None = None) -> list[Outcome]:
        """Run or hand over the work of several callers' ``groups`` of ids at once: one
        outcome per group. A mode that ``merges`` makes one dispatch of them all (one
        claim, one bulk request, one refresh) and tells each group its part."""
        if self.merges and len(groups) > 1:
            whole = self.dispatch(config, [i for ids in groups for i in ids], engine)
            return [whole.part(ids) for ids in groups]
        return [self.dispatch(config, ids, engine) for ids in groups]

    def dispatch_unnamed(self, config: Config, count: int,
                         engine: Engine | None = None) -> Outcome:
        """Wake this mode for ``count`` events that database triggers recorded (ids
        unknown). Only a mode that claims due events by itself can: this one cannot,
        so they stay ``requested`` for ``sweep()``, and the outcome says so."""
        outcome = Outcome(self.name, [], error=(
            f"the {self.name} mode cannot take events recorded by triggers; they stay "
            "requested for sweep()"))
        outcome.states[State.REQUESTED.value] += count
        return outcome

    def send_task(self, kind: str, args: dict[str, Any]) -> None:
        """Have a worker run the task ``kind`` (see :func:`task`) with ``args``; a mode
        that runs nothing elsewhere refuses."""
        raise ConfigurationError(
            f"the {self.name} mode runs nothing on workers: distributed work needs a mode "
            "that does (pass mode='dramatiq', configured with a DramatiqMode)")

    def check(self) -> str | None:
        """Why this mode could not hand work over right now (its broker cannot be
        reached), redacted; None when it can, or when there is nothing to check."""
        return None

    def kept_promise(self, outcome: Outcome) -> bool:
        """True when ``outcome`` is what this mode promises: no failure, no dispatch
        error, and every event in a promised state."""
        if outcome.error or outcome.failures:
            return False
        return all(State(state) in self.promise for state in outcome.states)


TaskHandler = Callable[["Config", dict[str, Any]], None]
_tasks: dict[str, TaskHandler] = {}


def task(kind: str) -> Callable[[TaskHandler], TaskHandler]:
    """Register the handler of the task ``kind`` that modes run on workers (a range of
    a distributed rebuild): the modes carry tasks without knowing what they do."""
    def register(handler: TaskHandler) -> TaskHandler:
        _tasks[kind] = handler
        return handler
    return register


def run_task(config: Config, kind: str, args: dict[str, Any]) -> None:
    """Run the registered task ``kind`` (on a worker)."""
    handler = _tasks.get(kind)
    if handler is None:
        raise ConfigurationError(f"no task {kind!r} is known in this process: import "
                                 "scrypath_sa in the worker's module")
    handler(config, args)
