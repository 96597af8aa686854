"""The dashboards and rules against the real thing: Prometheus 2.42 (Debian's) scrapes a running
``ledger-sidecar serve`` in shadow mode (its applier in its own process) in front of the demo
legacy service under demo traffic, with the committed rule files loaded. Every PromQL
expression of every dashboard panel, annotation and variable, and every rule, is evaluated
through Prometheus's HTTP API without error; the overview's panels return data; and every
metric a dashboard or rule names is exposed by the sidecar or recorded by a rule."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.dashboard_queries import (
    RULE_FILES,
    metric_names,
    queries,
    recorded_names,
    rule_expressions,
)
from tests.e2e.processes import Processes
from tests.e2e.test_cli import ROOT, cli, schema  # noqa: F401 - the fixture
from tests.e2e.test_serve_telemetry import free_port, wait_until_answering

PROMETHEUS = shutil.which("prometheus")
MAPPING = ROOT / "config" / "mappings" / "example-legacy.toml"
#: series Prometheus itself makes for every target
SYNTHETIC = {"up"}
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("CI"),
    reason="prometheus not installed (apt-get install prometheus; CI installs it)",
)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def query(base: str, expr: str, **params: str) -> Any:
    """One PromQL query through the HTTP API (instant, or a range if ``start`` is given)."""
    path = "query_range" if "start" in params else "query"
    body = urllib.parse.urlencode({"query": expr, **params}).encode()
    request = urllib.request.Request(f"{base}/api/v1/{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with Prometheus's reason
        return json.loads(exc.read())


def exposed_names(exposition: str) -> set[str]:
    """Every series name a scrape of the sidecar holds, and the names its families imply
    (a histogram's _bucket, _sum and _count; a counter's _total) even before a first sample."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def test_prometheus_evaluates_every_dashboard_and_rule_expression_on_a_live_sidecar(
    schema: str,  # noqa: F811
    tmp_path: Path,
    processes: Processes,
) -> None:
    legacy_port, sidecar_port, prometheus_port = free_port(), free_port(), free_port()
    legacy_url = f"http://127.0.0.1:{legacy_port}"
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[database]\nschema = "{schema}"\n'
        f'[proxy]\nlegacy_url = "{legacy_url}"\nport = {sidecar_port}\nmode = "shadow"\n'
        f'mapping = "{MAPPING}"\n'
        '[telemetry.watch_accounts]\ntreasury = "CUST-00001"\n'
    )
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "LEDGER_SIDECAR_CONFIG": str(config)}
    env.pop("LEGACY_URL", None)
    python = [sys.executable, "-m", "sidecar.cli"]
    legacy = processes.start(
        "legacy",
        *python,
        "demo",
        "legacy",
        "--port",
        str(legacy_port),
        "--customers",
        "40",
        "--rounding",
        "0.02",
        "--wrong-balance",
        "0.02",
        env=env,
    )
    wait_until_answering(f"{legacy_url}/v1/accounts", legacy)
    sidecar = processes.start("sidecar", *python, "serve", env=env)
    wait_until_answering(f"{sidecar_url}/_sidecar/ready", sidecar)
    bootstrapped = cli("bootstrap", env=env)
    assert bootstrapped.returncode == 0, bootstrapped.stderr[-2000:]
    processes.start(
        "traffic",
        *python,
        "demo",
        "traffic",
        "--target",
        sidecar_url,
        "--seconds",
        "600",  # stopped with the rest at the end
        "--customers",
        "40",
        "--workers",
        "4",
        env=env,
    )

    scrape = tmp_path / "prometheus.yml"
    scrape.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "rule_files:\n" + "".join(f"  - {path}\n" for path in RULE_FILES) + "scrape_configs:\n"
        "  - job_name: ledger-sidecar\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{sidecar_port}']\n"
    )
    prometheus = processes.start(
        "prometheus",
        str(PROMETHEUS),
        f"--config.file={scrape}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
        "--enable-feature=exemplar-storage",
        env=env,
    )
    wait_until_answering(f"{prometheus_url}/-/ready", prometheus)

    # until Prometheus has seen comparisons happen (two scrapes apart) and evaluated the rules
    deadline = time.monotonic() + 90
    while True:
        flowing = query(prometheus_url, "sum(rate(ledger_sidecar_comparisons_total[1m])) > 0")
        groups = get(f"{prometheus_url}/api/v1/rules")["data"]["groups"]
        evaluated = groups and all(r["health"] != "unknown" for g in groups for r in g["rules"])
        if flowing["data"]["result"] and evaluated:
            break
        assert time.monotonic() < deadline, (
            flowing,
            (tmp_path / "sidecar.log").read_text()[-3000:],
        )
        assert sidecar.poll() is None, (tmp_path / "sidecar.log").read_text()[-3000:]
        time.sleep(1)

    # every rule loaded and evaluated without error
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(rule_expressions())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

    # every expression evaluates, as an instant query and over the last two minutes
    now = time.time()
    window = {"start": str(now - 120), "end": str(now), "step": "5"}
    failures: list[str] = []
    answers: dict[tuple[str, str, str], Any] = {}
    dashboard_exprs = [q for q in queries() if q.datasource == "prometheus"]
    assert len(dashboard_exprs) > 40
    for q in dashboard_exprs:
        for params in ({"time": str(now)}, window):
            answer = query(prometheus_url, q.concrete, **params)
            if answer["status"] != "success":
                failures.append(f"{q.dashboard} / {q.panel}: {answer.get('error')}\n  {q.concrete}")
        answers[(q.dashboard, q.panel, q.expr)] = query(prometheus_url, q.concrete, **window)
    for name, expr in rule_expressions():
        answer = query(prometheus_url, expr, time=str(now))
        if answer["status"] != "success":
            failures.append(f"rule {name}: {answer.get('error')}\n  {expr}")
    assert failures == []

    # the overview's panels all show data, and the comparison really runs
    overview = {k: v for k, v in answers.items() if k[0] == "ledger-sidecar-overview.json"}
    assert len(overview) >= 12
    assert [k[1] for k, v in overview.items() if not v["data"]["result"]] == []
    rate = next(v for k, v in overview.items() if k[1] == "Comparisons per second")
    assert max(float(value) for _, value in rate["data"]["result"][0]["values"]) > 0

    # every metric named is exposed by the sidecar (its applier's merged in) or recorded
    with urllib.request.urlopen(f"{sidecar_url}/metrics", timeout=30) as answer:
        exposed = exposed_names(answer.read().decode())
    known = exposed | recorded_names() | SYNTHETIC
    named = {
        (name, where)
        for where, expr in [(f"{q.dashboard} / {q.panel}", q.concrete) for q in dashboard_exprs]
        + [(f"rule {n}", e) for n, e in rule_expressions()]
        for name in metric_names(expr)
    }
    assert len({n for n, _ in named}) > 20
    assert sorted((n, w) for n, w in named if n not in known) == []
