"""The SLO file and error-budget arithmetic (sidecar/domain/slo.py)."""

from __future__ import annotations

from typing import Any

import pytest
from sidecar.domain.slo import Attainment, Slo, parse_slo_file
from sidecar.errors import ConfigError
from sidecar.slo_file import load_slo_file


def test_the_packaged_file_defines_every_slo_with_its_threshold() -> None:
    slos = load_slo_file()
    assert [s.name for s in slos.slos] == [
        "availability",
        "latency",
        "shadow_completeness",
        "shadow_consistency",
        "shadow_freshness",
    ]
    assert slos.threshold("latency", 0) == 0.25 and slos.threshold("shadow_freshness", 0) == 30
    assert slos.window_days == 30


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ({"name": "speed", "objective": 0.9}, "slo\\[0\\].name"),
        ({"name": "availability", "objective": 1.0}, "'availability'.objective"),
        ({"name": "availability", "objective": True}, "'availability'.objective"),
        ({"name": "latency", "objective": 0.99}, "'latency'.threshold_seconds"),
        ({"name": "availability", "objective": 0.9, "threshold_seconds": 1}, "no threshold"),
        ({"name": "availability", "objective": 0.9, "colour": "red"}, "colour: unknown key"),
    ],
)
def test_a_bad_slo_is_refused_naming_it_and_the_key(entry: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        parse_slo_file({"slo": [entry]}, "slo.toml")


def test_an_slo_twice_or_none_at_all_is_refused() -> None:
    twice = {"slo": [{"name": "availability", "objective": 0.9}] * 2}
    with pytest.raises(ConfigError, match="defined twice"):
        parse_slo_file(twice, "slo.toml")
    with pytest.raises(ConfigError, match="one \\[\\[slo\\]\\] table"):
        parse_slo_file({"window_days": 30}, "slo.toml")


def test_attainment_is_a_ratio_of_events_and_the_budget_left_follows() -> None:
    slo = Slo("availability", 0.999, "")
    # 100,000 events with 50 bad: half of the 100 allowed
    half = Attainment(slo, 99_950, 100_000)
    assert half.ratio == pytest.approx(0.9995) and half.met
    assert half.budget_left == pytest.approx(0.5)
    overspent = Attainment(slo, 99_800, 100_000)
    assert overspent.budget_left == pytest.approx(-1.0) and overspent.met is False
    nothing = Attainment(slo, 0, 0)
    assert nothing.ratio is None and nothing.budget_left is None and nothing.met is None
