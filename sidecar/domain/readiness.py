"""The cutover readiness verdict, decided pure: measured facts and thresholds in, a verdict
(GO, NO-GO, INCONCLUSIVE) and every check's evidence out.

Guarantees (tests/unit/test_readiness.py):
- One unresolved monetary divergence in the window is NO-GO on its own, whatever else holds.
- Any other failed check is NO-GO; with none failed, a check that lacks evidence (a coverage
  gap, no reconciliation sweep yet, too little time in shadow, no events for an SLO) makes the
  verdict INCONCLUSIVE and names what is missing; GO only when every check passes.
- Each check reports its measured value, its threshold, its window and pass / fail /
  inconclusive, so the verdict explains itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Verdict(StrEnum):
    GO = "GO"
    NO_GO = "NO-GO"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class Thresholds:
    """What readiness asks for (``[readiness]`` in the configuration)."""

    window_hours: float = 24.0
    #: clean (matched) comparisons needed per route, operation and currency in the window
    clean_comparisons_min: int = 100
    #: every SLO's error budget left over its window must be at least this share
    budget_left_min: float = 0.25
    shadow_lag_p99_s_max: float = 30.0
    in_doubt_max: int = 0
    #: the last reconciliation sweep must be this recent, and clean
    reconciliation_age_hours_max: float = 24.0
    #: time the scope has been shadowed (first comparison in it to now)
    shadow_hours_min: float = 72.0
    #: routes (mapping names) coverage does not ask for (say, one customers never call)
    coverage_routes_exempt: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """The last reconciliation sweep: how long ago it finished, and what it found."""

    age_hours: float
    accounts: int
    drifted: int
    unreadable: int


@dataclass(frozen=True)
class Facts:
    """What was measured for one scope (everyone, or a cohort) over the window."""

    scope: str
    unresolved_monetary: Sequence[int]  # stream offsets of the monetary divergences
    #: clean comparisons by (route, operation, currency); every expected key should be here
    clean: Mapping[tuple[str, str, str], int]
    expected: frozenset[tuple[str, str, str]]
    capture_dropped: int
    uncompared: int
    consistency: tuple[int, int] | None  # (good, total) of shadow_consistency
    consistency_objective: float
    budgets_left: Mapping[str, float | None]
    sweep: Sweep | None
    lag_p99_s: float | None
    in_doubt: int
    verification_failures: Sequence[str]  # names of `ledger verify` checks that failed
    shadow_hours: float | None


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    value: Any
    threshold: Any
    window: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status is Status.PASS

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status.value,
            "value": self.value,
            "threshold": self.threshold,
            "window": self.window,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Report:
    scope: str
    verdict: Verdict
    reason: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def document(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "checks": [c.document() for c in self.checks],
        }


def assess(facts: Facts, limits: Thresholds) -> Report:
    """The verdict on ``facts`` against ``limits``, with every check's evidence."""
    window = f"{limits.window_hours:g} h"
    checks = (
        _monetary(facts, window),
        _coverage(facts, limits, window),
        _capture(facts, window),
        _consistency(facts, window),
        _budgets(facts, limits),
        _reconciliation(facts, limits),
        _lag(facts, limits, window),
        _in_doubt(facts, limits),
        _verification(facts),
        _time_in_shadow(facts, limits),
    )
    failed = [c for c in checks if c.status is Status.FAIL]
    missing = [c for c in checks if c.status is Status.INCONCLUSIVE]
    if checks[0].status is Status.FAIL:
        return Report(facts.scope, Verdict.NO_GO, checks[0].detail, checks)
    if failed:
        reason = "failed: " + ", ".join(c.name for c in failed)
        return Report(facts.scope, Verdict.NO_GO, reason, checks)
    if missing:
        reason = "not enough evidence: " + "; ".join(f"{c.name} ({c.detail})" for c in missing)
        return Report(facts.scope, Verdict.INCONCLUSIVE, reason, checks)
    return Report(facts.scope, Verdict.GO, "every check passes", checks)


def _monetary(facts: Facts, window: str) -> Check:
    found = list(facts.unresolved_monetary)
    detail = (
        "none unresolved"
        if not found
        else f"{len(found)} unresolved (offsets {', '.join(map(str, found[:5]))}"
        + (", ...)" if len(found) > 5 else ")")
        + ": any one is NO-GO"
    )
    return Check(
        "monetary_divergences",
        Status.FAIL if found else Status.PASS,
        len(found),
        0,
        window,
        detail,
    )


def _coverage(facts: Facts, limits: Thresholds, window: str) -> Check:
    need = limits.clean_comparisons_min
    short = sorted(
        (key, facts.clean.get(key, 0)) for key in facts.expected if facts.clean.get(key, 0) < need
    )
    least = min((facts.clean.get(k, 0) for k in facts.expected), default=0)
    if not facts.expected:
        return Check("coverage", Status.INCONCLUSIVE, 0, need, window, "nothing to cover yet")
    if short:
        gaps = ", ".join(f"{r} {o} {c}: {n}" for (r, o, c), n in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        detail = f"{len(short)} of {len(facts.expected)} short of {need}: {gaps}{more}"
        return Check("coverage", Status.INCONCLUSIVE, least, need, window, detail)
    detail = f"all {len(facts.expected)} route/operation/currency pairs have {need}+ clean"
    return Check("coverage", Status.PASS, least, need, window, detail)


def _capture(facts: Facts, window: str) -> Check:
    gaps = facts.capture_dropped + facts.uncompared
    detail = (
        "every captured request compared, none dropped"
        if gaps == 0
        else f"{facts.capture_dropped} dropped by capture, {facts.uncompared} captured but "
        "not compared"
    )
    return Check(
        "capture_completeness", Status.PASS if gaps == 0 else Status.FAIL, gaps, 0, window, detail
    )


def _consistency(facts: Facts, window: str) -> Check:
    objective = facts.consistency_objective
    if facts.consistency is None or facts.consistency[1] == 0:
        return Check(
            "consistency", Status.INCONCLUSIVE, None, objective, window, "no comparisons counted"
        )
    good, total = facts.consistency
    ratio = good / total
    status = Status.PASS if ratio >= objective else Status.FAIL
    detail = f"{good} of {total} comparisons consistent ({ratio:.4%}, objective {objective:.3%})"
    return Check("consistency", status, round(ratio, 6), objective, window, detail)


def _budgets(facts: Facts, limits: Thresholds) -> Check:
    need = limits.budget_left_min
    unknown = sorted(n for n, v in facts.budgets_left.items() if v is None)
    low = sorted((n, v) for n, v in facts.budgets_left.items() if v is not None and v < need)
    known = [v for v in facts.budgets_left.values() if v is not None]
    least = round(min(known), 4) if known else None
    if low:
        detail = ", ".join(f"{n} {v:.0%}" for n, v in low) + f" left, below {need:.0%}"
        return Check("error_budgets", Status.FAIL, least, need, "SLO window", detail)
    if unknown:
        detail = f"no events yet for {', '.join(unknown)}"
        return Check("error_budgets", Status.INCONCLUSIVE, least, need, "SLO window", detail)
    return Check(
        "error_budgets", Status.PASS, least, need, "SLO window", f"every SLO above {need:.0%}"
    )


def _reconciliation(facts: Facts, limits: Thresholds) -> Check:
    most = limits.reconciliation_age_hours_max
    sweep = facts.sweep
    if sweep is None:
        return Check(
            "reconciliation",
            Status.INCONCLUSIVE,
            None,
            f"clean, within {most:g} h",
            "last sweep",
            "no sweep yet: run `ledger-sidecar reconcile`",
        )
    detail = (
        f"{sweep.accounts} accounts, {sweep.drifted} drifted, {sweep.unreadable} unreadable, "
        f"{sweep.age_hours:.1f} h ago"
    )
    if sweep.drifted or sweep.unreadable:
        status = Status.FAIL
    elif sweep.age_hours > most:
        status, detail = Status.INCONCLUSIVE, detail + f": older than {most:g} h, run it again"
    else:
        status = Status.PASS
    value = {
        "drifted": sweep.drifted,
        "unreadable": sweep.unreadable,
        "age_hours": round(sweep.age_hours, 2),
    }
    return Check("reconciliation", status, value, f"clean, within {most:g} h", "last sweep", detail)


def _lag(facts: Facts, limits: Thresholds, window: str) -> Check:
    most = limits.shadow_lag_p99_s_max
    if facts.lag_p99_s is None:
        return Check(
            "shadow_lag", Status.INCONCLUSIVE, None, most, window, "no comparisons to time"
        )
    status = Status.PASS if facts.lag_p99_s <= most else Status.FAIL
    detail = f"p99 {facts.lag_p99_s:.3f} s from legacy answer to comparison (at most {most:g} s)"
    return Check("shadow_lag", status, round(facts.lag_p99_s, 4), most, window, detail)


def _in_doubt(facts: Facts, limits: Thresholds) -> Check:
    status = Status.PASS if facts.in_doubt <= limits.in_doubt_max else Status.FAIL
    detail = f"{facts.in_doubt} request(s) in doubt, unresolved"
    return Check("in_doubt", status, facts.in_doubt, limits.in_doubt_max, "now", detail)


def _verification(facts: Facts) -> Check:
    failed = list(facts.verification_failures)
    detail = "ledger and audit log verify" if not failed else "failed: " + ", ".join(failed)
    return Check(
        "verification", Status.FAIL if failed else Status.PASS, len(failed), 0, "whole log", detail
    )


def _time_in_shadow(facts: Facts, limits: Thresholds) -> Check:
    need = limits.shadow_hours_min
    hours = facts.shadow_hours
    if hours is None or hours < need:
        shown = "never" if hours is None else f"{hours:.1f} h"
        return Check(
            "time_in_shadow",
            Status.INCONCLUSIVE,
            None if hours is None else round(hours, 2),
            need,
            "since the first comparison",
            f"shadowed {shown}, needs {need:g} h",
        )
    return Check(
        "time_in_shadow",
        Status.PASS,
        round(hours, 2),
        need,
        "since the first comparison",
        f"shadowed {hours:.1f} h",
    )


__all__ = ["Check", "Facts", "Report", "Status", "Sweep", "Thresholds", "Verdict", "assess"]
