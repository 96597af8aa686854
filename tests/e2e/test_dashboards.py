"""The dashboards in dashboards/: generated and committed unchanged, read back whole by the
library's own model, with unique uids the alerts link to, only provisioned datasources, only
defined variables, and every PromQL and LogQL expression accepted by a real parser (PromQL:
promql-parser; LogQL: Grafana's own grammar, @grafana/lezer-logql, run by Node)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.e2e.dashboard_queries import (
    BUILT_INS,
    DASHBOARDS,
    RULE_FILES,
    dashboards,
    panels,
    queries,
    used_variables,
    variables,
)
from tests.e2e.test_cli import ROOT

PROVISIONED = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources.yml").read_text())
UIDS = {d["uid"]: d["type"] for d in PROVISIONED["datasources"]}
LOGQL = ROOT / "tests" / "logql"
NODE = shutil.which("node")


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    run = subprocess.run(
        [sys.executable, str(DASHBOARDS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert len(dashboards()) >= 6


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_each_dashboard_reads_back_whole_through_the_librarys_model(name: str) -> None:
    register_default_plugins()  # panel options and queries are read as their own types
    data = dashboards()[name]
    model = Dashboard.from_json(data)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == data
    assert all(type(p.options).__module__ != "builtins" for p in model.panels or [] if p.options)


def test_uids_are_unique_and_every_alert_links_to_an_existing_dashboard() -> None:
    uids = [board["uid"] for board in dashboards().values()]
    assert len(uids) == len(set(uids))
    for name, board in dashboards().items():
        assert name == f"{board['uid']}.json"
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), name
    links = {
        rule["annotations"]["dashboard_url"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert links and links <= {f"/d/{uid}" for uid in uids}


def datasource_refs(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every ``datasource`` value anywhere in a dashboard, with where it was."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((where, value))
            found += datasource_refs(value, f"{where}/{node.get('title', key)}")
    elif isinstance(node, list):
        for item in node:
            found += datasource_refs(item, where)
    return found


def test_every_datasource_reference_is_a_provisioned_uid_of_its_type() -> None:
    assert set(UIDS) == {"prometheus", "loki", "tempo", "alertmanager"}
    for name, board in dashboards().items():
        refs = datasource_refs(board)
        assert refs, name
        for where, ref in refs:
            assert isinstance(ref, dict), f"{name}{where}: {ref!r} is not a uid reference"
            assert UIDS.get(ref.get("uid")) == ref.get("type"), f"{name}{where}: {ref}"


def test_the_exemplar_and_trace_id_links_lead_to_tempo() -> None:
    by_uid = {d["uid"]: d for d in PROVISIONED["datasources"]}
    exemplars = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert [e["datasourceUid"] for e in exemplars] == ["tempo"]
    assert exemplars[0]["name"] == "trace_id"  # the exemplar label the sidecar sets
    derived = by_uid["loki"]["jsonData"]["derivedFields"]
    assert [d["datasourceUid"] for d in derived] == ["tempo"]
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    line = json.dumps({"event": "divergence", "trace_id": trace})  # as the sidecar writes it
    found = re.search(derived[0]["matcherRegex"], line)
    assert found is not None and found.group(1) == trace


def test_every_variable_used_is_defined_and_every_defined_one_used() -> None:
    for name, board in dashboards().items():
        defined = set(variables(board))
        text = json.dumps([board.get("panels"), board.get("annotations"), board.get("title")])
        used = used_variables(text)
        assert used - defined - set(BUILT_INS) == set(), name
        assert defined - used == set(), f"{name}: variables nothing uses"


def test_every_promql_expression_parses() -> None:
    checked = 0
    for query in queries():
        if query.datasource != "prometheus":
            continue
        try:
            promql_parser.parse(query.concrete)
        except ValueError as exc:
            pytest.fail(f"{query.dashboard} / {query.panel}: {exc}\n{query.expr}")
        checked += 1
    assert checked > 40
    with pytest.raises(ValueError, match="unclosed"):  # the parser is not a rubber stamp
        promql_parser.parse("sum(rate(ledger_sidecar_comparisons_total[5m])")


def logql_errors(expressions: list[str]) -> list[list[int]]:
    """Offsets of syntax errors per expression, from Grafana's LogQL grammar."""
    run = subprocess.run(
        [str(NODE), str(LOGQL / "parse.cjs")],
        input=json.dumps(expressions),
        capture_output=True,
        text=True,
        check=True,
        cwd=LOGQL,
    )
    errors: list[list[int]] = json.loads(run.stdout)
    return errors


@pytest.mark.skipif(
    (NODE is None or not (LOGQL / "node_modules").exists()) and not os.environ.get("CI"),
    reason="Node.js or tests/logql/node_modules missing (scripts/test installs it with npm ci)",
)
def test_every_logql_expression_parses() -> None:
    logql = [q for q in queries() if q.datasource == "loki"]
    assert len(logql) >= 10
    errors = logql_errors([q.concrete for q in logql])
    bad = [(q.dashboard, q.panel, q.concrete, e) for q, e in zip(logql, errors, strict=True) if e]
    assert bad == []
    assert logql_errors(['{service="ledger-sidecar"} | json | event=', '{a="b" | json']) == [
        [42],
        [7],
    ]
