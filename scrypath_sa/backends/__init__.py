"""Search backends. ``OpenSearchBackend`` needs the ``opensearch`` extra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrypath_sa.backends.base import (
    AdminBackend,
    Backend,
    BulkOp,
    IndexAdmin,
    IndexHealth,
    IndexPosture,
    ItemResult,
    ItemStatus,
    PhysicalIndex,
    SearchHits,
)
from scrypath_sa.backends.embedded import EmbeddedBackend

if TYPE_CHECKING:
    from scrypath_sa.backends.opensearch import OpenSearchBackend

__all__ = ["AdminBackend", "Backend", "BulkOp", "EmbeddedBackend", "IndexAdmin", "IndexHealth",
           "IndexPosture", "ItemResult", "ItemStatus", "OpenSearchBackend", "PhysicalIndex",
           "SearchHits"]


def __getattr__(name: str) -> Any:
    if name == "OpenSearchBackend":
        from scrypath_sa.backends.opensearch import OpenSearchBackend

        return OpenSearchBackend
    raise AttributeError(name)
