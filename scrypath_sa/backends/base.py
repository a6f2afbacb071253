"""The backend contract: what the processor and the operator API need from a search engine."""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from scrypath_sa.errors import BackendError, ConfigurationError
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


class ItemResult(NamedTuple):
    """What the backend did with one write (for a ``CONFLICT``, the version the index
    holds when the backend says)."""

    status: ItemStatus
    error_kind: str | None = None
    error: str | None = None
    stored_version: int | None = None


OK = ItemResult(ItemStatus.OK)
"""The result of almost every write (one shared value)."""


@dataclass(frozen=True)
class SearchHits:
    """Matching document ids in rank order, and how many match in all."""

    total: int
    ids: list[str]


@dataclass(frozen=True)
class PhysicalIndex:
    """One physical index built for an alias (``<alias>_<suffix>``)."""

    name: str
    docs: int
    aliased: bool
    contract_hash: str | None
    created_at: str | None


@dataclass(frozen=True)
class IndexPosture:
    """Where an alias points and what contract the physical index was built for."""

    alias: str
    indices: tuple[str, ...]
    contract_hash: str | None
    is_alias: bool


@dataclass(frozen=True)
class IndexHealth:
    """The engine's health of the indices behind an alias: ``green`` (every shard
    copy assigned), ``yellow`` (a replica is not: one more lost node may lose writes),
    ``red`` (a primary is not: writes to it fail)."""

    status: str
    unassigned_shards: int
    nodes: int


class Backend(abc.ABC):
    """A search engine the library can keep in step with the database: the small core
    that sync needs. A backend that also implements :class:`IndexAdmin` serves the
    operator API (status, reconcile, backfill, reindex, prune).

    Writes use external versions (the highest ``sync_events`` id covered): a write at a
    lower version than the stored one is a conflict, reported as ``CONFLICT``, so
    out-of-order workers converge on the newest state. Every failure of the engine
    reaches the library as :class:`~scrypath_sa.errors.BackendError` (from ``bulk``: as
    RETRYABLE or PERMANENT items), never as a client library's own exception.
    """

    name: str = "backend"

    @abc.abstractmethod
    def ensure_index(self, alias: str, contract: Contract, model: str,
                     fresh: bool = False) -> None:
        """Make sure ``alias`` points at a physical index (create it from ``contract``).
        Backends may remember that they did; ``fresh`` checks again."""

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

    def search(self, index: str, query: str | dict[str, Any], *, offset: int = 0,
               limit: int = 20, fields: Sequence[str] | None = None) -> SearchHits:
        """Run ``query``: a text (matched across ``fields``, default all) or a query
        body of the backend's own language."""
        raise BackendError(f"the {self.name} backend does not support search()")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class IndexAdmin(abc.ABC):
    """What the operator API needs of a backend beyond sync: index layout, counts and
    scans."""

    @abc.abstractmethod
    def posture(self, alias: str) -> IndexPosture | None:
        """Where ``alias`` points, or None when nothing by that name exists."""

    def health(self, alias: str) -> IndexHealth | None:
        """The health of the existing indices behind ``alias``; None when the backend
        cannot tell."""
        return None

    @abc.abstractmethod
    def documents(self, alias: str, ids: Sequence[str]) -> dict[str, tuple[int, Any] | None]:
        """Each id's (version, source), or None when the document is absent."""

    @abc.abstractmethod
    def count(self, index: str) -> int:
        """Searchable documents in ``index`` (an alias or a physical index) now; call
        ``refresh`` first to count every acknowledged write."""

    @abc.abstractmethod
    def scan_ids(self, index: str, page_size: int = 1000) -> Iterator[list[tuple[str, int]]]:
        """Every (document id, version) in ``index``, a page at a time, in no order."""

    @abc.abstractmethod
    def physical_indices(self, alias: str) -> list[PhysicalIndex]:
        """The physical indices built for ``alias`` (aliased or not), oldest first."""

    @abc.abstractmethod
    def create_index(self, name: str, contract: Contract, model: str,
                     alias: str | None = None, alias_for: str | None = None) -> None:
        """Create physical index ``name`` from ``contract`` for alias ``alias_for``
        (and put it behind ``alias`` at once when given)."""

    @abc.abstractmethod
    def swap_alias(self, alias: str, new_index: str) -> list[str]:
        """Point ``alias`` at ``new_index`` alone, atomically; returns the indices it left."""

    @abc.abstractmethod
    def delete_index(self, name: str) -> None:
        """Delete physical index ``name``."""

    @abc.abstractmethod
    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        """Set ``index.refresh_interval`` (None restores the default)."""


class AdminBackend(Backend, IndexAdmin):
    """A backend with both parts (what the operator API works with)."""


def admin_of(backend: Backend) -> AdminBackend:
    """``backend`` as a backend with the operator part, or a clear error."""
    if not isinstance(backend, IndexAdmin):
        raise ConfigurationError(
            f"the {backend.name} backend ({type(backend).__name__}) does not implement "
            "scrypath_sa.backends.IndexAdmin, which the operator API needs")
    return backend  # type: ignore[return-value]
