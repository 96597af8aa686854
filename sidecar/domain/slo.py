"""Service level objectives and error budgets: the pure arithmetic.

The SLOs live in one file (``sidecar/slo.toml``), read by the sidecar (attainment and budgets,
from its own durable counts) and by the alert-rule generator. Each SLO counts good events
among all events: a ratio of events, never an average of ratios.

Guarantees (tests/unit/test_slo.py):
- A file with an unknown SLO, an objective outside (0, 1), a missing threshold where one is
  needed, or a key this module does not know is refused, naming the SLO and the key.
- Attainment is good / total over the window; the budget is (1 - objective) x total bad events
  allowed, and the budget left is 1 - bad / budget (negative once overspent). No events: no
  verdict (None), never "100 %".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.errors import ConfigError

#: what each SLO counts, and whether it needs a threshold in seconds
KNOWN: Mapping[str, tuple[str, bool]] = {
    "availability": (
        "customer requests answered without a server error, a timeout or an "
        "unreachable legacy service",
        False,
    ),
    "latency": ("customer requests answered within the threshold", True),
    "shadow_completeness": ("mapped requests captured into the mirror stream (not dropped)", False),
    "shadow_consistency": ("comparisons without a monetary divergence or a ledger error", False),
    "shadow_freshness": ("comparisons done within the threshold of the legacy answer", True),
}
KEYS = {"name", "objective", "threshold_seconds", "description"}


@dataclass(frozen=True, slots=True)
class Slo:
    name: str
    objective: float
    description: str
    threshold_s: float | None = None

    @property
    def budget_ratio(self) -> float:
        """The share of events allowed to be bad."""
        return 1.0 - self.objective


@dataclass(frozen=True, slots=True)
class SloFile:
    window_days: int
    slos: tuple[Slo, ...]

    def get(self, name: str) -> Slo | None:
        return next((slo for slo in self.slos if slo.name == name), None)

    def threshold(self, name: str, default: float) -> float:
        slo = self.get(name)
        return slo.threshold_s if slo is not None and slo.threshold_s is not None else default

    def attainments(self, sums: Mapping[str, tuple[int, int]]) -> list[Attainment]:
        """Each SLO's attainment from (good, total) sums (none counted yet: 0 of 0)."""
        return [Attainment(slo, *sums.get(slo.name, (0, 0))) for slo in self.slos]


def parse_slo_file(document: Mapping[str, Any], source: str) -> SloFile:
    """The SLO file's content, checked."""
    unknown = set(document) - {"window_days", "slo"}
    if unknown:
        raise ConfigError(f"{source}: {sorted(unknown)[0]}: unknown key (known: window_days, slo)")
    window = document.get("window_days", 30)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 365:
        raise ConfigError(f"{source}: window_days: a whole number of days, 1-365, got {window!r}")
    raw = document.get("slo")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: slo: one [[slo]] table per objective is needed")
    slos: list[Slo] = []
    for index, entry in enumerate(raw):
        where = f"{source}: slo[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a table")
        name = entry.get("name")
        if name not in KNOWN:
            raise ConfigError(f"{where}.name: one of {', '.join(KNOWN)}, got {name!r}")
        where = f"{source}: slo {name!r}"
        extra = set(entry) - KEYS
        if extra:
            raise ConfigError(f"{where}: {sorted(extra)[0]}: unknown key")
        if any(s.name == name for s in slos):
            raise ConfigError(f"{where}: defined twice")
        objective = entry.get("objective")
        if (
            isinstance(objective, bool)
            or not isinstance(objective, int | float)
            or not 0 < objective < 1
        ):
            raise ConfigError(f"{where}.objective: a ratio between 0 and 1, got {objective!r}")
        needs_threshold = KNOWN[str(name)][1]
        threshold = entry.get("threshold_seconds")
        if needs_threshold:
            if (
                isinstance(threshold, bool)
                or not isinstance(threshold, int | float)
                or not (threshold > 0)
            ):
                raise ConfigError(
                    f"{where}.threshold_seconds: seconds above 0 are needed, got {threshold!r}"
                )
        elif threshold is not None:
            raise ConfigError(f"{where}.threshold_seconds: this SLO has no threshold")
        slos.append(
            Slo(
                str(name),
                float(objective),
                str(entry.get("description") or KNOWN[str(name)][0]),
                float(threshold) if threshold is not None else None,
            )
        )
    return SloFile(window, tuple(slos))


@dataclass(frozen=True, slots=True)
class Attainment:
    slo: Slo
    good: int
    total: int

    @property
    def bad(self) -> int:
        return self.total - self.good

    @property
    def ratio(self) -> float | None:
        """good / total; None without events."""
        return self.good / self.total if self.total else None

    @property
    def budget_left(self) -> float | None:
        """The share of the window's error budget not spent (below 0: overspent)."""
        if not self.total:
            return None
        allowed = self.slo.budget_ratio * self.total
        return 1.0 - self.bad / allowed

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None else ratio >= self.slo.objective
