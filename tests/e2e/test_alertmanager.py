"""alerts/alertmanager.yml: valid for Alertmanager 0.25 (amtool check-config), routing each
severity to its own receiver (amtool config routes test), and holding a ticket back while the
matching page fires (a real Alertmanager, alerts posted to its API)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.test_cli import ROOT
from tests.e2e.test_serve_telemetry import free_port, wait_until_answering

CONFIG = ROOT / "alerts" / "alertmanager.yml"
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)"
)


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, check=False)


@needs_amtool
def test_the_configuration_is_valid() -> None:
    run = amtool("check-config", str(CONFIG))
    assert run.returncode == 0, run.stdout + run.stderr


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "slo=latency", "alertname=LedgerSidecarSLOBurn"], "page"),
        (["severity=page", "alertname=LedgerSidecarMonetaryDivergence"], "page"),
        (["severity=ticket", "alertname=LedgerSidecarCaptureDropping"], "ticket"),
        (["severity=release", "alertname=LedgerSidecarErrorBudgetLow"], "release"),
        (["severity=none", "alertname=LedgerSidecarWatchdog"], "watchdog"),
        (["alertname=SomethingElse"], "ticket"),
    ],
)
def test_each_severity_reaches_its_own_receiver(labels: list[str], receiver: str) -> None:
    run = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == receiver


@pytest.mark.skipif(ALERTMANAGER is None, reason="Alertmanager not installed")
def test_a_ticket_is_held_back_while_the_matching_page_fires(tmp_path: Path) -> None:
    port = free_port()
    assert ALERTMANAGER is not None
    server = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={CONFIG}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v2"
    try:
        wait_until_answering(f"{base}/status", server)
        now = datetime.now(UTC)
        ends = (now + timedelta(minutes=10)).isoformat()

        def alert(name: str, severity: str, slo: str) -> dict[str, object]:
            labels = {"alertname": name, "severity": severity, "slo": slo}
            return {"labels": labels, "startsAt": now.isoformat(), "endsAt": ends}

        posted = [
            alert("LedgerSidecarSLOBurn", "page", "latency"),
            alert("LedgerSidecarSLOBudgetBurn", "ticket", "latency"),
            alert("LedgerSidecarSLOBudgetBurn", "ticket", "shadow_freshness"),
        ]
        request = urllib.request.Request(
            f"{base}/alerts",
            data=json.dumps(posted).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 200
        states: dict[tuple[str, str], str] = {}
        deadline = time.monotonic() + 30
        while len(states) < 3 or "active" not in states.values():
            with urllib.request.urlopen(f"{base}/alerts?inhibited=true") as answer:
                alerts = json.load(answer)
            states = {
                (a["labels"]["severity"], a["labels"]["slo"]): a["status"]["state"] for a in alerts
            }
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert states[("page", "latency")] == "active"
    assert states[("ticket", "latency")] == "suppressed"  # inhibited by the page
    assert states[("ticket", "shadow_freshness")] == "active"  # no page for this SLO
