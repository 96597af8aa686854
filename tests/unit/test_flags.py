"""The cutover flag's rules, decided pure (sidecar/domain/flags.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sidecar.domain.flags import (
    BUCKETS,
    Cohort,
    FlagRules,
    Mode,
    Reason,
    bucket,
    parse_cohort,
    rules_from,
)
from sidecar.errors import FlagRulesInvalid

IDS = [f"ACC-{n:06d}" for n in range(100_000)]


def share(name: str, percent: str, mode: Mode = Mode.SHADOW) -> Cohort:
    return parse_cohort({"name": name, "mode": mode.value, "percent": percent})


def test_raising_a_cohort_from_10_to_20_percent_moves_none_of_the_first_10_back() -> None:
    ten = FlagRules(Mode.LEGACY, (share("wave", "10"),))
    twenty = ten.with_cohort(share("wave", "20"))
    first = {a for a in IDS if ten.evaluate(a).variant is Mode.SHADOW}
    second = {a for a in IDS if twenty.evaluate(a).variant is Mode.SHADOW}
    assert first <= second
    # and the shares are what they say, within sampling noise
    assert 9_500 < len(first) < 10_500 and 19_400 < len(second) < 20_600


def test_nested_cohorts_take_an_account_into_the_smallest_share_covering_it() -> None:
    rules = FlagRules(
        Mode.LEGACY, (share("wave", "20", Mode.SHADOW), share("canary", "5", Mode.LEDGER_PRIMARY))
    )
    for account in IDS[:5000]:
        place = bucket(account)
        got = rules.evaluate(account)
        if place < 500:
            assert (got.variant, got.cohort, got.reason) == (
                Mode.LEDGER_PRIMARY,
                "canary",
                Reason.SPLIT,
            )
        elif place < 2000:
            assert (got.variant, got.cohort) == (Mode.SHADOW, "wave")
        else:
            assert (got.variant, got.reason, got.cohort) == (Mode.LEGACY, Reason.DEFAULT, None)


def test_the_bucket_is_the_same_in_another_process() -> None:
    # Python's own hash() is salted per process; the bucket must not be
    code = "from sidecar.domain.flags import bucket; print([bucket(f'ACC-{n}') for n in range(50)])"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert other.strip() == str([bucket(f"ACC-{n}") for n in range(50)])


@given(st.text(min_size=1, max_size=64))
def test_every_bucket_is_in_range(account: str) -> None:
    assert 0 <= bucket(account) < BUCKETS


def test_an_explicit_list_wins_over_any_percentage() -> None:
    everyone = share("all", "100", Mode.SHADOW)
    listed = parse_cohort({"name": "vip", "mode": "legacy", "accounts": ["ACC-000001"]})
    rules = FlagRules(Mode.LEGACY, (everyone, listed))
    got = rules.evaluate("ACC-000001")
    assert (got.variant, got.reason, got.cohort) == (Mode.LEGACY, Reason.TARGETING_MATCH, "vip")
    assert rules.evaluate("ACC-000002").variant is Mode.SHADOW


def test_no_account_gets_the_default() -> None:
    rules = FlagRules(Mode.SHADOW, (share("all", "100", Mode.LEDGER_PRIMARY),))
    got = rules.evaluate(None)
    assert (got.variant, got.reason) == (Mode.SHADOW, Reason.DEFAULT)
    assert got.document() == {
        "flag_key": "ledger-mode",
        "variant": "shadow",
        "reason": "DEFAULT",
        "cohort": None,
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"name": "w", "mode": "primary", "percent": 5},
            r"cohorts.w.mode: 'primary' is not a mode",
        ),
        ({"name": "w", "mode": "shadow", "percent": 101}, r"cohorts.w.percent: 101 is outside"),
        ({"name": "w", "mode": "shadow", "percent": -1}, r"outside 0..100"),
        ({"name": "w", "mode": "shadow", "percent": "0.001"}, r"finer than 0.01 %"),
        ({"name": "w", "mode": "shadow", "percent": "NaN"}, r"outside 0..100"),
        ({"name": "w", "mode": "shadow", "percent": True}, r"a number from 0 to 100"),
        ({"name": "w", "mode": "shadow", "percent": "ten"}, r"is not a number"),
        ({"name": "w", "mode": "shadow"}, r"either accounts or percent"),
        ({"name": "w", "mode": "shadow", "percent": 1, "accounts": ["A"]}, r"either accounts"),
        ({"name": "w", "mode": "shadow", "accounts": []}, r"a non-empty list"),
        ({"name": "w", "mode": "shadow", "accounts": [5]}, r"5 is not an account id"),
        ({"name": "W!", "mode": "shadow", "percent": 1}, r"is not a name"),
        ({"name": "w", "mode": "shadow", "percent": 1, "color": "red"}, r"unknown keys"),
    ],
)
def test_a_bad_cohort_is_refused_naming_the_key(document: dict[str, object], message: str) -> None:
    with pytest.raises(FlagRulesInvalid, match=message):
        parse_cohort(document)


def test_an_account_in_two_lists_and_two_equal_shares_are_refused() -> None:
    a = parse_cohort({"name": "a", "mode": "shadow", "accounts": ["X"]})
    b = parse_cohort({"name": "b", "mode": "legacy", "accounts": ["X", "Y"]})
    with pytest.raises(FlagRulesInvalid, match="X is already in cohort a"):
        FlagRules(Mode.LEGACY, (a, b))
    with pytest.raises(FlagRulesInvalid, match="the same share as cohort"):
        FlagRules(Mode.LEGACY, (share("one", "10"), share("two", "10")))


def test_each_change_makes_the_next_version_and_round_trips_through_its_document() -> None:
    rules = (
        FlagRules()
        .with_default(Mode.SHADOW)
        .with_cohort(share("canary", "2.5", Mode.LEDGER_PRIMARY))
    )
    assert rules.version == 2
    again = rules_from(rules.document()["default"], rules.document()["cohorts"], rules.version)
    assert again == rules
    assert rules.without_cohort("canary").cohorts == ()
    with pytest.raises(FlagRulesInvalid, match="no such cohort"):
        rules.without_cohort("nope")


def test_modes_are_ordered_as_cutover_steps() -> None:
    assert [m.step for m in Mode] == [0, 1, 2, 3]
    assert Mode.LEDGER_PRIMARY.step > Mode.SHADOW.step


def test_a_share_cannot_move_past_another_cohorts() -> None:
    rules = FlagRules(
        Mode.SHADOW, (share("wave", "10", Mode.LEDGER_PRIMARY), share("hold", "15", Mode.LEGACY))
    )
    with pytest.raises(FlagRulesInvalid, match=r"would cross cohort hold \(15 %\)"):
        rules.with_cohort(share("wave", "20", Mode.LEDGER_PRIMARY))
    with pytest.raises(FlagRulesInvalid, match="would cross cohort wave"):
        rules.with_cohort(share("hold", "5", Mode.LEGACY))
    # within its neighbours it moves freely, and the slices say who holds what
    moved = rules.with_cohort(share("wave", "12.5", Mode.LEDGER_PRIMARY))
    held = {c["name"]: c["holds"] for c in moved.described()["cohorts"]}
    assert held == {
        "wave": {"from_percent": "0", "to_percent": "12.5"},
        "hold": {"from_percent": "12.5", "to_percent": "15"},
    }


def test_names_with_a_trailing_newline_are_refused_and_odd_ids_still_have_a_bucket() -> None:
    with pytest.raises(FlagRulesInvalid, match="is not a name"):
        parse_cohort({"name": "abc\n", "mode": "shadow", "percent": 1})
    assert 0 <= bucket("ACC-\udcff") < BUCKETS  # a header's non-UTF-8 byte, as aiohttp gives it
