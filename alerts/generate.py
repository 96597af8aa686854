"""Generate the Prometheus rules from the SLO file: recording rules, burn-rate alerts, and the
sidecar's other alerts, with their runbooks and dashboards.

    python alerts/generate.py           # write alerts/slo-rules.yml and alerts/sidecar-alerts.yml
    python alerts/generate.py --check   # exit 1, naming the file, if the committed ones differ

The SLOs come from ``sidecar/slo.toml`` (the file the sidecar itself counts by). Burn-rate
alerts follow the SRE Workbook's multi-window, multi-burn-rate set for a 30-day window: page
on 14.4x over 1h and 5m, or 6x over 6h and 30m; ticket on 3x over 1d and 2h, or 1x over 3d and
6h. Attainment over the window is computed from counters (bad increase over total increase),
never as an average of short ratios. A page also needs some traffic in its long window (a
single failure at night is not an outage). The generator refuses an SLO whose burn factor times
its error budget is 1 or more: such an alert could never fire, or would fire on any error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.domain.slo import Slo, SloFile  # noqa: E402
from sidecar.slo_file import load_slo_file  # noqa: E402

OUT = ROOT / "alerts"
RUNBOOKS = "docs/runbooks"
P = "ledger_sidecar_"
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: (severity, burn factor, long window, short window, for)
BURNS = (
    ("page", 14.4, "1h", "5m", "2m"),
    ("page", 6.0, "6h", "30m", "15m"),
    ("ticket", 3.0, "1d", "2h", "1h"),
    ("ticket", 1.0, "3d", "6h", "3h"),
)
#: a page needs at least this many events an hour in its long window
MIN_EVENTS_PER_HOUR = 60
HOURS = {"1h": 1, "6h": 6, "1d": 24, "3d": 72}
#: the dashboards the alerts link to (dashboards/generate.py UIDS; tests/e2e/test_dashboards.py
#: checks every link leads to one)
DASHBOARDS = {
    "slo": "/d/ledger-sidecar-slo",
    "overview": "/d/ledger-sidecar-overview",
    "divergences": "/d/ledger-sidecar-divergences",
    "ledger": "/d/ledger-sidecar-ledger",
}


@dataclass(frozen=True)
class Sli:
    """An SLO's events as PromQL: the rate of all events and of bad ones over ``[W]`` (a bad
    series not yet exposed counts as none, ``or vector(0)``)."""

    total: str
    bad: str


def sli(slo: Slo) -> Sli:
    count = f"{P}request_duration_seconds_count"
    if slo.name == "availability":
        errors = 'outcome=~"server_error|legacy_timeout|legacy_unreachable"'
        return Sli(f"sum(rate({count}[W]))", f"(sum(rate({count}{{{errors}}}[W])) or vector(0))")
    if slo.name == "latency":
        le = floatToGoString(slo.threshold_s)
        fast = f'sum(rate({P}request_duration_seconds_bucket{{le="{le}"}}[W]))'
        return Sli(f"sum(rate({count}[W]))", f"(sum(rate({count}[W])) - {fast})")
    if slo.name == "shadow_completeness":
        records = f"{P}capture_records_total"
        return Sli(
            f"sum(rate({records}[W]))",
            f'(sum(rate({records}{{result="dropped"}}[W])) or vector(0))',
        )
    if slo.name == "shadow_consistency":
        compared = f'{P}comparisons_total{{outcome=~"match|mismatch|ledger_error"}}'
        ledger_errors = f'{P}comparisons_total{{outcome="ledger_error"}}'
        return Sli(
            f"sum(rate({compared}[W]))",
            f"((sum(rate({P}monetary_divergences_total[W])) or vector(0))"
            f" + (sum(rate({ledger_errors}[W])) or vector(0)))",
        )
    if slo.name == "shadow_freshness":
        le = floatToGoString(slo.threshold_s)
        lag = f"{P}shadow_lag_seconds"
        fresh = f'sum(rate({lag}_bucket{{le="{le}"}}[W]))'
        return Sli(f"sum(rate({lag}_count[W]))", f"(sum(rate({lag}_count[W])) - {fresh})")
    raise ValueError(f"no SLI for {slo.name!r}")


def over(expr: str, window: str, fn: str = "rate") -> str:
    return expr.replace("[W]", f"[{window}]").replace("rate(", f"{fn}(")


def check(slos: SloFile) -> None:
    for slo in slos.slos:
        for _, factor, long, short, _ in BURNS:
            if factor * slo.budget_ratio >= 1:
                raise SystemExit(
                    f"SLO {slo.name!r}: burn factor {factor} x error budget "
                    f"{slo.budget_ratio:g} = {factor * slo.budget_ratio:g} >= 1: the "
                    f"{long}/{short} alert could never tell a burn from an outage; raise the "
                    "objective"
                )


def annotations(name: str, summary: str, description: str, dashboard: str) -> dict[str, str]:
    return {
        "summary": summary,
        "description": description,
        "runbook_url": f"{RUNBOOKS}/{name}.md",
        "dashboard_url": DASHBOARDS[dashboard],
    }


def burn_name(severity: str) -> str:
    return "LedgerSidecarSLOBurn" if severity == "page" else "LedgerSidecarSLOBudgetBurn"


def burn_annotations(
    slos: SloFile, slo: Slo, severity: str, factor: float, long: str, short: str
) -> dict[str, str]:
    threshold = f"{factor * slo.budget_ratio:g}"
    return annotations(
        burn_name(severity),
        f"{slo.name} burning its error budget {factor:g}x over {long} and {short}",
        f"{slo.description}: the error ratio is above {threshold} ({factor:g} times the "
        f"budget of {slo.budget_ratio:g}) over {long} and over {short}. At this rate the "
        f"{slos.window_days}-day budget lasts {slos.window_days * 24 / factor:g} hours.",
        "slo",
    )


def slo_rules(slos: SloFile) -> dict[str, Any]:
    groups: list[dict[str, Any]] = []
    for slo in slos.slos:
        s = sli(slo)
        labels = {"slo": slo.name}
        rules: list[dict[str, Any]] = [
            {
                "record": f"{P[:-1]}:slo_objective:ratio",
                "expr": f"vector({slo.objective:g})",
                "labels": labels,
            }
        ]
        for window in WINDOWS:
            rules.append(
                {
                    "record": f"{P[:-1]}:slo_error_ratio:rate{window}",
                    "expr": f"({over(s.bad, window)}) / ({over(s.total, window)})",
                    "labels": labels,
                }
            )
            rules.append(
                {
                    "record": f"{P[:-1]}:slo_events:rate{window}",
                    "expr": over(s.total, window),
                    "labels": labels,
                }
            )
        days = f"{slos.window_days}d"
        rules.append(
            {
                # attainment from counters over the whole window: bad over total increase
                "record": f"{P[:-1]}:slo_error_ratio:increase{days}",
                "expr": (
                    f"({over(s.bad, days, 'increase')}) / ({over(s.total, days, 'increase')})"
                ),
                "labels": labels,
            }
        )
        rules.append(
            {
                "record": f"{P[:-1]}:slo_error_budget_remaining:ratio{days}",
                "expr": (
                    f'1 - {P[:-1]}:slo_error_ratio:increase{days}{{slo="{slo.name}"}} '
                    f"/ {slo.budget_ratio:g}"
                ),
                "labels": labels,
            }
        )
        for severity, factor, long, short, wait in BURNS:
            threshold = f"{factor * slo.budget_ratio:g}"
            selector = f'{{slo="{slo.name}"}}'
            expr = (
                f"{P[:-1]}:slo_error_ratio:rate{long}{selector} > {threshold}\n"
                f"and {P[:-1]}:slo_error_ratio:rate{short}{selector} > {threshold}"
            )
            if severity == "page":
                events = MIN_EVENTS_PER_HOUR * HOURS[long]
                seconds = HOURS[long] * 3600
                expr += f"\nand {P[:-1]}:slo_events:rate{long}{selector} * {seconds} >= {events}"
            name = burn_name(severity)
            rules.append(
                {
                    "alert": name,
                    "expr": expr,
                    "for": wait,
                    "labels": {
                        **labels,
                        "severity": severity,
                        "window": f"{long}/{short}",
                    },
                    "annotations": burn_annotations(slos, slo, severity, factor, long, short),
                }
            )
        for name, below, severity_text in (
            ("LedgerSidecarErrorBudgetLow", "0.25", "a quarter"),
            ("LedgerSidecarErrorBudgetExhausted", "0", "nothing"),
        ):
            rules.append(
                {
                    "alert": name,
                    "expr": (
                        f"{P[:-1]}:slo_error_budget_remaining:ratio{days}"
                        f'{{slo="{slo.name}"}} < {below}'
                    ),
                    "for": "15m",
                    "labels": {**labels, "severity": "release"},
                    "annotations": annotations(
                        name,
                        f"{slo.name}: {severity_text} of the {days} error budget left",
                        f"{slo.description}: the {days} error budget is below {below} of its "
                        "size. Release managers: no cutover step while it lasts.",
                        "slo",
                    ),
                }
            )
        groups.append({"name": f"ledger-sidecar-slo-{slo.name}", "rules": rules})
    return {"groups": groups}


def sidecar_alerts() -> dict[str, Any]:
    def alert(
        name: str,
        expr: str,
        wait: str,
        severity: str,
        summary: str,
        description: str,
        dashboard: str,
    ) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": name, "expr": expr}
        if wait != "0s":
            rule["for"] = wait
        rule["labels"] = {"severity": severity}
        rule["annotations"] = annotations(name, summary, description, dashboard)
        return rule

    rules = [
        alert(
            "LedgerSidecarMonetaryDivergence",
            # one divergence is enough; it stays firing for 15 minutes so it is seen
            f"sum by (operation) (increase({P}monetary_divergences_total[15m])) > 0",
            "0s",
            "page",
            "money differs between legacy and the ledger ({{ $labels.operation }})",
            "A comparison found money at stake (amount, balance, currency, status or a "
            "missing side). `ledger-sidecar divergences list` shows it with both values.",
            "divergences",
        ),
        alert(
            "LedgerSidecarDivergence",
            f'sum(increase({P}divergences_total{{kind="metadata"}}[1h])) > 0',
            "0s",
            "ticket",
            "non-monetary fields differ between legacy and the ledger",
            "Metadata fields differ (no money at stake): a mapping rule may be missing.",
            "divergences",
        ),
        alert(
            "LedgerSidecarDown",
            'up{job="ledger-sidecar"} == 0 or absent(up{job="ledger-sidecar"})',
            "2m",
            "page",
            "the sidecar is down or not scraped",
            "Prometheus cannot scrape the sidecar: customers may not be reaching the legacy "
            "service through it.",
            "overview",
        ),
        alert(
            "LedgerSidecarShadowWorkerDown",
            f"{P}shadow_worker_up == 0",
            "5m",
            "ticket",
            "the shadow applier's metrics cannot be read",
            "The shadow worker process is down or not answering: nothing is being compared.",
            "overview",
        ),
        alert(
            "LedgerSidecarCaptureDropping",
            f"sum(rate({P}capture_dropped_records_total[5m])) > 0",
            "5m",
            "ticket",
            "capture is dropping mirror records",
            "Records are dropped (see the reason label of capture_dropped_records_total): "
            "the mirror stream misses requests, which the completeness SLO counts.",
            "overview",
        ),
        alert(
            "LedgerSidecarShadowLagHigh",
            f"histogram_quantile(0.99, sum by (le) (rate({P}shadow_lag_seconds_bucket[5m]))) > 30",
            "10m",
            "ticket",
            "comparisons lag the legacy answers by more than 30 s (p99)",
            "The applier falls behind the stream; mirror_backlog_events shows how far.",
            "overview",
        ),
        alert(
            "LedgerSidecarInDoubtRequests",
            f"{P}in_doubt_requests > 0",
            "15m",
            "ticket",
            "requests in doubt have not been resolved",
            "Requests with an intent and no outcome could not be resolved against the legacy "
            "service.",
            "overview",
        ),
        alert(
            "LedgerSidecarTrialBalanceNotZero",
            f"{P}ledger_trial_balance_minor != 0",
            "1m",
            "page",
            "the ledger's trial balance is not zero in {{ $labels.currency }}",
            "The signed balances of the ledger's accounts do not sum to zero: the ledger is "
            "not consistent. Run `ledger-sidecar ledger verify`.",
            "ledger",
        ),
        alert(
            "LedgerSidecarWatchdog",
            "vector(1)",
            "0s",
            "none",
            "always firing: the alerting pipeline works",
            "This alert always fires; if it stops arriving, alerting is broken.",
            "overview",
        ),
    ]
    return {"groups": [{"name": "ledger-sidecar", "rules": rules}]}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # plain YAML, no &anchors
        return True


# --- promtool unit tests: the scenarios every SLO must pass ----------------------------------


def series_for(
    slo: Slo, total: float, bad: float, steps: int, bad_at: int | None = None
) -> list[dict[str, str]]:
    """Input series for ``promtool test rules``: each step, ``total`` events of which ``bad``
    are bad, for ``steps`` steps, as the sidecar's counters would show them; with ``bad_at``,
    instead, one bad event at that step and none other."""

    def values(role: str) -> str:
        per_step = {"total": total, "good": total - bad, "bad": bad}[role]
        if bad_at is None:
            return f"0+{per_step:g}x{steps}"
        running, out = 0.0, []
        for step in range(steps + 1):
            out.append(f"{running:.4f}".rstrip("0").rstrip("."))
            extra = 1 if step + 1 == bad_at else 0
            running += {"total": total + extra, "good": total, "bad": extra}[role]
        return " ".join(out)

    def counter(name: str, role: str) -> dict[str, str]:
        return {"series": name, "values": values(role)}

    count = f"{P}request_duration_seconds_count"
    if slo.name == "availability":
        return [
            counter(f'{count}{{outcome="success"}}', "good"),
            counter(f'{count}{{outcome="server_error"}}', "bad"),
        ]
    if slo.name == "latency":
        le = floatToGoString(slo.threshold_s)
        return [
            counter(f'{count}{{outcome="success"}}', "total"),
            counter(f'{P}request_duration_seconds_bucket{{outcome="success",le="{le}"}}', "good"),
        ]
    if slo.name == "shadow_completeness":
        return [
            counter(f'{P}capture_records_total{{result="committed"}}', "good"),
            counter(f'{P}capture_records_total{{result="dropped"}}', "bad"),
        ]
    if slo.name == "shadow_consistency":
        return [
            counter(f'{P}comparisons_total{{operation="transfer",outcome="match"}}', "good"),
            counter(f'{P}comparisons_total{{operation="transfer",outcome="mismatch"}}', "bad"),
            counter(f'{P}monetary_divergences_total{{operation="transfer"}}', "bad"),
        ]
    if slo.name == "shadow_freshness":
        le = floatToGoString(slo.threshold_s)
        return [
            counter(f"{P}shadow_lag_seconds_count", "total"),
            counter(f'{P}shadow_lag_seconds_bucket{{le="{le}"}}', "good"),
        ]
    raise ValueError(slo.name)


def burn_alerts(slos: SloFile, slo: Slo, *windows: str) -> list[dict[str, Any]]:
    return [
        {
            "exp_labels": {"slo": slo.name, "severity": severity, "window": w},
            "exp_annotations": burn_annotations(slos, slo, severity, factor, long, short),
        }
        for w in windows
        for severity, factor, long, short, _ in BURNS
        if f"{long}/{short}" == w
    ]


def _file_of(test: dict[str, Any]) -> str:
    """The evaluation interval a test needs: its own for the days-long ones, else 1m."""
    return str(test["interval"]) if test["interval"] in ("10m", "1h") else "1m"


def unit_tests(slos: SloFile) -> dict[str, dict[str, Any]]:
    """The issue's scenarios, for every SLO: a full outage pages within 5 minutes; a 10x burn
    pages through 6h/30m, not 1h/5m; a slow 2x burn opens a ticket and never pages; a steady
    0.5x burn for the whole window raises nothing and leaves half the budget; low traffic with
    one error does not page; one monetary divergence pages at once and stays firing."""
    tests: list[dict[str, Any]] = []
    days = f"{slos.window_days}d"
    page, ticket = "LedgerSidecarSLOBurn", "LedgerSidecarSLOBudgetBurn"
    for slo in slos.slos:
        b = slo.budget_ratio
        tests.append(
            {  # a full outage: every event bad
                "name": f"{slo.name}: a full outage pages within 5 minutes",
                "interval": "1m",
                "input_series": series_for(slo, 100, 100, 10),
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": page,
                        "exp_alerts": burn_alerts(slos, slo, "1h/5m"),
                    }
                ],
            }
        )
        tests.append(
            {  # 10x: over 6x, under 14.4x
                "name": f"{slo.name}: a 10x burn pages through 6h/30m, not 1h/5m",
                "interval": "1m",
                "input_series": series_for(slo, 1000, 10 * b * 1000, 70),
                "alert_rule_test": [
                    {
                        "eval_time": "1h",
                        "alertname": page,
                        "exp_alerts": burn_alerts(slos, slo, "6h/30m"),
                    }
                ],
            }
        )
        tests.append(
            {  # 2x: over 1x (3d/6h), under 3x (1d/2h)
                "name": f"{slo.name}: a slow 2x burn opens a ticket and never pages",
                "interval": "10m",
                "input_series": series_for(slo, 10_000, 2 * b * 10_000, 3 * 144 + 6),
                "alert_rule_test": [
                    *(
                        {"eval_time": t, "alertname": page, "exp_alerts": []}
                        for t in ("1h", "6h", "1d", "2d", "3d")
                    ),
                    *(
                        {
                            "eval_time": t,
                            "alertname": ticket,
                            "exp_alerts": burn_alerts(slos, slo, "3d/6h"),
                        }
                        for t in ("1d", "3d")
                    ),
                ],
            }
        )
        steps = slos.window_days * 24
        tests.append(
            {  # half the budget, evenly, for the whole window (hourly: a month of steps)
                "name": f"{slo.name}: a steady 0.5x burn for {days} raises nothing, leaves half",
                "interval": "1h",
                "input_series": series_for(slo, 60_000, 0.5 * b * 60_000, steps),
                "alert_rule_test": [
                    {"eval_time": days, "alertname": name, "exp_alerts": []}
                    for name in (
                        page,
                        ticket,
                        "LedgerSidecarErrorBudgetLow",
                        "LedgerSidecarErrorBudgetExhausted",
                    )
                ],
                "promql_expr_test": [
                    {
                        "expr": f"round({P[:-1]}:slo_error_budget_remaining:ratio{days}"
                        f'{{slo="{slo.name}"}}, 0.001)',
                        "eval_time": days,
                        "exp_samples": [{"labels": f'{{slo="{slo.name}"}}', "value": 0.5}],
                    }
                ],
            }
        )
        tests.append(
            {  # 10 events an hour (sampled every minute), one of them bad, once
                "name": f"{slo.name}: low traffic with one error does not page",
                "interval": "1m",
                "input_series": series_for(slo, 1 / 6, 0, 150, bad_at=30),
                "alert_rule_test": [
                    {"eval_time": t, "alertname": page, "exp_alerts": []}
                    for t in ("32m", "35m", "40m", "1h", "2h")
                ],
            }
        )
    MONETARY = next(
        r
        for r in sidecar_alerts()["groups"][0]["rules"]
        if r["alert"] == "LedgerSidecarMonetaryDivergence"
    )
    tests.append(
        {
            "name": "one monetary divergence pages at once and stays firing",
            "interval": "1m",
            "input_series": [
                {
                    "series": f'{P}monetary_divergences_total{{operation="transfer"}}',
                    "values": "0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
                }
            ],
            "alert_rule_test": [
                {
                    "eval_time": "1m",
                    "alertname": "LedgerSidecarMonetaryDivergence",
                    "exp_alerts": [],
                },
                *(
                    {
                        "eval_time": t,
                        "alertname": "LedgerSidecarMonetaryDivergence",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "page", "operation": "transfer"},
                                "exp_annotations": {
                                    **MONETARY["annotations"],
                                    "summary": MONETARY["annotations"]["summary"].replace(
                                        "{{ $labels.operation }}", "transfer"
                                    ),
                                },
                            }
                        ],
                    }
                    for t in ("2m", "10m", "15m")
                ),
                {
                    "eval_time": "20m",
                    "alertname": "LedgerSidecarMonetaryDivergence",
                    "exp_alerts": [],
                },
            ],
        }
    )
    # promtool sets the evaluation interval per file: the days-long scenarios step coarser
    return {
        interval: {
            "rule_files": ["slo-rules.yml", "sidecar-alerts.yml"],
            "evaluation_interval": interval,
            "tests": [t for t in tests if _file_of(t) == interval],
        }
        for interval in ("1m", "10m", "1h")
    }


def render(document: dict[str, Any]) -> str:
    header = "# Generated by alerts/generate.py from sidecar/slo.toml: do not edit.\n"
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body


def files(slos: SloFile) -> dict[Path, str]:
    check(slos)
    return {
        OUT / "slo-rules.yml": render(slo_rules(slos)),
        OUT / "sidecar-alerts.yml": render(sidecar_alerts()),
        **{
            OUT / f"tests-{interval}.yml": render(document)
            for interval, document in unit_tests(slos).items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the files would change")
    parser.add_argument("--slo-file", help="default: sidecar/slo.toml")
    args = parser.parse_args(argv)
    wanted = files(load_slo_file(args.slo_file))
    if args.check:
        stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is not what alerts/generate.py writes", file=sys.stderr
            )
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
