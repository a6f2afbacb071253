"""What one commit's sync work came to, as far as is known when the call returns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Failure:
    event_id: int
    index: str
    document_id: str
    state: str  # retrying or discarded
    error_kind: str | None
    error: str | None


@dataclass
class Outcome:
    """The result of dispatching a set of events through a mode.

    ``states`` counts the events per lifecycle state *as this call left them*;
    ``state`` is the single state when all agree, else ``"mixed"``. ``documents`` is the
    number of distinct documents written or deleted. ``skipped`` ids were not claimed
    (unknown, rolled back, already done, or held by another worker); ``locked`` ones
    among them are still waiting for a claim (their row was locked by someone else)
    and need another delivery. ``extra`` ids were not asked for but taken along (a
    worker writing the events of messages behind its own); ``states`` and ``failures``
    include them. ``error`` is set when the dispatch itself failed (the events then
    stay where they were, usually ``requested``). ``unnamed`` counts the rows of
    trigger-captured models (``__search_capture__ = "trigger"``) the commit wrote, whose
    events the triggers recorded (an UPDATE a trigger finds unchanged records none):
    included in ``states``, not in ``event_ids`` (their ids are the database's).

    ``event_states`` (each event's state as this call left it) and ``event_documents``
    (the document each written event went in: one object per document) let :meth:`part`
    tell one caller's share of a run made for several.
    """

    mode: str
    event_ids: list[int]
    states: Counter[str] = field(default_factory=Counter)
    documents: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    locked: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    error: str | None = None
    unnamed: int = 0
    event_states: dict[int, str] = field(default_factory=dict, repr=False, compare=False)
    event_documents: Mapping[int, object] = field(default_factory=dict, repr=False,
                                                  compare=False)

    def part(self, event_ids: Sequence[int]) -> Outcome:
        """The outcome of ``event_ids`` alone, out of this one (a run made for several
        callers at once): their states, failures and documents; the run's ``error``."""
        ids = list(dict.fromkeys(event_ids))
        mine = set(ids)
        states = {i: self.event_states[i] for i in ids if i in self.event_states}
        documents = {i: self.event_documents[i] for i in ids if i in self.event_documents}
        return Outcome(
            mode=self.mode, event_ids=ids, states=Counter(states.values()),
            documents=len({id(document) for document in documents.values()}),
            failures=[f for f in self.failures if f.event_id in mine],
            skipped=[i for i in self.skipped if i in mine],
            locked=[i for i in self.locked if i in mine],
            error=self.error, event_states=states, event_documents=documents)

    @property
    def state(self) -> str:
        if not self.states:
            return "requested" if self.error else "nothing_to_do"
        if len(self.states) == 1:
            return next(iter(self.states))
        return "mixed"

    @property
    def ok(self) -> bool:
        """True when no event of this dispatch failed or was left behind."""
        return self.error is None and not self.failures

    def describe(self) -> str:
        parts = [f"mode={self.mode}", f"state={self.state}"]
        if self.states:
            parts.append(", ".join(f"{n} {s}" for s, n in sorted(self.states.items())))
        if self.unnamed:
            parts.append(f"{self.unnamed} recorded by triggers (ids not known here)")
        if self.error:
            parts.append(f"dispatch error: {self.error}")
        for failure in self.failures[:3]:
            parts.append(f"event {failure.event_id} ({failure.index}/{failure.document_id}) "
                         f"{failure.state}: {failure.error}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "state": self.state,
            "states": dict(self.states),
            "event_ids": list(self.event_ids),
            "documents": self.documents,
            "failures": [vars(f) for f in self.failures],
            "skipped": list(self.skipped),
            "locked": list(self.locked),
            "extra": list(self.extra),
            "error": self.error,
            "unnamed": self.unnamed,
        }
