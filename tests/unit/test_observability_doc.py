"""docs/observability.md is the contract of the logs: every event the code logs is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_logged_event_is_documented() -> None:
    logged = {
        match
        for source in (ROOT / "sidecar").rglob("*.py")
        for match in re.findall(r'"event": "([a-z_]+)"', source.read_text())
    }
    assert {"request_completed", "divergence", "started", "stopped"} <= logged
    table = [
        line
        for line in (ROOT / "docs" / "observability.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    documented = {name for line in table for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
    assert sorted(logged - documented) == []
