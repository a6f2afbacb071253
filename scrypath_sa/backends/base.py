"""The backend contract: what the processor and the operator API need from a search engine."""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scrypath_sa.registry import Contract


class ItemStatus(str, enum.Enum):
    OK = "ok"  # the backend accepted the write (or the delete found nothing to delete)
    CONFLICT = "conflict"  # a write at a higher version already landed: superseded, fine
    RETRYABLE = "retryable"  # connection trouble, timeouts, 429, 5xx
    PERMANENT = "permanent"  # the backend rejected this document (mapping, parsing, ...)


@dataclass(frozen=True)
class BulkOp:
    """One write: index ``document`` (or delete when it is None) at external ``version``."""

    index: str
    id: str
    version: int
    document: Mapping[str, Any] | None

    @property
    def is_delete(self) -> bool:
        return self.document is None


@dataclass(frozen=True)
class ItemResult:
    status: ItemStatus
    error_kind: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class IndexPosture:
    """Where an alias points and what contract the physical index was built for."""

    alias: str
    indices: tuple[str, ...]
    contract_hash: str | None
    is_alias: bool


class Backend(abc.ABC):
    """A search engine the library can keep in step with the database.

    Writes use external versions (the highest ``sync_events`` id covered): a write at a
    lower version than the stored one is a conflict, reported as ``CONFLICT``, so
    out-of-order workers converge on the newest state.
    """

    name: str = "backend"

    @abc.abstractmethod
    def ensure_index(self, alias: str, contract: Contract, model: str) -> None:
        """Make sure ``alias`` points at a physical index (create it from ``contract``)."""

    @abc.abstractmethod
    def bulk(self, ops: Sequence[BulkOp], *, wait_for_visibility: bool) -> list[ItemResult]:
        """Send ``ops``; one result per op, in order. Never raises for item failures; a
        failure of the whole request comes back as RETRYABLE (or PERMANENT) items."""

    @abc.abstractmethod
    def refresh(self, alias: str) -> None:
        """Make every acknowledged write to ``alias`` visible to search."""

    @abc.abstractmethod
    def versions(self, alias: str, ids: Sequence[str]) -> dict[str, int | None]:
        """The stored external version of each id (None when the document is absent)."""

    @abc.abstractmethod
    def posture(self, alias: str) -> IndexPosture | None:
        """Where ``alias`` points, or None when nothing by that name exists."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
