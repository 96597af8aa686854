"""One scrape target for two processes: the proxy's families and the shadow worker's, merged
into one exposition with every series once."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sidecar.config import TelemetrySettings
from sidecar.telemetry.metrics import (
    SHADOW_OPERATIONS,
    AccountLabels,
    ProxyMetrics,
    Registry,
    ShadowMetrics,
    parse_openmetrics,
    render,
    shadow_operation,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def series(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_a_series_both_processes_expose_is_exposed_once_with_both_counts() -> None:
    proxy, worker = Registry(), Registry()
    proxy_metrics = ProxyMetrics(proxy, AccountLabels(TelemetrySettings()), "ledger-primary")
    shadow = ShadowMetrics(worker)
    # the ledger's decision on the customer path, and the worker's group for the same request
    proxy_metrics.upstream_duration.labels("ledger", "transfer", "success").observe(0.003)
    shadow.ledger_call("transfer", "success", 0.02)
    shadow.ledger_call("transfer", "success", 0.04)
    worker_text = render(worker, OPENMETRICS)[0].decode()
    text = render(proxy, None, parse_openmetrics(worker_text))[0].decode()
    found = series(text)
    keys = [(name, labels) for name, labels, _ in found]
    assert len(keys) == len(set(keys))  # Prometheus refuses a scrape with a series twice
    count = {
        (name, labels): value
        for name, labels, value in found
        if name == "ledger_sidecar_upstream_duration_seconds_count"
    }
    wanted = (("operation", "transfer"), ("outcome", "success"), ("upstream", "ledger"))
    assert count[("ledger_sidecar_upstream_duration_seconds_count", wanted)] == 3


def test_the_workers_operation_label_is_bounded() -> None:
    assert shadow_operation("transfer") == "transfer"
    assert shadow_operation("bootstrap_plan") == "bootstrap"
    assert shadow_operation("bootstrap_read") == "bootstrap"
    assert shadow_operation("bootstrap_snapshot") == "bootstrap"
    assert shadow_operation("") == "unknown"
    assert shadow_operation("no-such-route") == "unknown"
    assert {"bootstrap", "unknown"} <= set(SHADOW_OPERATIONS)
    worker = Registry()
    shadow = ShadowMetrics(worker)
    before = {(name, labels) for name, labels, _ in series(render(worker, None)[0].decode())}
    shadow.compared("bootstrap_read", "match", (), 0.5, None)
    shadow.compared("whatever", "mismatch", ("amount",), 0.5, None)
    shadow.ledger_call("bootstrap_plan", "success", 0.01)
    after = {(name, labels) for name, labels, _ in series(render(worker, None)[0].decode())}
    assert after == before  # every label set was there, at zero, before the first comparison
