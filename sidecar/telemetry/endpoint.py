"""The /metrics endpoint: the proxy's, and the shadow worker's when it runs as its own process.

``serve`` starts the worker (``ledger-sidecar apply``) with a metrics port of its own and, at
every scrape of its /metrics, fetches the worker's families and serves them with its own: one
scrape target for the whole sidecar. ``ledger_sidecar_shadow_worker_up`` says whether that
fetch worked (a dashboard shows a stopped worker instead of silently missing series).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from sidecar.telemetry.metrics import PREFIX, Registry, parse_openmetrics, render

METRICS_PATH = "/metrics"
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"


class WorkerScrape:
    """The shadow worker's families, fetched over HTTP at each scrape of the proxy."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout_s: float = 2.0) -> None:
        self._session = session
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def families(self) -> list[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "shadow_worker_up",
            "1 if the shadow worker's metrics could be read at this scrape, else 0.",
        )
        try:
            async with self._session.get(
                self.url, headers={"Accept": OPENMETRICS_ACCEPT}, timeout=self._timeout
            ) as answer:
                answer.raise_for_status()
                families = parse_openmetrics(await answer.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [*families, up]


def metrics_handler(
    metrics: Registry, worker: WorkerScrape | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        extra = await worker.families() if worker is not None else []
        body, content_type = render(metrics, request.headers.get("Accept"), extra)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle


async def serve_metrics(metrics: Registry, host: str, port: int) -> web.AppRunner:
    """A /metrics server of its own (the shadow worker's); the caller owns the runner."""
    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics_handler(metrics))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
