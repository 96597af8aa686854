"""Reading a mapping file: TOML on disk -> ``domain.mapping.RouteTable``, hooks resolved.

Guarantees (tests/unit/test_mapping_file.py):
- A file that is missing, not TOML, or not a valid mapping fails with a ``MappingError``
  naming the file, the key and what is wrong; nothing else is raised.
- Every ``hook`` names an importable callable, checked at load time, not at the first request.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sidecar.domain.mapping import RouteTable, parse_route_table
from sidecar.errors import MappingError


def load_route_table(path: str | Path) -> RouteTable:
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise MappingError(source, "(file)", "no such file") from None
    except OSError as exc:
        raise MappingError(source, "(file)", f"cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(source, "(file)", f"not valid TOML: {exc}") from None
    table = parse_route_table(raw, source)
    for i, route in enumerate(table.routes):
        if route.hook is not None:
            resolve_hook(route.hook, source, f"route[{i}].hook")
    return table


def resolve_hook(hook: str, source: str, key: str) -> Callable[..., Any]:
    module_name, _, attribute = hook.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MappingError(source, key, f"cannot import {module_name}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise MappingError(source, key, f"{module_name} has no callable {attribute}")
    return function  # type: ignore[no-any-return]


def parse_text(text: str, source: str = "<text>") -> RouteTable:
    """Parse mapping TOML given as text (for tests and inline examples)."""
    try:
        raw: Mapping[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(source, "(file)", f"not valid TOML: {exc}") from None
    return parse_route_table(raw, source)
