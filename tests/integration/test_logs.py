"""JSON logs: one object per line, exactly one request_completed line per request carrying its
server span's trace id, one divergence line per mismatch with both values and the stream
offset, and sensitive fields kept out of logs, spans and stored divergence records."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import replace

import aiohttp
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sidecar.config import DatabaseSettings, Settings
from sidecar.demo.legacy import FaultRates
from sidecar.demo.shadow_demo import ShadowStack
from sidecar.telemetry.logs import configure_logging

from tests.integration.test_shadow import shadow_settings

PAYMENTS = 40
STABLE_KEYS = {"timestamp", "level", "logger", "message", "event", "service", "version"}
#: amounts (what the faults make differ), and a name and an IBAN every payment carries
SENSITIVE = ("amount", "name", "iban")
NAME, IBAN = "Ms Secret Holder", "DE89370400440532013000"


async def test_one_line_per_request_and_per_divergence_and_no_sensitive_value(
    settings: Settings, db: DatabaseSettings
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    # amounts are what the demo's faults make differ: naming them sensitive must hide them
    configured = replace(
        shadow_settings(settings, db),
        telemetry=replace(settings.telemetry, sensitive_fields=SENSITIVE),
    )
    configure_logging("INFO", out, sensitive=SENSITIVE)
    try:
        async with ShadowStack(
            configured, customers=10, tracer=provider.get_tracer("test")
        ) as stack:
            await stack.bootstrap()
            await stack.set_faults(FaultRates(rounding=0.5))
            out.truncate(0)
            out.seek(0)
            exporter.clear()
            async with aiohttp.ClientSession() as session:
                for n in range(PAYMENTS):
                    async with session.post(
                        stack.sidecar_url + f"/v1/accounts/CUST-0000{n % 5}/payments",
                        json={
                            "beneficiary": {
                                "account_number": f"CUST-0000{5 + n % 5}",
                                "name": NAME,
                                "iban": IBAN,
                            },
                            "amount": {"value": "10.05", "currency": "EUR"},
                        },
                        headers={"Idempotency-Key": f"log-{n}"},
                    ) as answer:
                        await answer.read()
            await stack.set_faults(FaultRates())
            await stack.settle()
            stored = await stack.comparisons().divergences(limit=1000)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert all(line.keys() >= STABLE_KEYS for line in lines)
    events = Counter(line["event"] for line in lines)
    completed = [line for line in lines if line["event"] == "request_completed"]
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(completed) == len(servers) == PAYMENTS
    assert {line["trace_id"] for line in completed} == {
        format(s.context.trace_id, "032x") for s in servers
    }
    one = completed[0]
    assert one["operation"] == "transfer" and one["mode"] == "shadow"
    assert one["account_id"].startswith("CUST-") and one["account_tier"] == "standard"
    assert one["latency_seconds"] >= one["legacy_latency_seconds"] > 0
    divergences = [line for line in lines if line["event"] == "divergence"]
    assert len(divergences) == len(stored) == events["divergence"] > 0
    for line in divergences:
        assert line["stream_offset"] > 0 and line["divergence_kind"]
        assert all({"field", "legacy", "ledger"} <= d.keys() for d in line["differences"])
    # the faults rounded amounts: the sensitive field's values are nowhere
    amounts = [d for line in divergences for d in line["differences"] if d["field"] == "amount"]
    assert amounts and all(d["legacy"] == d["ledger"] == "[redacted]" for d in amounts)
    kept = [d for r in stored for d in r["differences"] if d["field"] == "amount"]
    assert kept and all(d["legacy"] == d["ledger"] == "[redacted]" for d in kept)
    spans = exporter.get_finished_spans()
    said_by_spans = repr(
        [(dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]) for s in spans]
    )
    for secret in ("10.05", NAME, IBAN):
        assert secret not in out.getvalue()
        assert secret not in json.dumps(stored)
        assert secret not in said_by_spans
