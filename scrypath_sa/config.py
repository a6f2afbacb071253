"""The installed configuration, and how a commit picks its mode."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scrypath_sa.backends.base import Backend
from scrypath_sa.errors import ConfigurationError, NotConfiguredError
from scrypath_sa.modes import BUILTIN, KNOWN, Mode

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

SESSION_MODE_KEY = "scrypath_sa.mode"

_context_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scrypath_sa_mode", default=None
)


@dataclass
class Config:
    """What :func:`scrypath_sa.configure` installed on one session target."""

    target: Any
    backend: Backend
    default_mode: str = "inline"
    bind: Engine | None = None
    modes: dict[str, Mode] = field(default_factory=dict)
    batch_size: int = 500
    max_attempts: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    strict: bool = False

    def require_bind(self) -> Engine:
        if self.bind is None:
            raise NotConfiguredError(
                "no database engine is known yet: pass bind=engine to scrypath_sa.configure() "
                "(it is learned from the first flush otherwise)"
            )
        return self.bind

    def mode(self, name: str) -> Mode:
        try:
            return self.modes[name]
        except KeyError:
            hint = (" (install the dramatiq extra and pass dramatiq=... to configure())"
                    if name == "dramatiq" else "")
            raise ConfigurationError(
                f"sync mode {name!r} is not configured; available: {sorted(self.modes)}{hint}"
            ) from None


_registered: set[str] = set(KNOWN)


def check_mode_name(name: str) -> str:
    if name not in _registered:
        raise ConfigurationError(
            f"unknown sync mode {name!r}: choose one of {sorted(_registered)}")
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


def resolve_mode(config: Config, session: Session) -> str:
    """Context manager first, then the session's choice, then the configured default."""
    return _context_mode.get() or session.info.get(SESSION_MODE_KEY) or config.default_mode


def build_modes(extra: Mapping[str, Mode] | None) -> dict[str, Mode]:
    modes: dict[str, Mode] = {name: cls() for name, cls in BUILTIN.items()}
    for name, mode in (extra or {}).items():
        if not isinstance(mode, Mode):
            raise ConfigurationError(f"modes[{name!r}] must be a scrypath_sa Mode, got {mode!r}")
        _registered.add(name)
        modes[name] = mode
    return modes
