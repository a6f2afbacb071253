"""pytest fixtures for apps that use scrypath_sa (loaded through the ``pytest11`` entry
point when scrypath-sa is installed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scrypath_sa.testing import CapturedOp, InMemoryBackend, capture


@pytest.fixture
def scrypath_backend() -> Iterator[InMemoryBackend]:
    """A fresh in-memory search backend; pass it to ``scrypath_sa.configure``."""
    backend = InMemoryBackend()
    yield backend
    backend.close()


@pytest.fixture
def scrypath_capture() -> Iterator[list[CapturedOp]]:
    """The writes the test sends to the configured backend."""
    with capture() as captured:
        yield captured
