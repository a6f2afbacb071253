"""SQL helpers for any table: transactions on an engine or a caller's connection, id and
key filters, keyset conditions, and reading large results a part at a time.

Why the filters look the way they do (array parameters, the integer-array dumper) is in
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Dialect,
    Engine,
    Integer,
    TypeDecorator,
    any_,
    bindparam,
    tuple_,
)

Bind = Engine | Connection
"""Where work runs: an engine (a transaction of its own each time) or a connection
already inside a transaction (e.g. a test wrapped in one), where each unit becomes a
savepoint."""


@contextlib.contextmanager
def begin(bind: Bind) -> Iterator[Connection]:
    """A transaction: of its own from an engine, a savepoint on a caller's connection."""
    if isinstance(bind, Connection):
        with bind.begin_nested():
            yield bind
    else:
        with bind.begin() as conn:
            yield conn


@contextlib.contextmanager
def connect(bind: Bind) -> Iterator[Connection]:
    """A connection for reads. From an engine its transaction ends with COMMIT rather
    than the pool's ROLLBACK: psycopg forgets its prepared statements on every ROLLBACK,
    and a statement planned again each time costs as much as running it."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def id_filter(conn: Connection, column: Any, ids: Sequence[Any]) -> Any:
    """``column IN ids``: one array parameter on PostgreSQL (a statement that stays the
    same whatever the count), an expanded list elsewhere."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=_array_of(column.type)))
    return column.in_(list(ids))


def key_filter(conn: Connection, columns: Sequence[Any], keys: Sequence[Sequence[Any]]) -> Any:
    """``(columns) IN keys`` for primary keys of one or several columns."""
    if len(columns) == 1:
        return id_filter(conn, columns[0], [k[0] for k in keys])
    return tuple_(*columns).in_([tuple(k) for k in keys])


def after_key(columns: Sequence[Any], last: Sequence[Any]) -> Any:
    """``(columns) > last``: the keyset condition for the page after ``last``."""
    return tuple_(*columns) > tuple(last) if len(columns) > 1 else columns[0] > last[0]


def rows(result: Any, size: int = 200) -> Iterator[Any]:
    """The rows of ``result``, fetched ``size`` at a time: one driver call per part, as
    cheap as ``.all()``, without holding every row of a large result at once."""
    for part in result.partitions(size):
        yield from part


def chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


@functools.lru_cache(maxsize=256)
def _array_of(item_type: Any) -> Any:
    """``ARRAY(item_type)``, built once per column type (building one is costly)."""
    if isinstance(item_type, Integer):  # BigInteger and SmallInteger too
        return _IntegerArray(item_type)
    return ARRAY(item_type)


try:
    from psycopg import adapters as _psycopg_adapters
    from psycopg.adapt import Dumper as _Dumper

    class IntList(list[int]):
        """A list of plain ints, dumped by psycopg as one array literal."""

    class _IntListDumper(_Dumper):
        # Unknown type: the server takes the parameter's type from the SQL's cast.
        oid = 0

        def dump(self, obj: list[int]) -> bytes:
            return ("{" + ",".join(map(str, obj)) + "}").encode()

    # Registered for this private class only: no other value is adapted differently.
    _psycopg_adapters.register_dumper(IntList, _IntListDumper)
except ImportError:  # pragma: no cover - psycopg (3) is not the only PostgreSQL driver
    IntList = None  # type: ignore[assignment,misc]


class _IntegerArray(TypeDecorator[list[int]]):
    """An array of integers (ids, integer keys) that psycopg sends as one text literal
    instead of adapting each element in Python. The SQL still reads
    ``= ANY(%(p)s::BIGINT[])``, a typed parameter, so plans do not change."""

    impl = ARRAY
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.driver != "psycopg" or IntList is None:
            return super().bind_processor(dialect)
        return _int_list


def _int_list(value: Any) -> Any:
    if value is None or not all(type(v) is int for v in value):
        return None if value is None else list(value)
    return IntList(value)
