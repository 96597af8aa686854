"""The alert rules in alerts/: generated from the SLO file and committed unchanged, valid for
Prometheus 2.42 (``promtool check rules``), and passing the scenarios every SLO must pass
(``promtool test rules``: outage, 10x, 2x, steady 0.5x for 30 days, low traffic, one monetary
divergence). Every alert names its severity, says what happened and links a runbook that
exists and a dashboard."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sidecar.domain.slo import parse_slo_file

from tests.e2e.test_cli import ROOT

ALERTS = ROOT / "alerts"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)
SEVERITIES = {"page", "ticket", "release", "none"}


def generator() -> object:
    sys.path.insert(0, str(ALERTS))
    import generate  # type: ignore[import-not-found]

    return generate


def test_the_committed_rules_are_what_the_generator_writes() -> None:
    run = subprocess.run(
        [sys.executable, str(ALERTS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_the_generator_refuses_a_burn_factor_times_budget_of_one_or_more() -> None:
    generate = generator()
    loose = parse_slo_file({"slo": [{"name": "availability", "objective": 0.9}]}, "slo.toml")
    with pytest.raises(SystemExit, match=r"14.4 x error budget 0.1 = 1.44 >= 1"):
        generate.check(loose)  # type: ignore[attr-defined]


def test_every_alert_has_severity_summary_description_runbook_and_dashboard() -> None:
    alerts = [
        rule
        for name in ("slo-rules.yml", "sidecar-alerts.yml")
        for group in yaml.safe_load((ALERTS / name).read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert len({a["alert"] for a in alerts}) >= 12
    for alert in alerts:
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], alert["alert"]
        runbook = ROOT / notes["runbook_url"]
        assert runbook.is_file(), f"{alert['alert']}: {runbook} does not exist"
        assert "## What to do" in runbook.read_text()
        assert notes["dashboard_url"].startswith("/d/ledger-sidecar-")


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    run = subprocess.run(
        [str(PROMTOOL), "check", "rules", "slo-rules.yml", "sidecar-alerts.yml"],
        cwd=ALERTS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
async def test_every_slo_passes_the_burn_rate_scenarios() -> None:
    async def one(path: Path) -> tuple[Path, int, str]:
        process = await asyncio.create_subprocess_exec(
            str(PROMTOOL),
            "test",
            "rules",
            path.name,
            cwd=ALERTS,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out = (await process.communicate())[0].decode()
        return path, process.returncode or 0, out

    files = sorted(ALERTS.glob("tests-*.yml"))
    assert [f.name for f in files] == ["tests-10m.yml", "tests-1h.yml", "tests-1m.yml"]
    for path, code, out in await asyncio.gather(*(one(f) for f in files)):
        assert code == 0, f"{path.name}:\n{out[-4000:]}"
