"""The Dramatiq worker entry point: ``dramatiq examples.worker``.

Importing the app module builds the broker, declares scrypath_sa's actors on it and
installs the configuration the worker processes events with.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import broker, config

__all__ = ["broker", "config"]
