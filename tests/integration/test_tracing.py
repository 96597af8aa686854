"""Traces: the span tree of a mirrored request (server span, capture, the legacy call, and the
shadow worker's apply and compare in the same trace), traceparent sent to the legacy service,
nothing sensitive in attributes, and OTEL_* configuration. In-memory exporter, real
PostgreSQL, the demo legacy service over HTTP."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sidecar.app import Sidecar
from sidecar.config import DatabaseSettings, Settings
from sidecar.demo.shadow_demo import MAPPING, ShadowStack
from sidecar.errors import ConfigError
from sidecar.telemetry.tracing import _exporter, provider_from_environ

from tests.integration.test_shadow import shadow_settings

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


def recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_a_mirrored_request_is_one_trace_from_proxy_to_comparison(
    settings: Settings, db: DatabaseSettings
) -> None:
    provider, exporter = recording()
    stack_settings = shadow_settings(settings, db)
    async with ShadowStack(
        stack_settings, customers=10, tracer=provider.get_tracer("test")
    ) as stack:
        await stack.bootstrap()
        exporter.clear()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                stack.sidecar_url + "/v1/accounts/CUST-00001/payments",
                json={
                    "beneficiary": {"account_number": "CUST-00002"},
                    "amount": {"value": "12.34", "currency": "EUR"},
                    "reference": "Ms Secret",
                },
                headers={"Idempotency-Key": "trace-1", "traceparent": CLIENT_PARENT},
            ) as answer,
        ):
            assert answer.status in (200, 201), await answer.text()
        await stack.settle()
        async with aiohttp.ClientSession() as session:
            metrics_url = stack.sidecar_url + "/metrics"
            om = "application/openmetrics-text; version=1.0.0"
            async with session.get(metrics_url, headers={"Accept": om}) as scraped:
                exposition = await scraped.text()
            async with session.get(metrics_url) as scraped:  # the classic text format
                classic = await scraped.text()
    spans = list(exporter.get_finished_spans())
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["POST /v1/accounts/{account}/payments"]
    server = servers[0]
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE  # the caller's trace
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/accounts/{account}/payments"
    assert server.attributes["ledger_sidecar.operation"] == "transfer"
    names = sorted(s.name for s in children(spans, server))
    assert names == ["apply", "capture intent", "capture outcome", "compare", "legacy POST"]
    assert {s.context.trace_id for s in spans if s.name != "capture snapshot"} == {
        server.context.trace_id
    }
    # exemplars: the request's latency and its comparison's lag point at its trace
    exemplified = {
        line.split("{")[0]
        for line in exposition.splitlines()
        if f'# {{trace_id="{CLIENT_TRACE}"}}' in line
    }
    assert {
        "ledger_sidecar_request_duration_seconds_bucket",
        "ledger_sidecar_upstream_duration_seconds_bucket",
        "ledger_sidecar_shadow_lag_seconds_bucket",
    } <= exemplified
    assert "trace_id" not in classic  # exemplars only where Prometheus asked for OpenMetrics
    (compare,) = [s for s in spans if s.name == "compare"]
    assert compare.attributes is not None
    assert compare.attributes["ledger_sidecar.comparison.outcome"] == "match"
    # no amounts, bodies or account ids in any attribute
    said = repr([dict(s.attributes or {}) for s in spans])
    for secret in ("12.34", "1234", "Ms Secret", "CUST-00001", "CUST-00002"):
        assert secret not in said


async def test_the_legacy_service_receives_the_trace(
    settings: Settings, db: DatabaseSettings
) -> None:
    seen: list[str] = []

    async def legacy(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", legacy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    provider, exporter = recording()
    proxy = replace(
        settings.proxy,
        legacy_url=f"http://127.0.0.1:{runner.addresses[0][1]}",
        port=0,
        mode="legacy",
        mapping=str(MAPPING),
    )
    sidecar = Sidecar(
        replace(settings, database=db, proxy=proxy), tracer=provider.get_tracer("test")
    )
    await sidecar.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{sidecar.port}/v1/accounts/A-1/balance") as answer,
        ):
            assert answer.status == 200
    finally:
        await sidecar.stop()
        await runner.cleanup()
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    trace_id = format(client.context.trace_id, "032x")
    (sent,) = seen
    assert sent.startswith(f"00-{trace_id}-{client.context.span_id:016x}-")  # then the flags


def test_tracing_is_configured_by_the_otel_variables_only() -> None:
    assert provider_from_environ({"OTEL_SDK_DISABLED": "true"}) is None
    assert _exporter({}) is None  # no endpoint: spans for logs and exemplars, no export noise
    assert _exporter({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert isinstance(_exporter(endpoint), Http)
    grpc = {**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert isinstance(_exporter(grpc), Grpc)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        _exporter({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    quiet = provider_from_environ({})  # no endpoint: ids without recording
    assert quiet is not None
    with quiet.get_tracer("t").start_as_current_span("s") as span:
        assert span.get_span_context().is_valid and not span.is_recording()
    named = provider_from_environ({"OTEL_SERVICE_NAME": "shadow-eu"})
    assert named is not None and named.resource.attributes["service.name"] == "shadow-eu"
    plain = provider_from_environ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=eu"})
    assert plain is not None and plain.resource.attributes["service.name"] == "ledger-sidecar"
    assert plain.resource.attributes["deployment.environment"] == "eu"
