"""Reading the SLO file (``sidecar/slo.toml`` unless ``telemetry.slo_file`` names another)."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from sidecar.domain.slo import SloFile, parse_slo_file
from sidecar.errors import ConfigError

PACKAGED = "slo.toml"


def load_slo_file(path: str | Path | None = None) -> SloFile:
    """The SLOs from ``path``, or the packaged file; a bad file fails naming it and the key."""
    if path is None:
        text = resources.files("sidecar").joinpath(PACKAGED).read_text(encoding="utf-8")
        source = f"sidecar/{PACKAGED}"
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"SLO file {source}: cannot be read: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"SLO file {source}: not valid TOML: {exc}") from exc
    return parse_slo_file(document, source)
