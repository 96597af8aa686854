"""Generate the Grafana dashboards as code (grafana-foundation-sdk, pinned in pyproject.toml).

    python dashboards/generate.py           # write dashboards/*.json
    python dashboards/generate.py --check   # exit 1, naming the file, if the committed ones differ

Six dashboards, each described panel by panel in docs/dashboards.md: the shadow comparison
overview, divergence investigation, per-account latency, SLOs and error budgets, ledger
health, and cutover. Queries name only the sidecar's own metrics (docs/observability.md), the
recording rules of alerts/slo-rules.yml, and the sidecar's JSON log lines as the compose
stack ships them to Loki (labels ``service``, ``event``, ``level``; everything else through
``| json``). Datasources are the fixed uids of dashboards/provisioning/datasources.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    dashboard,
    logs,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as options
from grafana_foundation_sdk.builders import loki as loki_query
from grafana_foundation_sdk.builders import prometheus as prom_query
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

OUT = Path(__file__).resolve().parent
ROOT = OUT.parent
DOC = ROOT / "docs" / "dashboards.md"
P = "ledger_sidecar_"
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="prometheus")
LOKI = model.DataSourceRef(type_val="loki", uid="loki")
#: the sidecar's log lines in Loki (compose/config.alloy makes these the stream labels)
LOGS = '{service="ledger-sidecar", event="%s"}'
#: the dashboards' uids; alerts/generate.py links to the first four
UIDS = {
    "overview": "ledger-sidecar-overview",
    "divergences": "ledger-sidecar-divergences",
    "account": "ledger-sidecar-account",
    "slo": "ledger-sidecar-slo",
    "ledger": "ledger-sidecar-ledger",
    "cutover": "ledger-sidecar-cutover",
}
RANGE = "[$__rate_interval]"
MONETARY = "amount|balance|currency|status|missing_in_ledger|missing_in_legacy"

Panel = cogbuilder.Builder[model.Panel]


# --- queries ------------------------------------------------------------------------------


def promql(
    expr: str, legend: str = "", *, instant: bool = False, exemplar: bool = False
) -> prom_query.Dataquery:
    query = (
        prom_query.Dataquery().expr(expr).datasource(PROMETHEUS).legend_format(legend or "__auto")
    )
    table_ = prom_model.PromQueryFormat.TABLE
    query = query.instant().format(table_) if instant else query.range()
    return query.exemplar(True) if exemplar else query


def logql(expr: str, legend: str = "", *, instant: bool = False) -> loki_query.Dataquery:
    query = loki_query.Dataquery().expr(expr).datasource(LOKI)
    if legend:
        query = query.legend_format(legend)
    if instant:
        query = query.instant(True).range(False)
    return query


def quantile(q: float, metric: str, by: str = "", matchers: str = "") -> str:
    """The q-quantile of a histogram over the rate interval, by ``by`` labels."""
    labels = ", ".join(["le", *[b.strip() for b in by.split(",") if b.strip()]])
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"(rate({P}{metric}_bucket{{{matchers}}}{RANGE})))"
    )


def p50_p99(
    metric: str, by: str = "", matchers: str = "", *, exemplar: bool = False
) -> list[prom_query.Dataquery]:
    """The median and the 99th percentile of a histogram, legended ``p50 {{by}}`` and so on."""
    legend = f" {{{{{by}}}}}" if by else ""
    return [
        promql(quantile(q, metric, by, matchers), f"{name}{legend}", exemplar=exemplar)
        for q, name in ((0.5, "p50"), (0.99, "p99"))
    ]


# --- panels -------------------------------------------------------------------------------


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def graph(
    title: str,
    description: str,
    targets: Sequence[prom_query.Dataquery | loki_query.Dataquery],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    datasource: model.DataSourceRef = PROMETHEUS,
    limits: dashboard.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(
            options.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(options.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    if stacked:
        panel = panel.stacking(options.StackingConfig().mode(common.StackingMode.NORMAL))
    if limits is not None:
        panel = panel.thresholds(limits).thresholds_style(
            options.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        panel = panel.with_target(target.ref_id(ref))
    return panel


def single(
    title: str,
    description: str,
    target: prom_query.Dataquery,
    *,
    unit: str = "short",
    width: int = 4,
    limits: dashboard.ThresholdsConfig | None = None,
    mappings: list[model.ValueMapping] | None = None,
    decimals: float | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(4)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(options.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(target.ref_id("A"))
    )
    if limits is not None:
        panel = panel.thresholds(limits)
    if mappings:
        panel = panel.mappings(mappings)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def log_lines(
    title: str, description: str, expr: str, *, width: int = 24, height: int = 12
) -> logs.Panel:
    return (
        logs.Panel()
        .title(title)
        .description(description)
        .datasource(LOKI)
        .span(width)
        .height(height)
        .show_time(True)
        .wrap_log_message(True)
        .prettify_log_message(False)
        .enable_log_details(True)
        .sort_order(common.LogsSortOrder.DESCENDING)
        .dedup_strategy(common.LogsDedupStrategy.NONE)
        .with_target(logql(expr).ref_id("A"))
    )


def ranking(
    title: str,
    description: str,
    target: prom_query.Dataquery | loki_query.Dataquery,
    *,
    datasource: model.DataSourceRef,
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .span(width)
        .height(height)
        .with_target(target.ref_id("A"))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}, "renameByName": {"Value": "count"}},
            )
        )
        .sort_by([options.TableSortByFieldState().display_name("count").desc(True)])
        .align(common.FieldTextAlignment.AUTO)
        .inspect(False)
    )


def budget_gauge(title: str, description: str, expr: str) -> bargauge.Panel:
    """Each SLO's share of error budget left, as bars: red below 25 %, green from 50 %."""
    return (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .span(8)
        .height(8)
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.25, "orange"), (0.5, "green")))
        .display_mode(common.BarGaugeDisplayMode.LCD)
        .orientation(common.VizOrientation.HORIZONTAL)
        .with_target(promql(expr, "{{slo}}", instant=True).ref_id("A"))
    )


def board(key: str, title: str, description: str, tags: Sequence[str] = ()) -> dashboard.Dashboard:
    """A dashboard with the shared settings: uid, tags, refresh, links to the others."""
    return (
        dashboard.Dashboard(title)
        .uid(UIDS[key])
        .description(description)
        .tags(["ledger-sidecar", *tags])
        .editable()
        .timezone("utc")
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("Ledger sidecar")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(["ledger-sidecar"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )


def operation_variable() -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable("operation")
        .label("Operation")
        .datasource(PROMETHEUS)
        .query({"query": f"label_values({P}comparisons_total, operation)", "refId": "operation"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )


def zero_is_good() -> dashboard.ThresholdsConfig:
    return thresholds((None, "green"), (1, "red"))


# --- the dashboards -----------------------------------------------------------------------


def overview() -> dashboard.Dashboard:
    op = 'operation=~"$operation"'
    compared = f'{P}comparisons_total{{outcome!="skipped", {op}}}'
    return (
        board(
            "overview",
            "Ledger sidecar: shadow comparison overview",
            "Does the new ledger agree with the legacy one, how much is compared, and how far "
            "behind the comparison runs.",
            ["shadow"],
        )
        .with_variable(operation_variable())
        .with_panel(
            single(
                "Match rate",
                "Comparisons that matched, of all compared (skipped ones excluded), over the "
                "dashboard's time range.",
                promql(
                    f'sum(increase({P}comparisons_total{{outcome="match", {op}}}[$__range])) '
                    f"/ sum(increase({compared}[$__range]))",
                    instant=True,
                ),
                unit="percentunit",
                decimals=3,
                limits=thresholds((None, "red"), (0.99, "orange"), (0.999, "green")),
            )
        )
        .with_panel(
            single(
                "Monetary divergences",
                "Comparisons with a monetary kind (amount, balance, currency, status, missing) "
                "over the time range. Any one pages (LedgerSidecarMonetaryDivergence).",
                promql(
                    f"sum(increase({P}monetary_divergences_total{{{op}}}[$__range]))",
                    instant=True,
                ),
                decimals=0,
                limits=zero_is_good(),
            )
        )
        .with_panel(
            single(
                "Comparisons per second",
                "Mirrored requests compared per second, now.",
                promql(f"sum(rate({compared}{RANGE}))"),
                unit="reqps",
            )
        )
        .with_panel(
            single(
                "Shadow lag p99",
                "Legacy answer recorded to comparison committed, 99th percentile. The "
                "freshness SLO's threshold is 30 s.",
                promql(quantile(0.99, "shadow_lag_seconds", matchers=op)),
                unit="s",
                limits=thresholds((None, "green"), (5, "orange"), (30, "red")),
            )
        )
        .with_panel(
            single(
                "Mirror backlog",
                "Stream records captured but not yet applied and compared.",
                promql(f"max({P}mirror_backlog_events)"),
                limits=thresholds((None, "green"), (1000, "orange"), (10000, "red")),
            )
        )
        .with_panel(
            single(
                "Capture drops",
                "Shadow copies dropped (the customer was answered; the comparison is lost) "
                "over the time range, every reason.",
                promql(f"sum(increase({P}capture_dropped_records_total[$__range]))", instant=True),
                decimals=0,
                limits=zero_is_good(),
            )
        )
        .with_panel(
            graph(
                "Match rate by operation",
                "Matched over compared, per operation.",
                [
                    promql(
                        f'sum by (operation) (rate({P}comparisons_total{{outcome="match", {op}}}'
                        f"{RANGE})) / sum by (operation) (rate({compared}{RANGE}))",
                        "{{operation}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            graph(
                "Comparisons by outcome",
                "match, mismatch, legacy_error, ledger_error, skipped: how the comparison "
                "volume splits.",
                [
                    promql(
                        f"sum by (outcome) (rate({P}comparisons_total{{{op}}}{RANGE}))",
                        "{{outcome}}",
                    )
                ],
                unit="ops",
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Divergences by kind",
                "Kinds found in mismatches per second; order_dependent is named noise (another "
                "order of concurrent requests explains it), the rest are real differences.",
                [
                    promql(
                        f"sum by (kind) (rate({P}divergences_total{{{op}}}{RANGE}))",
                        "{{kind}}",
                    )
                ],
                unit="ops",
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Legacy vs ledger latency",
                "p50 and p99 of the legacy call per request and of the ledger's group "
                "transaction. Exemplars link to the request's trace.",
                p50_p99("upstream_duration_seconds", "upstream", op, exemplar=True),
                unit="s",
            )
        )
        .with_panel(
            graph(
                "Customer latency through the sidecar",
                "Arrival to answer, p50 and p99, by mode. The latency SLO's threshold is "
                "0.25 s. Exemplars link to the request's trace.",
                p50_p99("request_duration_seconds", "mode", op, exemplar=True),
                unit="s",
                limits=thresholds((None, "green"), (0.25, "red")),
            )
        )
        .with_panel(
            graph(
                "Shadow lag",
                "Legacy answer recorded to comparison committed, on the database's clock.",
                p50_p99("shadow_lag_seconds", matchers=op, exemplar=True),
                unit="s",
                limits=thresholds((None, "green"), (30, "red")),
            )
        )
        .with_panel(
            graph(
                "Capture and backlog",
                "Records committed to the mirror stream per second, drops by reason, records "
                "waiting to be applied, and requests in doubt.",
                [
                    promql(
                        f'sum(rate({P}capture_records_total{{result="committed"}}{RANGE}))',
                        "committed/s",
                    ),
                    promql(
                        f"sum by (reason) (rate({P}capture_dropped_records_total{RANGE}))",
                        "dropped/s {{reason}}",
                    ),
                    promql(f"max({P}mirror_backlog_events)", "backlog"),
                    promql(f"max({P}in_doubt_requests)", "in doubt"),
                ],
            )
        )
    )


def divergences() -> dashboard.Dashboard:
    account = 'account_id=~"$account"'
    return (
        board(
            "divergences",
            "Ledger sidecar: divergence investigation",
            "What differed, on which accounts, with the divergence log lines (both values of "
            "each differing field, the stream offset) and a link from each to its trace.",
            ["shadow"],
        )
        .with_variable(operation_variable())
        .with_variable(
            dashboard.TextBoxVariable("account")
            .label("Account id (regex)")
            .description("Narrows the Loki panels to matching account ids; .* for all.")
            .default_value(".*")
            .current(model.VariableOption(selected=True, text=".*", value=".*"))
        )
        .with_panel(
            graph(
                "Monetary divergences by operation",
                "Comparisons with a monetary kind per second; each one pages.",
                [
                    promql(
                        f"sum by (operation) "
                        f'(rate({P}monetary_divergences_total{{operation=~"$operation"}}{RANGE}))',
                        "{{operation}}",
                    )
                ],
                unit="ops",
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Divergences by kind",
                "Every kind found in mismatches, per second.",
                [
                    promql(
                        f"sum by (kind) "
                        f'(rate({P}divergences_total{{operation=~"$operation"}}{RANGE}))',
                        "{{kind}}",
                    )
                ],
                unit="ops",
                stacked=True,
            )
        )
        .with_panel(
            ranking(
                "Top accounts by divergences",
                "Accounts with the most divergence lines over the time range (from Loki: "
                "account ids are never Prometheus labels).",
                logql(
                    "topk(15, sum by (account_id) (count_over_time("
                    + LOGS % "divergence"
                    + f' | json | {account} | operation=~"$operation" [$__range])))',
                    instant=True,
                ),
                datasource=LOKI,
                width=8,
            )
        )
        .with_panel(
            ranking(
                "Top accounts by monetary divergences",
                "The same, monetary kinds only.",
                logql(
                    "topk(15, sum by (account_id) (count_over_time("
                    + LOGS % "divergence"
                    + f' | json | {account} | divergence_kind=~".*({MONETARY}).*" [$__range])))',
                    instant=True,
                ),
                datasource=LOKI,
                width=8,
            )
        )
        .with_panel(
            ranking(
                "Divergences by route",
                "Divergence lines per legacy route over the time range.",
                logql(
                    "sum by (route) (count_over_time("
                    + LOGS % "divergence"
                    + f" | json | {account} [$__range]))",
                    instant=True,
                ),
                datasource=LOKI,
                width=8,
            )
        )
        .with_panel(
            log_lines(
                "Divergence lines",
                "One line per mismatched comparison: operation, account, kinds, stream offset, "
                "both values of each differing field. Open a line for its trace (Tempo).",
                LOGS % "divergence" + f' | json | {account} | operation=~"$operation"',
                height=14,
            )
        )
        .with_panel(
            log_lines(
                "Capture drops and requests in doubt",
                "Shadow copies dropped (with their reason) and requests in doubt as they are "
                "resolved.",
                '{service="ledger-sidecar", event=~"capture_dropped|in_doubt"} | json',
                height=8,
            )
        )
    )


def account_latency() -> dashboard.Dashboard:
    lines = LOGS % "request_completed" + ' | json | account_id="$account_id"'
    return (
        board(
            "account",
            "Ledger sidecar: per-account latency",
            "One account's request latency from its request_completed log lines in Loki "
            "(an account id is never a Prometheus label), beside its tier's and the watched "
            "accounts' histograms.",
            ["latency"],
        )
        .with_variable(
            dashboard.TextBoxVariable("account_id")
            .label("Account id")
            .description("The exact account id, as in the legacy API's paths and bodies.")
            .default_value("CUST-00001")
            .current(model.VariableOption(selected=True, text="CUST-00001", value="CUST-00001"))
        )
        .with_panel(
            graph(
                "Latency of $account_id",
                "p50 and p99 of this account's requests through the sidecar, per operation "
                "(Loki: quantile_over_time over latency_seconds).",
                [
                    logql(
                        f"quantile_over_time(0.5, {lines} | unwrap latency_seconds [$__auto])"
                        " by (operation)",
                        "p50 {{operation}}",
                    ),
                    logql(
                        f"quantile_over_time(0.99, {lines} | unwrap latency_seconds [$__auto])"
                        " by (operation)",
                        "p99 {{operation}}",
                    ),
                ],
                unit="s",
                datasource=LOKI,
                limits=thresholds((None, "green"), (0.25, "red")),
            )
        )
        .with_panel(
            graph(
                "Legacy share of $account_id's latency",
                "p99 of the legacy call alone, for this account's requests.",
                [
                    logql(
                        f"quantile_over_time(0.99, {lines} | unwrap legacy_latency_seconds"
                        " [$__auto]) by (operation)",
                        "legacy p99 {{operation}}",
                    )
                ],
                unit="s",
                datasource=LOKI,
            )
        )
        .with_panel(
            graph(
                "Requests of $account_id by outcome",
                "This account's requests per interval, by outcome.",
                [
                    logql(
                        f"sum by (outcome) (count_over_time({lines} [$__auto]))",
                        "{{outcome}}",
                    )
                ],
                datasource=LOKI,
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "p99 by account tier",
                "The tiers of telemetry.account_tiers, for comparison with the account above.",
                [
                    promql(
                        quantile(0.99, "request_duration_seconds", "account_tier"),
                        "{{account_tier}}",
                        exemplar=True,
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            graph(
                "p99 of watched accounts",
                "The accounts of telemetry.watch_accounts (at most 20), by their names.",
                [
                    promql(
                        quantile(
                            0.99, "watched_account_request_duration_seconds", "watched_account"
                        ),
                        "{{watched_account}}",
                        exemplar=True,
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            log_lines(
                "Requests of $account_id",
                "Its request_completed lines: operation, outcome, status, latencies, trace.",
                lines,
                height=12,
            )
        )
    )


def slos() -> dashboard.Dashboard:
    budget = "ledger_sidecar:slo_error_budget_remaining:ratio30d"
    return (
        board(
            "slo",
            "Ledger sidecar: SLOs and error budgets",
            "The five SLOs of sidecar/slo.toml: 30-day attainment from counters, error budget "
            "left, and burn rates over the alerting windows.",
            ["slo"],
        )
        .with_panel(
            ranking(
                "Attainment over 30 days",
                "1 minus bad events over all events in 30 days (increase of counters), beside "
                "the objective.",
                promql(
                    "1 - ledger_sidecar:slo_error_ratio:increase30d",
                    "{{slo}}",
                    instant=True,
                ),
                datasource=PROMETHEUS,
                width=8,
            )
            .unit("percentunit")
            .decimals(4)
        )
        .with_panel(
            budget_gauge(
                "Error budget left (Prometheus)",
                "Share of each SLO's 30-day error budget not spent, from Prometheus's "
                "counters. Below 25% the release channel is told; below 0 it is overspent.",
                budget,
            )
        )
        .with_panel(
            budget_gauge(
                "Error budget left (the sidecar's durable counts)",
                "The same from the sidecar's own per-minute counts in PostgreSQL "
                "(ledger-sidecar slo): survives a Prometheus restart or gap.",
                f"max by (slo) ({P}slo_error_budget_remaining_ratio)",
            )
        )
        .with_panel(
            graph(
                "Burn rate over 1 hour",
                "Error ratio over the budget (1 - objective). 14.4 over 1 h (and 5 m) pages.",
                [
                    promql(
                        "ledger_sidecar:slo_error_ratio:rate1h / on (slo) "
                        "(1 - ledger_sidecar:slo_objective:ratio)",
                        "{{slo}}",
                    )
                ],
                limits=thresholds((None, "green"), (6, "orange"), (14.4, "red")),
            )
        )
        .with_panel(
            graph(
                "Burn rate over 6 hours",
                "6 over 6 h (and 30 m) pages; 3 over 1 d (and 2 h) opens a ticket.",
                [
                    promql(
                        "ledger_sidecar:slo_error_ratio:rate6h / on (slo) "
                        "(1 - ledger_sidecar:slo_objective:ratio)",
                        "{{slo}}",
                    )
                ],
                limits=thresholds((None, "green"), (3, "orange"), (6, "red")),
            )
        )
        .with_panel(
            graph(
                "Error budget left over time",
                "How the 30-day budget is being spent.",
                [promql(budget, "{{slo}}")],
                unit="percentunit",
            )
        )
        .with_panel(
            graph(
                "Events per second",
                "Each SLO's events (its denominator): the low-traffic guard keeps a page from "
                "firing on a handful of them.",
                [promql("ledger_sidecar:slo_events:rate5m", "{{slo}}")],
                unit="ops",
            )
        )
    )


def ledger_health() -> dashboard.Dashboard:
    return (
        board(
            "ledger",
            "Ledger sidecar: ledger health",
            "The new ledger's writes: posting throughput, batch sizes, commit durations, the "
            "event log's head and the trial balance (which must read zero).",
            ["ledger"],
        )
        .with_panel(
            single(
                "Trial balance",
                "Sum of all balances signed by normal side, per currency, in minor units. "
                "Anything but 0 pages (LedgerSidecarTrialBalanceNotZero).",
                promql(f"{P}ledger_trial_balance_minor", "{{currency}}"),
                limits=thresholds((None, "red"), (0, "green"), (1, "red")),
                width=8,
            )
        )
        .with_panel(
            single(
                "Event log head",
                "Seq of the ledger event log's last event.",
                promql(f"max({P}ledger_event_log_head)"),
                width=8,
            )
        )
        .with_panel(
            single(
                "Shadow worker",
                "1 if the applier's process answered the last scrape.",
                promql(f"min({P}shadow_worker_up)"),
                limits=thresholds((None, "red"), (1, "green")),
                mappings=[
                    model.ValueMap(
                        options={
                            "0": model.ValueMappingResult(text="down", color="red"),
                            "1": model.ValueMappingResult(text="up", color="green"),
                        }
                    )
                ],
                width=8,
            )
        )
        .with_panel(
            graph(
                "Posting throughput",
                "Ledger commands applied per second, and groups (one transaction each).",
                [
                    promql(f"sum(rate({P}ledger_batch_commands_sum{RANGE}))", "commands/s"),
                    promql(f"sum(rate({P}applier_groups_total{RANGE}))", "groups/s"),
                    promql(f"sum(rate({P}applier_retries_total{RANGE}))", "retries/s"),
                ],
                unit="ops",
            )
        )
        .with_panel(
            graph(
                "Batch size",
                "Commands per applied group: p50, p99 and the mean.",
                [
                    *p50_p99("ledger_batch_commands"),
                    promql(
                        f"sum(rate({P}ledger_batch_commands_sum{RANGE})) "
                        f"/ sum(rate({P}ledger_batch_commands_count{RANGE}))",
                        "mean",
                    ),
                ],
            )
        )
        .with_panel(
            graph(
                "Commit duration",
                "One group's transaction: ledger writes, reads, comparisons and the stream offset.",
                p50_p99("ledger_commit_duration_seconds"),
                unit="s",
            )
        )
        .with_panel(
            graph(
                "Event log and mirror stream",
                "Ledger events and stream records per second (the heads' growth) and the "
                "records not yet applied.",
                [
                    promql(f"max(deriv({P}ledger_event_log_head[5m]))", "ledger events/s"),
                    promql(f"max(deriv({P}mirror_stream_head[5m]))", "stream records/s"),
                    promql(f"max({P}mirror_backlog_events)", "backlog"),
                ],
            )
        )
        .with_panel(
            graph(
                "Trial balance over time",
                "Must stay on zero for every currency.",
                [promql(f"{P}ledger_trial_balance_minor", "{{currency}}")],
                limits=thresholds((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            graph(
                "Database pools",
                "Connections in use against the pool's maximum, per pool.",
                [
                    promql(
                        f'max by (pool) ({P}db_pool_connections{{state="in_use"}})',
                        "in use {{pool}}",
                    ),
                    promql(
                        f'max by (pool) ({P}db_pool_connections{{state="max"}})', "max {{pool}}"
                    ),
                ],
            )
        )
    )


def cutover() -> dashboard.Dashboard:
    consistency = 'slo="shadow_consistency"'
    return (
        board(
            "cutover",
            "Ledger sidecar: cutover",
            "For the release manager: which mode answers customers (the default and each "
            "cohort), what the comparison says about flipping, and each flag change as an "
            "annotation.",
            ["cutover"],
        )
        .with_variable(
            dashboard.QueryVariable("scope")
            .label("Readiness scope")
            .datasource(PROMETHEUS)
            .query({"query": f"label_values({P}readiness_verdict, scope)", "refId": "scope"})
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .current(model.VariableOption(selected=True, text="everyone", value="everyone"))
        )
        .annotation(
            dashboard.AnnotationQuery()
            .name("Flag changes")
            .datasource(PROMETHEUS)
            .enable(True)
            .icon_color("orange")
            .expr(f"max(changes({P}flag_version[2m])) > 0")
        )
        .with_panel(
            single(
                "Answering mode",
                "The default mode: accounts no cohort holds are in it.",
                promql(f"max by (mode) ({P}mode) == 1", "{{mode}}"),
                width=6,
            ).text_mode(common.BigValueTextMode.NAME)
        )
        .with_panel(
            single(
                "Monetary divergences, 24 h",
                "Any unresolved one is a NO-GO on its own.",
                promql(f"sum(increase({P}monetary_divergences_total[24h]))", instant=True),
                decimals=0,
                limits=zero_is_good(),
                width=6,
            )
        )
        .with_panel(
            single(
                "Consistency, 30 days",
                "Attainment of the shadow_consistency SLO (objective 99.9%).",
                promql(
                    f"1 - ledger_sidecar:slo_error_ratio:increase30d{{{consistency}}}", instant=True
                ),
                unit="percentunit",
                decimals=4,
                limits=thresholds((None, "red"), (0.999, "green")),
                width=6,
            )
        )
        .with_panel(
            single(
                "Clean comparisons, 24 h",
                "Matched comparisons over the last day: the coverage the readiness report asks "
                "for, per route and currency, starts here.",
                promql(
                    f'sum(increase({P}comparisons_total{{outcome="match"}}[24h]))', instant=True
                ),
                decimals=0,
                width=6,
            )
        )
        .with_panel(
            ranking(
                "Cohorts",
                "Each cohort of the cutover flag and the mode its accounts are in (ledger-sidecar "
                "admin modes lists their shares and lists).",
                promql(f"max by (cohort, mode) ({P}cohort_mode) == 1", instant=True),
                datasource=PROMETHEUS,
                width=8,
            )
        )
        .with_panel(
            single(
                "Flag version",
                "Each change of the cutover flag makes the next version; every instance "
                "should show the same one.",
                promql(f"min({P}flag_version)"),
                decimals=0,
                width=4,
            )
        )
        .with_panel(
            graph(
                "Requests by answering mode",
                "Customer requests per second by the mode that answered them.",
                [
                    promql(
                        f"sum by (mode) (rate({P}request_duration_seconds_count{RANGE}))",
                        "{{mode}}",
                    )
                ],
                unit="reqps",
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Clean comparisons by operation",
                "Matched comparisons per second per operation: coverage by kind of money movement.",
                [
                    promql(
                        f"sum by (operation) "
                        f'(rate({P}comparisons_total{{outcome="match"}}{RANGE}))',
                        "{{operation}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            single(
                "Readiness verdict",
                "The verdict of the last readiness report computed for the scope (`ledger-sidecar "
                "readiness`, or a flip's gate); the table beside it says which checks held.",
                promql(
                    f'max by (verdict) ({P}readiness_verdict{{scope="$scope"}}) == 1',
                    "{{verdict}}",
                ),
                width=6,
            ).text_mode(common.BigValueTextMode.NAME)
        )
        .with_panel(
            single(
                "Readiness age",
                "How long ago that report was computed: run `ledger-sidecar readiness` again "
                "before a flip.",
                promql(f'time() - max({P}readiness_computed_timestamp_seconds{{scope="$scope"}})'),
                unit="s",
                limits=thresholds((None, "green"), (3600, "orange"), (86400, "red")),
                width=6,
            )
        )
        .with_panel(
            ranking(
                "Readiness checks",
                "1: the check passed; 0: it failed or lacked evidence (the report itself says "
                "which, with the value, threshold and window).",
                promql(f'min by (check) ({P}readiness_check_ok{{scope="$scope"}})', instant=True),
                datasource=PROMETHEUS,
                width=12,
            )
        )
    )


DASHBOARDS = {
    "overview": overview,
    "divergences": divergences,
    "account": account_latency,
    "slo": slos,
    "ledger": ledger_health,
    "cutover": cutover,
}


def files() -> dict[Path, str]:
    """Every dashboard file, as its text, and their catalogue (docs/dashboards.md)."""
    out: dict[Path, str] = {}
    built: dict[str, model.Dashboard] = {}
    for key, build in DASHBOARDS.items():
        board_ = built[key] = build().build()
        for number, panel in enumerate(board_.panels or [], 1):
            panel.id_val = number  # stable ids: links to a panel survive regeneration
        text_ = json.dumps(board_, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        out[OUT / f"{UIDS[key]}.json"] = text_
    out[DOC] = catalogue(built)
    return out


SOURCES = {"prometheus": "Prometheus", "loki": "Loki"}


def catalogue(built: dict[str, model.Dashboard]) -> str:
    """docs/dashboards.md: each dashboard and each of its panels, from the same definitions."""
    lines = [
        "# Dashboards",
        "",
        "<!-- Generated by dashboards/generate.py: edit the generator, then run it. -->",
        "",
        "Six Grafana dashboards, generated as code by `dashboards/generate.py` with",
        "grafana-foundation-sdk (pinned in pyproject.toml) and committed as JSON in `dashboards/`;",
        "`python dashboards/generate.py --check` (run by the tests) fails when they differ from",
        "what the generator writes. Grafana loads them through `dashboards/provisioning/`",
        "(datasources with fixed uids: `prometheus`, `loki`, `tempo`, `alertmanager`), as the",
        "compose stack does (`compose/`).",
        "",
        "- Prometheus panels use the sidecar's metrics (docs/observability.md) and the SLO",
        "  recording rules (alerts/slo-rules.yml). Latency panels show exemplars: a point opens",
        "  the request's trace in Tempo.",
        "- Loki panels read the sidecar's JSON log lines, with stream labels `service`, `event`",
        "  and `level` (compose/config.alloy); everything else, `account_id` included, is read",
        "  with `| json`. A log line's `trace_id` opens its trace in Tempo.",
        "- Every dashboard links to the others (top right) and keeps the time range.",
        "",
        "Alerts link to these dashboards by uid (docs/alerts.md).",
    ]
    for key, board_ in built.items():
        lines += ["", f"## {board_.title} (`/d/{UIDS[key]}`)", "", board_.description or ""]
        names = [v.name for v in (board_.templating.list_val or [])] if board_.templating else []
        if names:
            lines += ["", "Variables: " + ", ".join(f"`{n}`" for n in names) + "."]
        lines += ["", "| panel | type | data | what it shows |", "|---|---|---|---|"]
        for panel in board_.panels or []:
            uid = panel.datasource.uid if panel.datasource else None
            source = SOURCES.get(uid or "", "")
            about = (panel.description or "").replace("|", "\\|")
            lines.append(f"| {panel.title} | {panel.type_val} | {source} | {about} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the files would change")
    args = parser.parse_args(argv)
    wanted = files()
    extra = [p for p in OUT.glob("*.json") if p not in wanted]
    if args.check:
        stale = [p for p, t in wanted.items() if not p.exists() or p.read_text() != t]
        for path in stale + extra:
            where = path.relative_to(ROOT)
            print(f"{where} is not what dashboards/generate.py writes", file=sys.stderr)
        return 1 if stale or extra else 0
    for path in extra:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    for path, text_ in wanted.items():
        path.write_text(text_)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
