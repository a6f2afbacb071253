"""Which mode a commit uses: a ``sync_mode()`` block, then the session's choice, then the
configured default. Names are checked when they are chosen, against the built-in modes
and those of the configurations installed now."""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from scrypath_sa.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

BUILTIN_NAMES = ("inline", "manual")
"""Always available. ``dramatiq`` (and any custom mode) is known while a configuration
that has it is installed."""
SESSION_MODE_KEY = "scrypath_sa.mode"

_context_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scrypath_sa_mode", default=None)
_offered: Counter[str] = Counter()  # custom mode names -> installed configurations naming them


def offer(names: Iterable[str]) -> None:
    """An installed configuration offers these mode names."""
    _offered.update(n for n in names if n not in BUILTIN_NAMES)


def withdraw(names: Iterable[str]) -> None:
    """A configuration that offered these names was removed."""
    _offered.subtract(n for n in names if n not in BUILTIN_NAMES)
    for name in [n for n, count in _offered.items() if count <= 0]:
        del _offered[name]


def known_names() -> list[str]:
    return sorted({*BUILTIN_NAMES, *_offered})


def check_mode_name(name: str) -> str:
    if name not in BUILTIN_NAMES and name not in _offered:
        raise ConfigurationError(f"unknown sync mode {name!r}: choose one of {known_names()}")
    return name


@contextlib.contextmanager
def sync_mode(name: str) -> Iterator[None]:
    """Use mode ``name`` for commits inside the block (nests; always restores)."""
    token = _context_mode.set(check_mode_name(name))
    try:
        yield
    finally:
        _context_mode.reset(token)


def set_session_mode(session: Session, name: str | None) -> None:
    """Choose the mode for one session's commits (None: back to the default)."""
    if name is None:
        session.info.pop(SESSION_MODE_KEY, None)
    else:
        session.info[SESSION_MODE_KEY] = check_mode_name(name)


def resolve_mode(default: str, session: Session) -> str:
    """A ``sync_mode()`` block first, then the session's choice, then ``default``."""
    return _context_mode.get() or session.info.get(SESSION_MODE_KEY) or default
