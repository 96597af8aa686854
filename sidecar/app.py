"""Composition root: build the sidecar from Settings, start it in numbered steps, stop it in
reverse. The only place adapters are chosen and wired.

Guarantees (tests/integration/test_app.py):
- ``start`` either brings every part up or, failing at a step, stops the ones already started
  and raises; ``stop`` drains capture before closing the pools it writes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import aiohttp
import asyncpg
from aiohttp import web
from opentelemetry import trace

from sidecar.admin.api import AdminApi
from sidecar.admin.replays import ReplayRunner
from sidecar.applier import Applier
from sidecar.capture import Capture
from sidecar.config import Settings
from sidecar.db.admin_store import PostgresAdminStore
from sidecar.db.answer_store import PostgresAnswerStore
from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.db.connect import create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import migrate
from sidecar.db.mirror_store import PostgresMirrorLog, save_capture_counts
from sidecar.db.slo_store import save_thresholds
from sidecar.domain.flags import Evaluation, Mode
from sidecar.domain.readiness import Report
from sidecar.errors import ConfigError, SidecarError
from sidecar.flag_watch import FlagWatcher
from sidecar.in_doubt import InDoubtResolver
from sidecar.legacy_delivery import LegacyDelivery
from sidecar.mapping_file import load_route_table
from sidecar.owned import OwnedTask
from sidecar.posting import Ledger
from sidecar.proxy.app import Proxy, legacy_session
from sidecar.proxy.ledger_answer import LedgerAnswerer
from sidecar.readiness import readiness
from sidecar.slo_file import load_slo_file
from sidecar.telemetry.endpoint import METRICS_PATH, WorkerScrape, metrics_handler
from sidecar.telemetry.metrics import (
    FRESHNESS_SLO_S,
    LATENCY_SLO_S,
    AccountLabels,
    ProxyMetrics,
    Registry,
    ShadowMetrics,
    StatsCollector,
    capture_families,
)
from sidecar.telemetry.sampler import HealthSampler, worker_families

log = logging.getLogger(__name__)


@dataclass
class ShadowWorker:
    """The shadow path behind the stream: the applier and the in-doubt resolver, with their
    own database pool and legacy connection. Runs inside the sidecar (tests, the demo's
    stack) or as its own process (``ledger-sidecar apply``, which ``serve`` starts), so that
    its work never takes the customer path's event loop."""

    settings: Settings
    #: the process's metrics (the sidecar's own when the worker runs inside it)
    metrics: Registry = field(default_factory=Registry)
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)
    applier: Applier | None = None
    resolver: InDoubtResolver | None = None
    delivery: LegacyDelivery | None = None
    sampler: HealthSampler | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def start(self) -> None:
        settings = self.settings
        stack = self._stack
        slos = load_slo_file(settings.telemetry.slo_file)
        shadow_metrics = ShadowMetrics(
            self.metrics,
            slos.threshold("shadow_freshness", FRESHNESS_SLO_S),
            slos.threshold("latency", LATENCY_SLO_S),
        )
        if settings.proxy.mapping is None:
            raise ConfigError("proxy.mapping: the shadow applier needs a mapping file")
        try:
            # 1. the mapping, 2. migrations and a pool, 3. the applier, 4. the resolver
            routes = load_route_table(settings.proxy.mapping)
            await migrate(settings.database)
            pool = await create_pool(settings.database)
            stack.push_async_callback(pool.close)
            self.metrics.pools["applier"] = pool
            await save_thresholds(
                pool, {s.name: s.threshold_s for s in slos.slos if s.threshold_s is not None}
            )
            stream = PostgresMirrorLog(pool)
            self.applier = Applier(
                stream,
                PostgresLedgerStore(pool),
                PostgresComparisonStore(pool),
                routes,
                settings.applier,
                settings.proxy.partitions,
                shadow_metrics,
                self.tracer,
                settings.telemetry.sensitive_fields,
            )
            await self.applier.start()
            stack.push_async_callback(self.applier.stop)
            self.sampler = HealthSampler(pool, shadow_metrics, self.applier, slos)
            self.sampler.start()
            stack.push_async_callback(self.sampler.stop)
            session: aiohttp.ClientSession = await legacy_session(settings.proxy)
            stack.push_async_callback(session.close)
            self.resolver = InDoubtResolver(
                stream,
                routes,
                session,
                settings.proxy.legacy_url,
                settings.applier.in_doubt_after_s,
            )
            self.resolver.start()
            stack.push_async_callback(self.resolver.stop)
            # 5. what the ledger answered (ledger-primary), delivered to the legacy service
            self.delivery = LegacyDelivery(
                stream, routes, session, settings.proxy.legacy_url, settings.proxy.legacy_timeout_s
            )
            self.delivery.start()
            stack.push_async_callback(self.delivery.stop)
            applier, resolver = self.applier, self.resolver
            self.metrics.register(StatsCollector(lambda: worker_families(applier, resolver)))
        except BaseException:
            await stack.aclose()
            raise
        log.info(
            "shadow worker running",
            extra={"event": "started", "role": "shadow_worker", "mode": settings.proxy.mode},
        )

    async def stop(self) -> None:
        await self._stack.aclose()
        if self.applier is not None:  # it had started
            log.info(
                "shadow worker stopped",
                extra={
                    "event": "stopped",
                    "role": "shadow_worker",
                    "compared": self.applier.stats.compared,
                },
            )


class CountsSaver:
    """Owner of the task that saves this instance's served and captured totals every second
    (and once more at stop), for ``ledger-sidecar stream status``."""

    def __init__(self, pool: asyncpg.Pool, sidecar: Sidecar) -> None:
        self._pool = pool
        self._sidecar = sidecar
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._started_at = datetime.now(UTC)
        self._saved: dict[str, tuple[int, int]] = {}
        self._owned = OwnedTask("capture-counts")

    def start(self) -> None:
        self._owned.start(self._run)

    async def stop(self) -> None:
        await self._owned.stop()
        with contextlib.suppress(SidecarError):
            await self.save()

    async def save(self) -> None:
        proxy = self._sidecar.proxy
        if proxy is None or proxy.capture is None:
            return
        stats = proxy.capture.stats
        counts = {
            "served": proxy.stats.requests,
            "mapped": proxy.stats.mapped,
            "recorded": stats.recorded,
            "committed": stats.committed,
            "late": stats.late,
            "dropped": dict(stats.dropped),
        }
        # the SLO events: (bad, total) running totals, saved as deltas since the last save
        totals = {
            "availability": (proxy.stats.errors, proxy.stats.completed),
            "latency": (proxy.stats.slow, proxy.stats.completed),
            "shadow_completeness": (stats.dropped_intents, proxy.stats.mapped),
        }
        deltas = {}
        for name, (bad, total) in totals.items():
            was_bad, was_total = self._saved.get(name, (0, 0))
            new_total, new_bad = total - was_total, bad - was_bad
            deltas[name] = (max(0, new_total - new_bad), new_total)
        await save_capture_counts(self._pool, self._instance, self._started_at, counts, deltas)
        self._saved = totals  # only once written: a failed save is carried to the next

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.save()
            except SidecarError as exc:  # the database is down: the next save catches up
                log.warning("capture counts not saved", extra={"event": "counts", "code": exc.code})


@dataclass
class Sidecar:
    settings: Settings
    #: run the shadow worker (applier, resolver) in this process; False when it runs as its
    #: own process (``serve`` starts ``ledger-sidecar apply`` beside itself)
    shadow_in_process: bool = True
    #: where the shadow worker running as its own process serves its /metrics (merged into
    #: this one's at each scrape)
    worker_metrics_url: str | None = None
    metrics: Registry = field(default_factory=Registry)
    #: the scrape of that worker's /metrics (its url moves with each start of the worker)
    worker_scrape: WorkerScrape | None = None
    #: spans of the customer path (and of the worker, when it runs here)
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)
    proxy: Proxy | None = None
    worker: ShadowWorker | None = None
    runner: web.AppRunner | None = None
    #: the cutover flag as this instance sees it (None without a mapping: no database)
    flags: FlagWatcher | None = None
    admin_runner: web.AppRunner | None = None
    #: replays the admin API may start (``serve`` gives one; None: the API starts none)
    replays: ReplayRunner | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    @property
    def applier(self) -> Applier | None:
        return self.worker.applier if self.worker else None

    @applier.setter
    def applier(self, applier: Applier | None) -> None:
        assert self.worker is not None
        self.worker.applier = applier

    @property
    def resolver(self) -> InDoubtResolver | None:
        return self.worker.resolver if self.worker else None

    async def start(self) -> None:
        settings = self.settings
        stack = self._stack
        try:
            # 1. the route mapping (fails before anything is opened); in legacy mode too, if
            # one is given, for the operation label of the sidecar's metrics
            routes = None
            if settings.proxy.mapping:
                routes = load_route_table(settings.proxy.mapping)
            slos = load_slo_file(settings.telemetry.slo_file)
            latency_slo_s = slos.threshold("latency", LATENCY_SLO_S)
            proxy_metrics = ProxyMetrics(
                self.metrics,
                AccountLabels(settings.telemetry),
                settings.proxy.mode,
                latency_slo_s,
            )
            # 2. database: migrations, a pool, capture through the mirror stream, and the
            # cutover flag. With a mapping the flag may turn shadowing on at run time, so
            # capture and the shadow worker run whatever the configured mode
            capture = None
            pool = None
            answerer: LedgerAnswerer | None = None
            if routes is not None:
                await migrate(settings.database)
                pool = await create_pool(settings.database)
                stack.push_async_callback(pool.close)
                self.metrics.pools["capture"] = pool
                # capture's writer keeps one connection of a pool of its own, so that the
                # flag, counts and ledger-primary never wait behind it for a connection
                writer_pool = await create_pool(
                    replace(settings.database, pool_connections_min=1, pool_connections_max=1)
                )
                stack.push_async_callback(writer_pool.close)
                self.metrics.pools["capture_writer"] = writer_pool
                captured_stream = PostgresMirrorLog(writer_pool, hold_connection=True)
                stack.push_async_callback(captured_stream.close)  # after capture has stopped
                capture = Capture(captured_stream, settings.capture)
                await capture.start()
                captured = capture
                self.metrics.register(
                    StatsCollector(
                        lambda: capture_families(captured.stats, lambda: captured.queued)
                    )
                )
                # totals saved after capture has stopped too (callbacks run in reverse)
                counts = CountsSaver(pool, self)
                stack.push_async_callback(counts.stop)
                stack.push_async_callback(capture.stop)
                counts.start()
                # 2b. the shadow worker, here or in its own process
                if self.shadow_in_process:
                    self.worker = ShadowWorker(settings, self.metrics, self.tracer)
                    await self.worker.start()
                    stack.push_async_callback(self.worker.stop)
                # 2b'. the ledger answering customers, if every route says how (ledger-primary)
                # (a route's Python hook is not run on this path: such a mapping stays out)
                if all(r.answer is not None and r.hook is None for r in routes.routes):
                    ledger_store = PostgresLedgerStore(pool)
                    ledger = Ledger(ledger_store, settings.ledger)
                    await ledger.start()
                    stack.push_async_callback(ledger.stop)
                    answerer = LedgerAnswerer(
                        ledger, ledger_store, routes.currencies, PostgresAnswerStore(pool)
                    )
                # 2c. the cutover flag, followed at run time
                admin_store = PostgresAdminStore(pool, Mode(settings.proxy.mode))
                self.flags = FlagWatcher(
                    admin_store, settings.admin.flag_poll_s, proxy_metrics.flag
                )
                await self.flags.start()
                stack.push_async_callback(self.flags.stop)
            # 3. the keep-alive pool towards the legacy service
            session: aiohttp.ClientSession = await legacy_session(settings.proxy)
            stack.push_async_callback(session.close)
            # 4. the proxy, listening, with the metrics endpoint
            self.proxy = Proxy(
                settings.proxy,
                session,
                routes,
                capture,
                proxy_metrics,
                self.tracer,
                latency_slo_s=latency_slo_s,
                mode_of=self._mode_of() if self.flags is not None else None,
                answerer=answerer,
            )
            worker = None
            if self.worker_metrics_url is not None:
                # its own connection: a scrape never queues behind customers' legacy calls
                scraping = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                stack.push_async_callback(scraping.close)
                worker = self.worker_scrape = WorkerScrape(scraping, self.worker_metrics_url)
            app = self.proxy.app({METRICS_PATH: metrics_handler(self.metrics, worker)})
            self.runner = web.AppRunner(app, access_log=None, auto_decompress=False)
            await self.runner.setup()
            stack.push_async_callback(self.runner.cleanup)
            await web.TCPSite(self.runner, settings.proxy.host, settings.proxy.port).start()
            # 5. the admin API, on its own port
            if settings.admin.enabled and self.flags is not None and pool is not None:
                flags, mapped, shared = self.flags, routes, pool

                async def report(cohort: str | None) -> Report:
                    assert mapped is not None
                    return await readiness(shared, settings, mapped, slos, flags.rules, cohort)

                admin = AdminApi(
                    self.flags.store,
                    PostgresComparisonStore(pool),
                    self.flags,
                    frozenset(Mode)
                    if answerer is not None
                    else frozenset({Mode.LEGACY, Mode.SHADOW}),
                    self.tracer,
                    settings.admin.body_bytes_max,
                    report,
                    self.replays,
                    routes.currencies if routes is not None else None,
                    lambda report: proxy_metrics.readiness(report, time.time()),
                )
                if self.replays is not None:
                    stack.push_async_callback(self.replays.stop)
                self.admin_runner = web.AppRunner(admin.app(), access_log=None)
                await self.admin_runner.setup()
                stack.push_async_callback(self.admin_runner.cleanup)
                await web.TCPSite(
                    self.admin_runner, settings.admin.host, settings.admin.port
                ).start()
        except BaseException:
            await stack.aclose()
            raise
        log.info(
            "sidecar listening",
            extra={
                "event": "started",
                "role": "proxy",
                "mode": settings.proxy.mode,
                "port": settings.proxy.port,
                "legacy_url": settings.proxy.legacy_url,
            },
        )

    async def stop(self) -> None:
        await self._stack.aclose()
        if self.proxy is not None:  # it had started
            served = self.proxy.stats.requests
            log.info(
                "sidecar stopped", extra={"event": "stopped", "role": "proxy", "served": served}
            )

    def _mode_of(self) -> Callable[[str | None], Evaluation]:
        flags = self.flags
        assert flags is not None
        return lambda account: flags.rules.evaluate(account)

    @property
    def admin_port(self) -> int | None:
        """The admin API's port actually bound, if it runs."""
        if self.admin_runner is None or not self.admin_runner.addresses:
            return None
        return int(self.admin_runner.addresses[0][1])

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self.runner is None or not self.runner.addresses:
            raise RuntimeError("the sidecar is not listening")
        address = self.runner.addresses[0]
        return int(address[1])
