"""Sync modes: each module holds one mode; ``selection`` picks a commit's mode, and
``dispatch`` hands ids to one. :data:`BUILTIN` maps the always-available names to their
classes (``dramatiq`` needs a broker, so it is built by the user)."""

from __future__ import annotations

from scrypath_sa.modes.base import Mode
from scrypath_sa.modes.inline import InlineMode
from scrypath_sa.modes.manual import ManualMode

BUILTIN: dict[str, type[Mode]] = {"inline": InlineMode, "manual": ManualMode}

__all__ = ["BUILTIN", "InlineMode", "ManualMode", "Mode"]
