"""pytest fixtures for apps that use scrypath_sa (loaded through the ``pytest11`` entry
point when scrypath-sa is installed).

``scrypath_config`` is the configuration the other fixtures act on: by default the one
installed (after your app fixture ran); override it in your ``conftest.py`` to name
one, e.g. a Flask app's ``app.extensions["scrypath_sa"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scrypath_sa.config import Config
from scrypath_sa.install import disabled, resolve_config
from scrypath_sa.testing import CapturedOp, InMemoryBackend, capture


@pytest.fixture
def scrypath_backend() -> Iterator[InMemoryBackend]:
    """A fresh in-memory search backend; pass it to ``scrypath_sa.configure`` (or as a
    Flask app's ``SCRYPATH_SA_BACKEND``)."""
    backend = InMemoryBackend()
    yield backend
    backend.close()


@pytest.fixture
def scrypath_config() -> Config:
    """The configuration under test: the only one installed. Override it to choose."""
    return resolve_config()


@pytest.fixture
def scrypath_capture(scrypath_config: Config) -> Iterator[list[CapturedOp]]:
    """The writes the test sends to ``scrypath_config``'s backend (through a Flask or
    FastAPI test client too: the record is process-wide, not per thread)."""
    with capture(scrypath_config) as captured:
        yield captured


@pytest.fixture
def scrypath_disabled(scrypath_config: Config) -> Iterator[Config]:
    """Sync turned off for the test: commits record no events and write nothing."""
    with disabled(scrypath_config) as config:
        yield config
