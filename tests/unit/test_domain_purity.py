"""The domain decides; it never waits, reads a clock, rolls dice or touches the outside.

import-linter (pyproject.toml) forbids third-party I/O libraries and our adapters; it cannot
see the standard library, so this test reads the domain's imports itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOMAIN = Path(__file__).parents[2] / "sidecar" / "domain"
FORBIDDEN = {
    "asyncio",
    "os",
    "socket",
    "time",
    "random",
    "datetime",
    "subprocess",
    "threading",
    "urllib",
    "http",
    "logging",
    "io",
    "pathlib",
    "sys",
}


@pytest.mark.parametrize("module", sorted(DOMAIN.glob("*.py")), ids=lambda p: p.name)
def test_domain_modules_import_no_io(module: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{module.name} imports {sorted(imported & FORBIDDEN)}"
