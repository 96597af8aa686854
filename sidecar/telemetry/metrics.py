"""Prometheus metrics: every family the sidecar exposes, with bounded labels.

The customer path (``ProxyMetrics``) and the shadow worker (``ShadowMetrics``) each register
their families in a registry the composition root owns; nothing is created at import time.
When the shadow worker runs as its own process, ``serve`` scrapes it and ``render`` merges its
families into the proxy's /metrics, so one scrape target shows both.

Guarantees (tests/integration/test_metrics.py):
- Names follow Prometheus conventions: one prefix (``ledger_sidecar_``), base units
  (``_seconds``), ``_total`` on counters, ``_info`` for build info; ``promtool check metrics``
  passes on a real scrape.
- No account id is ever a label value. Per-account latency is bounded four ways: exemplars
  carrying the trace id (OpenMetrics scrapes), the ``account_tier`` label (at most 8 configured
  tiers and a default), a watch list of at most 20 accounts labelled by a configured name, and
  the account id in every request log line. The number of series does not grow with the
  number of accounts.
- Every label set a dashboard reads is created at start, so it shows zero, not no data.
- Histogram buckets include the SLO thresholds explicitly (``LATENCY_SLO_S``,
  ``FRESHNESS_SLO_S``).
"""

from __future__ import annotations

import fnmatch
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sidecar import __version__
from sidecar.config import TelemetrySettings
from sidecar.domain.comparison import MONETARY, DivergenceKind, Outcome
from sidecar.domain.flags import LEDGER_ANSWERS, FlagRules, Mode
from sidecar.domain.mapping import Operation
from sidecar.domain.readiness import Report, Verdict

PREFIX = "ledger_sidecar_"
#: the classic text format every Prometheus reads (2.42 included); every name here is a
#: legacy-valid one, so the bytes are those of any newer text version
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: the latency SLO's threshold: a customer answer slower than this is a bad event
LATENCY_SLO_S = 0.25
#: the shadow freshness SLO's threshold: a comparison later than this is a bad event
FRESHNESS_SLO_S = 30.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, LATENCY_SLO_S, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, FRESHNESS_SLO_S, 60, 120, 300)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

MODES = tuple(m.value for m in Mode)
MONETARY_KINDS = frozenset(k.value for k in MONETARY)
#: what a request's operation label says when no mapped route matched
UNMAPPED = "unmapped"
OPERATIONS = (*(o.value for o in Operation), UNMAPPED)
#: the shadow worker's operation label: a mapped operation, ``bootstrap`` for the bootstrap's
#: own exchanges (its plan, reads and snapshot), ``unknown`` for a record whose route the
#: mapping no longer has
BOOTSTRAP = "bootstrap"
UNKNOWN = "unknown"
SHADOW_OPERATIONS = (*(o.value for o in Operation), BOOTSTRAP, UNKNOWN)


def shadow_operation(operation: str) -> str:
    """A stored comparison's operation as a bounded label value (SHADOW_OPERATIONS)."""
    if operation.startswith(BOOTSTRAP + "_"):
        return BOOTSTRAP
    return operation if operation in SHADOW_OPERATIONS else UNKNOWN


#: the customer's answer, as the sidecar saw it
REQUEST_OUTCOMES = (
    "success",
    "client_error",
    "server_error",
    "legacy_timeout",
    "legacy_unreachable",
    "request_too_large",
)
LEGACY_OUTCOMES = ("success", "client_error", "server_error", "timeout", "unreachable")
LEDGER_OUTCOMES = ("success", "error")
DROP_REASONS = ("queue_full", "store_error", "stopped")
IN_DOUBT_RESOLUTIONS = ("looked_up", "not_processed", "read", "unresolvable")
POOL_STATES = ("in_use", "idle", "max")


def with_threshold(buckets: Sequence[float], threshold: float) -> tuple[float, ...]:
    """The buckets with an SLO threshold among them, so its ratio is exact."""
    return tuple(sorted({*buckets, threshold}))


def outcome_of_status(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "success"


class AccountLabels:
    """The bounded labels an account id maps to: its tier, and its watch-list name if any."""

    CACHE_MAX = 100_000

    def __init__(self, settings: TelemetrySettings) -> None:
        self._patterns = [
            (tier, pattern)
            for tier, patterns in settings.account_tiers.items()
            for pattern in patterns
        ]
        self.default_tier = settings.default_account_tier
        self.tiers = (*settings.account_tiers, settings.default_account_tier)
        self._watched = {account: name for name, account in settings.watch_accounts.items()}
        self.watch_names = tuple(settings.watch_accounts)
        self._cache: dict[str, str] = {}

    def tier(self, account_id: str | None) -> str:
        if account_id is None or not self._patterns:
            return self.default_tier
        tier = self._cache.get(account_id)
        if tier is None:
            tier = next(
                (t for t, p in self._patterns if fnmatch.fnmatchcase(account_id, p)),
                self.default_tier,
            )
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            self._cache[account_id] = tier
        return tier

    def watched(self, account_id: str | None) -> str | None:
        return None if account_id is None else self._watched.get(account_id)


class Registry:
    """One process's metrics: its prometheus registry and the families its parts share (the
    upstream-call histogram, the database pools)."""

    def __init__(self) -> None:
        # no ``_created`` series: they double the series count and no dashboard reads them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.prometheus = CollectorRegistry()
        self.pools: dict[str, Any] = {}
        self.prometheus.register(StatsCollector(lambda: pool_families(self.pools)))
        self._upstream: Histogram | None = None

    def upstream_duration(self, latency_slo_s: float = LATENCY_SLO_S) -> Histogram:
        """The upstream-call histogram, its buckets holding the latency SLO's threshold (the
        first part to ask creates it: both parts pass the same SLO file's threshold)."""
        if self._upstream is None:
            self._upstream = Histogram(
                PREFIX + "upstream_duration_seconds",
                "Calls to the systems behind the sidecar: the legacy service per request, the "
                "ledger per applied group (each request in a group observes the group's "
                "commit).",
                ["upstream", "operation", "outcome"],
                buckets=with_threshold(LATENCY_BUCKETS, latency_slo_s),
                registry=self.prometheus,
            )
        return self._upstream

    def register(self, collector: Collector) -> None:
        self.prometheus.register(collector)


def _exemplar(trace_id: str | None) -> dict[str, str] | None:
    return {"trace_id": trace_id} if trace_id else None


class ProxyMetrics:
    """The customer path: requests, the legacy call, capture, the mode and the build."""

    def __init__(
        self,
        metrics: Registry,
        accounts: AccountLabels,
        mode: str,
        latency_slo_s: float = LATENCY_SLO_S,
    ) -> None:
        registry = metrics.prometheus
        self.accounts = accounts
        buckets = with_threshold(LATENCY_BUCKETS, latency_slo_s)
        self.mode = mode
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Customer requests through the sidecar, from arrival to the answer sent.",
            ["operation", "outcome", "mode", "account_tier"],
            buckets=buckets,
            registry=registry,
        )
        self.watched_duration = Histogram(
            PREFIX + "watched_account_request_duration_seconds",
            "Customer requests of the accounts on the watch list, by the name it gives them.",
            ["watched_account", "operation"],
            buckets=buckets,
            registry=registry,
        )
        self.upstream_duration = metrics.upstream_duration(latency_slo_s)
        self.mode_gauge = Gauge(
            PREFIX + "mode",
            "The mode the sidecar answers in: 1 for the current one, 0 for the others.",
            ["mode"],
            registry=registry,
        )
        Info(PREFIX + "build", "The running build.", registry=registry).info(
            {"version": __version__, "python_version": platform.python_version()}
        )
        self.flag_version = Gauge(
            PREFIX + "flag_version",
            "Version of the cutover flag this instance answers by (each change makes the next).",
            registry=registry,
        )
        self.cohort_mode = Gauge(
            PREFIX + "cohort_mode",
            "1 for each cohort of the cutover flag and the mode its accounts are in.",
            ["cohort", "mode"],
            registry=registry,
        )
        self.readiness_verdict = Gauge(
            PREFIX + "readiness_verdict",
            "1 for the verdict of the last readiness report computed here, per scope "
            "(everyone, or a cohort).",
            ["scope", "verdict"],
            registry=registry,
        )
        self.readiness_check = Gauge(
            PREFIX + "readiness_check_ok",
            "1 if the check passed in the last readiness report computed here, 0 if it failed "
            "or lacked evidence.",
            ["scope", "check"],
            registry=registry,
        )
        self.readiness_time = Gauge(
            PREFIX + "readiness_computed_timestamp_seconds",
            "When the last readiness report of the scope was computed (Unix time).",
            ["scope"],
            registry=registry,
        )
        self._initialised: set[str] = set()
        for m in MODES:
            self.mode_gauge.labels(m).set(1 if m == mode else 0)
        self._initialise(mode)
        for operation in OPERATIONS:
            for outcome in LEGACY_OUTCOMES:
                self.upstream_duration.labels("legacy", operation, outcome)
            for name in accounts.watch_names:
                self.watched_duration.labels(name, operation)

    def _initialise(self, mode: str) -> None:
        """Create the request series of a mode in use, so dashboards read 0, not nothing."""
        if mode in self._initialised:
            return
        self._initialised.add(mode)
        for operation in OPERATIONS:
            for outcome in REQUEST_OUTCOMES:
                for tier in self.accounts.tiers:
                    self.request_duration.labels(operation, outcome, mode, tier)
        if mode in LEDGER_ANSWERS:  # the ledger decides on the customer path
            for operation in (o.value for o in Operation):
                self.upstream_duration.labels("ledger", operation, "success")

    def readiness(self, report: Report, at: float) -> None:
        """A readiness report was computed: its verdict and checks, for the cutover dashboard."""
        scope = report.scope
        for verdict in Verdict:
            self.readiness_verdict.labels(scope, verdict.value).set(
                1 if verdict is report.verdict else 0
            )
        for check in report.checks:
            self.readiness_check.labels(scope, check.name).set(1 if check.ok else 0)
        self.readiness_time.labels(scope).set(at)

    def flag(self, rules: FlagRules) -> None:
        """The cutover flag changed: the default mode, the cohorts, the version."""
        self.mode = rules.default.value
        for m in MODES:
            self.mode_gauge.labels(m).set(1 if m == self.mode else 0)
        self.flag_version.set(rules.version)
        self.cohort_mode.clear()
        for cohort in rules.cohorts:
            self.cohort_mode.labels(cohort.name, cohort.mode.value).set(1)
        for m in sorted(rules.modes()):
            self._initialise(m.value)

    def request(
        self,
        operation: str,
        outcome: str,
        account_id: str | None,
        seconds: float,
        trace_id: str | None = None,
        mode: str | None = None,
    ) -> str:
        """Observe one customer request (in ``mode``, else the default's); returns the
        account's tier (for its log line)."""
        exemplar = _exemplar(trace_id)
        tier = self.accounts.tier(account_id)
        self.request_duration.labels(operation, outcome, mode or self.mode, tier).observe(
            seconds, exemplar
        )
        name = self.accounts.watched(account_id)
        if name is not None:
            self.watched_duration.labels(name, operation).observe(seconds, exemplar)
        return tier

    def legacy_call(
        self, operation: str, outcome: str, seconds: float, trace_id: str | None = None
    ) -> None:
        self.upstream_duration.labels("legacy", operation, outcome).observe(
            seconds, _exemplar(trace_id)
        )


class ShadowMetrics:
    """The shadow worker: comparisons, divergences, lag, the ledger's writes and health."""

    def __init__(
        self,
        metrics: Registry,
        freshness_slo_s: float = FRESHNESS_SLO_S,
        latency_slo_s: float = LATENCY_SLO_S,
    ) -> None:
        registry = metrics.prometheus
        self.comparisons = Counter(
            PREFIX + "comparisons",
            "Mirrored requests compared, by operation and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )
        self.divergences = Counter(
            PREFIX + "divergences",
            "Kinds of difference found in mismatched comparisons (one comparison can count "
            "under several kinds).",
            ["operation", "kind"],
            registry=registry,
        )
        self.monetary_divergences = Counter(
            PREFIX + "monetary_divergences",
            "Comparisons that found money at stake (amount, balance, currency, missing in the "
            "ledger): one per comparison, whatever its kinds. These page.",
            ["operation"],
            registry=registry,
        )
        self.shadow_lag = Histogram(
            PREFIX + "shadow_lag_seconds",
            "From the legacy answer being recorded to its comparison committed.",
            ["operation"],
            buckets=with_threshold(LAG_BUCKETS, freshness_slo_s),
            registry=registry,
        )
        self.upstream_duration = metrics.upstream_duration(latency_slo_s)
        self.batch_commands = Histogram(
            PREFIX + "ledger_batch_commands",
            "Ledger commands planned and committed together, per applied group.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_duration = Histogram(
            PREFIX + "ledger_commit_duration_seconds",
            "One applied group's transaction: ledger writes, balance reads, comparisons and "
            "offsets.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.event_log_head = Gauge(
            PREFIX + "ledger_event_log_head",
            "The sequence number of the ledger event log's last event.",
            registry=registry,
        )
        self.stream_head = Gauge(
            PREFIX + "mirror_stream_head",
            "The sequence number of the mirror stream's last record.",
            registry=registry,
        )
        self.backlog = Gauge(
            PREFIX + "mirror_backlog_events",
            "Mirror stream records not yet applied and compared.",
            registry=registry,
        )
        self.slo_attainment = Gauge(
            PREFIX + "slo_attainment_ratio",
            "Good events over all events in the SLO window, from the durable counts (NaN "
            "before any event).",
            ["slo"],
            registry=registry,
        )
        self.slo_budget_left = Gauge(
            PREFIX + "slo_error_budget_remaining_ratio",
            "The share of the SLO window's error budget not spent (below 0: overspent).",
            ["slo"],
            registry=registry,
        )
        self.trial_balance = Gauge(
            PREFIX + "ledger_trial_balance_minor",
            "Sum of every account's balance per currency, signed by its normal side, in minor "
            "units: must read zero.",
            ["currency"],
            registry=registry,
        )
        for operation in SHADOW_OPERATIONS:
            for outcome in Outcome:
                self.comparisons.labels(operation, outcome.value)
            for kind in DivergenceKind:
                self.divergences.labels(operation, kind.value)
            self.monetary_divergences.labels(operation)
            self.shadow_lag.labels(operation)
            for result in LEDGER_OUTCOMES:
                self.upstream_duration.labels("ledger", operation, result)

    def compared(
        self,
        operation: str,
        outcome: str,
        kinds: Iterable[str],
        lag_s: float | None,
        trace_id: str | None,
    ) -> None:
        operation = shadow_operation(operation)
        self.comparisons.labels(operation, outcome).inc()
        found = set(kinds)
        for kind in found:
            self.divergences.labels(operation, kind).inc()
        if found & MONETARY_KINDS:
            self.monetary_divergences.labels(operation).inc()
        if lag_s is not None:
            self.shadow_lag.labels(operation).observe(max(0.0, lag_s), _exemplar(trace_id))

    def ledger_call(self, operation: str, outcome: str, seconds: float) -> None:
        """A compared request's share of its group's ledger transaction."""
        self.upstream_duration.labels("ledger", shadow_operation(operation), outcome).observe(
            seconds
        )


class StatsCollector(Collector):
    """Counters kept by a part as plain numbers (capture's, the proxy's), exposed at scrape
    time: the hot path adds integers, and the scrape reads the single source of truth."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._read()


def capture_families(stats: Any, queued: Callable[[], int]) -> Iterator[Metric]:
    """Capture's counts (``sidecar.capture.CaptureStats``) as metric families."""
    records = CounterMetricFamily(
        PREFIX + "capture_records",
        "Mirror records handed to capture, by what became of them: committed (late too), dropped.",
        labels=["result"],
    )
    records.add_metric(["committed"], stats.committed)
    records.add_metric(["dropped"], sum(stats.dropped.values()))
    yield records
    late = CounterMetricFamily(
        PREFIX + "capture_late_records",
        "Records committed after their customer's answer had gone out (capture was slow).",
    )
    late.add_metric([], stats.late)
    yield late
    dropped = CounterMetricFamily(
        PREFIX + "capture_dropped_records",
        "Records capture dropped, by reason; every drop is counted here.",
        labels=["reason"],
    )
    for reason in sorted({*DROP_REASONS, *stats.dropped}):
        dropped.add_metric([reason], stats.dropped.get(reason, 0))
    yield dropped
    commits = CounterMetricFamily(
        PREFIX + "capture_commits", "Group commits of the mirror stream (many records each)."
    )
    commits.add_metric([], stats.appends)
    yield commits
    queue = GaugeMetricFamily(
        PREFIX + "capture_queue_records", "Records waiting for capture's next commit."
    )
    queue.add_metric([], queued())
    yield queue


def pool_families(pools: Mapping[str, Any]) -> Iterator[Metric]:
    """asyncpg pools' connections: in use, idle, and the configured maximum."""
    family = GaugeMetricFamily(
        PREFIX + "db_pool_connections",
        "Database pool connections by pool and state (in_use, idle, max).",
        labels=["pool", "state"],
    )
    for name, pool in pools.items():
        size, idle = pool.get_size(), pool.get_idle_size()
        family.add_metric([name, "in_use"], size - idle)
        family.add_metric([name, "idle"], idle)
        family.add_metric([name, "max"], pool.get_max_size())
    yield family


# --- exposition --------------------------------------------------------------------------


class _Merged:
    """A registry-like view: the families of several sources, same-named ones merged (the
    proxy's and the shadow worker's ``upstream_duration_seconds``, their pools)."""

    def __init__(self, sources: Sequence[Iterable[Metric]]) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for source in self._sources:
            for family in source:
                mine = merged.get(family.name)
                if mine is None:
                    merged[family.name] = family
                else:
                    mine.samples = _union(mine, family)
        return list(merged.values())


def _union(mine: Metric, theirs: Metric) -> list[Sample]:
    """Two processes' samples of one family. A series both expose (the ledger's upstream
    duration in ledger-primary: the proxy's decisions, the worker's groups) is exposed once:
    counts and histograms add up, as the union of the observations; a gauge keeps the first."""
    additive = mine.type in ("counter", "histogram", "summary")
    index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(mine.samples)}
    samples = list(mine.samples)
    for sample in theirs.samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        at = index.get(key)
        if at is None:
            index[key] = len(samples)
            samples.append(sample)
        elif additive:
            first = samples[at]
            samples[at] = first._replace(
                value=first.value + sample.value, exemplar=first.exemplar or sample.exemplar
            )
    return samples


def wants_openmetrics(accept: str | None) -> bool:
    return bool(accept) and "application/openmetrics-text" in (accept or "")


def render(
    metrics: Registry, accept: str | None, extra: Iterable[Metric] = ()
) -> tuple[bytes, str]:
    """The exposition for a scrape: OpenMetrics (with exemplars) when Prometheus asks for it,
    the classic text format otherwise; ``extra`` holds families scraped from the worker."""
    view = _Merged([metrics.prometheus.collect(), extra])
    if wants_openmetrics(accept):
        return openmetrics.generate_latest(view), openmetrics.CONTENT_TYPE_LATEST  # type: ignore[no-untyped-call]
    return generate_latest(view), TEXT_CONTENT_TYPE


def parse_openmetrics(text: str) -> list[Metric]:
    """Families from a worker's OpenMetrics exposition (exemplars kept)."""
    return list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
