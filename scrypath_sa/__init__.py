"""scrypath_sa: keep an OpenSearch index in step with SQLAlchemy rows.

Changed rows are recorded in a ``sync_events`` outbox in the same transaction as the
data; after commit a *mode* (inline, manual, dramatiq) decides when and where the
backend write runs. Every unit of work moves along one lifecycle and the library never
reports more than it knows.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
