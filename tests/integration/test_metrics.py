"""/metrics as a product surface: a real scrape of a running sidecar (shadow mode, the demo
legacy service over HTTP, PostgreSQL) passes ``promtool check metrics``, shows zero rather than
no data, and its number of series does not grow with the number of accounts."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sidecar.config import DatabaseSettings, Settings, TelemetrySettings
from sidecar.demo.shadow_demo import ShadowStack

from tests.integration.test_shadow import shadow_settings, traffic

PROMTOOL = shutil.which("promtool")
DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
#: the most series one sidecar (proxy and shadow worker, default telemetry settings) exposes;
#: docs/observability.md explains the sum
SERIES_BUDGET = 2500
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


async def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        assert answer.status == 200
        return await answer.text(), answer.headers["Content-Type"]


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line of a text exposition (each series
    once: Prometheus refuses a scrape that repeats one)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            assert key not in out, f"{key} exposed twice"
            out[key] = float(value)
    return out


def value(found: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for key, v in found.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(pairs.get(k) == want for k, want in labels.items()):
            total += v
    return total


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
async def test_a_real_scrape_passes_promtool_and_reads_zero_before_traffic(
    settings: Settings, db: DatabaseSettings
) -> None:
    async with ShadowStack(shadow_settings(settings, db), customers=40) as stack:
        url = stack.sidecar_url + "/metrics"
        before = samples((await scrape(url))[0])
        await stack.bootstrap()
        await traffic(stack, 2.0)
        await stack.read_every_balance()
        await stack.settle()
        worker = stack.sidecar.worker
        assert worker is not None and worker.sampler is not None and worker.applier is not None
        worker.applier.clock_offset_s = 999.0
        await worker.sampler.sample()
        # the lag is measured on the database's clock: the sampler measured this host's offset
        assert abs(worker.applier.clock_offset_s) < 1.0
        text, content_type = await scrape(url)
        openmetrics, om_type = await scrape(url, OPENMETRICS)
    assert content_type.startswith("text/plain; version=0.0.4")
    promtool = await asyncio.create_subprocess_exec(
        str(PROMTOOL),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    said = (await promtool.communicate(text.encode()))[0].decode()
    assert promtool.returncode == 0, said
    # pre-initialised: a dashboard reads zero, not no data
    mismatch = 'ledger_sidecar_comparisons_total{operation="transfer",outcome="mismatch"}'
    assert before[mismatch] == 0
    assert before['ledger_sidecar_capture_dropped_records_total{reason="queue_full"}'] == 0
    found = samples(text)
    assert value(found, "ledger_sidecar_comparisons_total", outcome="match") > 100
    assert value(found, "ledger_sidecar_request_duration_seconds_count", mode="shadow") > 100
    assert value(found, "ledger_sidecar_upstream_duration_seconds_count", upstream="legacy") > 100
    assert value(found, "ledger_sidecar_upstream_duration_seconds_count", upstream="ledger") > 100
    assert value(found, "ledger_sidecar_capture_records_total", result="committed") > 200
    assert value(found, "ledger_sidecar_shadow_lag_seconds_count") > 100
    assert value(found, "ledger_sidecar_ledger_event_log_head") > 0
    assert found['ledger_sidecar_ledger_trial_balance_minor{currency="EUR"}'] == 0
    assert value(found, "ledger_sidecar_db_pool_connections", pool="capture", state="max") > 0
    assert value(found, "ledger_sidecar_build_info") == 1
    assert found['ledger_sidecar_mode{mode="shadow"}'] == 1
    assert "CUST-" not in text  # no account id in any label, ever
    # the SLO thresholds (sidecar/slo.toml) are buckets: their ratios are exact, not guessed
    for histogram, threshold in (
        ("ledger_sidecar_request_duration_seconds_bucket", "0.25"),
        ("ledger_sidecar_upstream_duration_seconds_bucket", "0.25"),
        ("ledger_sidecar_shadow_lag_seconds_bucket", "30.0"),
    ):
        assert any(k.startswith(histogram) and f'le="{threshold}"' in k for k in found), histogram
    assert om_type.startswith("application/openmetrics-text")
    assert openmetrics.endswith("# EOF\n")
    # every family a real scrape has is in the document's table, with its type
    documented = DOC.read_text()
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("ledger_sidecar_")
        exposed = f"{name}_total" if family.type == "counter" else name
        assert f"`{exposed}`" in documented or f"`{name}_total`" in documented, name


async def _balances(base: str, accounts: list[str]) -> None:
    async with aiohttp.ClientSession() as session:

        async def one(account: str) -> None:
            async with session.get(f"{base}/v1/accounts/{account}/balance") as answer:
                await answer.read()

        for start in range(0, len(accounts), 50):
            await asyncio.gather(*(one(a) for a in accounts[start : start + 50]))


async def test_series_do_not_grow_with_accounts_and_stay_under_the_budget(
    settings: Settings, db: DatabaseSettings
) -> None:
    """Shadow mode, the worker in the process: every request captured, applied and compared,
    the bootstrap's own exchanges too; the series after 3,002 distinct accounts are the ones
    after ten."""
    telemetry = TelemetrySettings(
        account_tiers={"vip": ("CUST-0000*",)}, watch_accounts={"treasury": "CUST-00001"}
    )
    shadow = replace(shadow_settings(settings, db), telemetry=telemetry)
    async with ShadowStack(shadow, customers=3000) as stack:
        base = stack.sidecar_url
        before = samples((await scrape(base + "/metrics"))[0])
        await stack.bootstrap()
        await _balances(base, [f"CUST-{i:05d}" for i in range(10)])
        await stack.settle()
        worker = stack.sidecar.worker
        assert worker is not None and worker.sampler is not None
        await worker.sampler.sample()  # the ledger's gauges as of now, not 5 s ago
        ten = samples((await scrape(base + "/metrics"))[0])
        await _balances(base, [f"CUST-{i:05d}" for i in range(3000)] + ["NOBODY-1", "NOBODY-2"])
        await stack.settle()
        await worker.sampler.sample()
        many = samples((await scrape(base + "/metrics"))[0])
    # the ledger's currencies are the only series traffic adds (ISO codes: a handful)
    currencies = {k for k in ten if k.startswith("ledger_sidecar_ledger_trial_balance_minor")}
    assert set(ten) - currencies == set(before)
    assert set(many) == set(ten)
    assert len(many) <= SERIES_BUDGET, len(many)
    count = "ledger_sidecar_request_duration_seconds_count"
    assert value(many, count, operation="balance") == 10 + 3002
    assert value(many, count, operation="balance", account_tier="vip") == 10 + 10
    assert value(many, count, account_tier="standard", outcome="client_error") == 2
    watched = "ledger_sidecar_watched_account_request_duration_seconds_count"
    assert value(many, watched, watched_account="treasury", operation="balance") == 2
    compared = "ledger_sidecar_comparisons_total"
    assert value(many, compared, operation="balance") >= 3002
    assert value(many, compared, operation="bootstrap") > 0
