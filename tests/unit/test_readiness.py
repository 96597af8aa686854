"""The readiness verdict (sidecar/domain/readiness.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.readiness import Facts, Status, Sweep, Thresholds, Verdict, assess

LIMITS = Thresholds(clean_comparisons_min=10, shadow_hours_min=1.0)
KEYS = frozenset({("pay", "transfer", "EUR"), ("balance", "balance", "EUR")})
READY = Facts(
    scope="everyone",
    unresolved_monetary=(),
    clean={k: 50 for k in KEYS},
    expected=KEYS,
    capture_dropped=0,
    uncompared=0,
    consistency=(10_000, 10_000),
    consistency_objective=0.999,
    budgets_left={"availability": 0.9, "shadow_consistency": 1.0},
    sweep=Sweep(age_hours=2.0, accounts=200, drifted=0, unreadable=0),
    lag_p99_s=0.4,
    in_doubt=0,
    verification_failures=(),
    shadow_hours=80.0,
)


def test_every_check_passing_is_go_and_each_check_shows_its_evidence() -> None:
    report = assess(READY, LIMITS)
    assert report.verdict is Verdict.GO
    document = report.document()
    assert document["verdict"] == "GO"
    names = [c["name"] for c in document["checks"]]
    assert names == [
        "monetary_divergences",
        "coverage",
        "capture_completeness",
        "consistency",
        "error_budgets",
        "reconciliation",
        "shadow_lag",
        "in_doubt",
        "verification",
        "time_in_shadow",
    ]
    assert all({"name", "ok", "value", "threshold", "window"} <= set(c) for c in document["checks"])


@given(
    st.builds(
        lambda **changes: changes,
        coverage_short=st.booleans(),
        no_sweep=st.booleans(),
        young=st.booleans(),
        dropped=st.integers(0, 3),
        lag=st.floats(0, 100),
    )
)
def test_one_monetary_divergence_is_no_go_whatever_else_holds(changes: dict[str, object]) -> None:
    facts = replace(
        READY,
        unresolved_monetary=(1234,),
        clean={} if changes["coverage_short"] else READY.clean,
        sweep=None if changes["no_sweep"] else READY.sweep,
        shadow_hours=0.1 if changes["young"] else 80.0,
        capture_dropped=changes["dropped"],  # type: ignore[arg-type]
        lag_p99_s=changes["lag"],  # type: ignore[arg-type]
    )
    report = assess(facts, LIMITS)
    assert report.verdict is Verdict.NO_GO
    assert "offsets 1234" in report.reason


def test_a_coverage_gap_is_inconclusive_and_names_the_gap() -> None:
    facts = replace(READY, clean={("pay", "transfer", "EUR"): 50, ("balance", "balance", "EUR"): 3})
    report = assess(facts, LIMITS)
    assert report.verdict is Verdict.INCONCLUSIVE
    assert "balance balance EUR: 3" in report.check("coverage").detail
    assert "coverage" in report.reason


@pytest.mark.parametrize(
    ("change", "check", "status"),
    [
        ({"capture_dropped": 1}, "capture_completeness", Status.FAIL),
        ({"uncompared": 2}, "capture_completeness", Status.FAIL),
        ({"consistency": (990, 1000)}, "consistency", Status.FAIL),
        ({"consistency": None}, "consistency", Status.INCONCLUSIVE),
        ({"budgets_left": {"availability": 0.1}}, "error_budgets", Status.FAIL),
        ({"budgets_left": {"availability": None}}, "error_budgets", Status.INCONCLUSIVE),
        ({"sweep": None}, "reconciliation", Status.INCONCLUSIVE),
        ({"sweep": Sweep(2.0, 200, 1, 0)}, "reconciliation", Status.FAIL),
        ({"sweep": Sweep(30.0, 200, 0, 0)}, "reconciliation", Status.INCONCLUSIVE),
        ({"lag_p99_s": 31.0}, "shadow_lag", Status.FAIL),
        ({"in_doubt": 1}, "in_doubt", Status.FAIL),
        ({"verification_failures": ("hash_chain",)}, "verification", Status.FAIL),
        ({"shadow_hours": 0.5}, "time_in_shadow", Status.INCONCLUSIVE),
    ],
)
def test_each_check_fails_or_lacks_evidence_as_it_should(
    change: dict[str, object], check: str, status: Status
) -> None:
    report = assess(replace(READY, **change), LIMITS)  # type: ignore[arg-type]
    assert report.check(check).status is status
    expected = Verdict.NO_GO if status is Status.FAIL else Verdict.INCONCLUSIVE
    assert report.verdict is expected
