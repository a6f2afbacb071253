"""Sync modes. Each module holds one mode; :data:`BUILTIN` maps names to classes."""

from __future__ import annotations

from scrypath_sa.modes.base import Mode
from scrypath_sa.modes.inline import InlineMode
from scrypath_sa.modes.manual import ManualMode

KNOWN = ("inline", "manual", "dramatiq")
BUILTIN: dict[str, type[Mode]] = {"inline": InlineMode, "manual": ManualMode}

__all__ = ["BUILTIN", "KNOWN", "InlineMode", "ManualMode", "Mode"]
