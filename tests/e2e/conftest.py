"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.processes import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Child processes started by a test, all stopped when it ends."""
    running = Processes(tmp_path)
    try:
        yield running
    finally:
        running.stop()
