"""The declarative :class:`Searchable` mixin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.orm.interfaces import ORMOption

from scrypath_sa import documents, registry
from scrypath_sa.registry import library_default


class Searchable:
    """Mark a mapped class as indexed in OpenSearch.

    Class options (all optional):

    ``__search_index__``
        The alias users search (default: the table name). The library keeps it pointed
        at a physical index built from the contract.
    ``__search_contract__``
        ``{"mappings": {...}, "settings": {...}}`` for that index.
    ``__search_fields__``
        The attributes the document is built from, e.g. ``["title", "body"]``: the
        default document holds just these columns, ``search()`` matches text across
        them, and an UPDATE that changes none of them records no event. With your own
        ``search_document()``, list what it reads (``"author.name"`` through a
        relationship) for the same skip. Default: every column.

    ``__search_capture__``
        How changes are recorded: ``"session"`` (default: the ORM session records
        each flushed change, on every database) or ``"trigger"`` (PostgreSQL: a
        trigger on the table records every write, the session's and any other, for
        the ``dramatiq`` mode; default document ids only; docs/models.md).

    Methods to override:

    ``search_document(self) -> dict``
        The document for this row (default: mapped columns made JSON-safe).
    ``search_document_id(self) -> str``
        The document id (default: the primary key; ``"a:b"`` for composite keys). It
        must not change for the life of the row.
    ``should_index(self) -> bool``
        When it returns False the document is deleted from the index.
    ``search_load_options(cls)`` (classmethod)
        Loader options (e.g. ``selectinload(Model.tags)``) used when rows are loaded to
        build documents, so building a batch is not N+1.

    Options are checked when the class is defined; errors name the model and option.
    """

    __search_index__: ClassVar[str]
    __search_contract__: ClassVar[dict[str, Any] | None] = None
    __search_fields__: ClassVar[Sequence[str] | None] = None
    __search_capture__: ClassVar[str] = "session"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Check what can be checked before SQLAlchemy maps the class (further up the
        # chain), so a bad option leaves nothing half-defined behind. The class is
        # registered when it is mapped (see _registered_when_mapped), however that is.
        registry.check_options(cls)
        try:
            super().__init_subclass__(**kwargs)
        except BaseException:  # mapping failed: nothing of the class stays registered
            registry.unregister(cls)
            raise

    @library_default
    def search_document(self) -> dict[str, Any]:
        return documents.column_document(self)

    @library_default
    def search_document_id(self) -> str:
        return documents.pk_document_id(documents.primary_key(self))

    @library_default
    def should_index(self) -> bool:
        return True

    @classmethod
    @library_default
    def search_load_options(cls) -> Sequence[ORMOption]:
        return ()


def _registered_when_mapped(mapper: Any, cls: type) -> None:
    """Every mapped Searchable class registers as SQLAlchemy maps it: declaratively
    (also with a ``__tablename__`` that Flask-SQLAlchemy generates or a
    ``declared_attr`` computes), from ``__table__``, or imperatively. A subclass of a
    Searchable model (single- or joined-table inheritance) shares its parent's index."""
    registry.register_mapped(cls, mapper.local_table)


def _fields_checked(mapper: Any, cls: type) -> None:
    try:
        registry.check_fields(cls, mapper)
    except Exception:  # refused: the class stays out of the registry
        registry.unregister(cls)
        raise


event.listen(Searchable, "instrument_class", _registered_when_mapped, propagate=True)
event.listen(Searchable, "mapper_configured", _fields_checked, propagate=True)
