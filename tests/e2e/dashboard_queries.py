"""The queries of the committed dashboards (dashboards/*.json) and of the alert rules, as the
dashboard tests read them: which datasource, which expression, and the expression with
Grafana's variables replaced by values a parser or Prometheus accepts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser
import yaml

from tests.e2e.test_cli import ROOT

DASHBOARDS = ROOT / "dashboards"
RULE_FILES = (ROOT / "alerts" / "slo-rules.yml", ROOT / "alerts" / "sidecar-alerts.yml")
#: Grafana's own variables, as a query sees them on a 6-hour dashboard at a 15 s scrape
BUILT_INS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__auto": "1m",
    "__range": "6h",
    "__range_s": "21600",
    "__all": ".*",
}
#: $name, ${name}, ${name:format} and [[name]]
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    datasource: str  # the datasource's uid
    expr: str
    #: the expression with every variable replaced (see ``substituted``)
    concrete: str
    instant: bool = False


def dashboards() -> dict[str, dict[str, Any]]:
    """Every committed dashboard, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []  # a row's panels


def variables(board: dict[str, Any]) -> dict[str, str]:
    """The dashboard's variables, each with the value it starts with."""
    out: dict[str, str] = {}
    for variable in (board.get("templating") or {}).get("list") or []:
        current = (variable.get("current") or {}).get("value")
        if current == "$__all":
            current = variable.get("allValue") or ".*"
        out[variable["name"]] = str(current if current is not None else "")
    return out


def substituted(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return values.get(name, BUILT_INS.get(name, match.group(0)))

    return VARIABLE.sub(value, expr)


def used_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}


def queries() -> list[Query]:
    """Every panel target, annotation and query variable of every dashboard."""
    out: list[Query] = []
    for name, board in dashboards().items():
        values = variables(board)

        def add(
            panel: str,
            datasource: dict[str, Any] | None,
            expr: str,
            instant: bool,
            name: str = name,
            values: dict[str, str] = values,
        ) -> None:
            uid = (datasource or {}).get("uid", "")
            out.append(Query(name, panel, uid, expr, substituted(expr, values), instant))

        for panel in panels(board):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    source = target.get("datasource") or panel.get("datasource")
                    add(panel.get("title", ""), source, target["expr"], bool(target.get("instant")))
        for annotation in (board.get("annotations") or {}).get("list") or []:
            if annotation.get("expr"):
                add(
                    f"annotation {annotation['name']}",
                    annotation["datasource"],
                    annotation["expr"],
                    False,
                )
        for variable in (board.get("templating") or {}).get("list") or []:
            query = variable.get("query")
            if variable.get("type") == "query" and isinstance(query, dict):
                # Grafana's label_values(metric, label): the metric selector is PromQL
                inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query["query"])
                assert inner, f"{name}: variable {variable['name']}: {query['query']}"
                add(f"variable {variable['name']}", variable["datasource"], inner.group(1), True)
    return out


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, expression) of every recording and alerting rule."""
    return [
        (rule.get("record") or rule["alert"], rule["expr"])
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, from PromQL's syntax tree."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        elif isinstance(node, promql_parser.AggregateExpr):
            visit(node.expr)
            if node.param is not None:
                visit(node.param)
        elif isinstance(node, promql_parser.BinaryExpr):
            visit(node.lhs)
            visit(node.rhs)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                visit(arg)
        elif isinstance(
            node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
        ):
            visit(node.expr)

    visit(promql_parser.parse(expr))
    return names
