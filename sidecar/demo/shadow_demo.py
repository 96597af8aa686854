"""``ledger-sidecar demo``: the whole shadow flow on this machine, ending in a verdict table.

It starts the demo legacy service (with customers already holding money), the sidecar in
shadow mode in front of it, and the traffic generator; bootstraps the ledger from the legacy
accounts while traffic flows; turns fault injection on; reads every balance once at the end;
waits for the applier to catch up; and holds the divergences found against the faults the
legacy service says it injected.

``ShadowStack`` is the same set-up for tests: the real legacy service over HTTP, the real
sidecar, real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.bootstrap import BootstrapReport, bootstrap
from sidecar.config import Settings
from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.db.migrate import drop_schema
from sidecar.demo.legacy import FaultRates, LegacyService
from sidecar.demo.traffic import TrafficReport, run_traffic
from sidecar.report import table

MAPPING = Path(__file__).resolve().parents[2] / "config" / "mappings" / "example-legacy.toml"
DEMO_FAULTS = FaultRates(
    rounding=0.004, dropped=0.003, wrong_balance=0.01, latency_spike=0.005, server_error=0.01
)
#: each injected fault kind, and the divergence kinds that detect it
DETECTED_BY = {
    "rounding": {"amount"},
    "dropped": {"balance", "status"},
    "wrong_balance": {"balance"},
}
#: faults that change the legacy's state: every later difference on their accounts is theirs
STATE_FAULTS = {"rounding", "dropped"}


@dataclass
class ShadowStack:
    """The legacy service, the sidecar in shadow mode and PostgreSQL, started together."""

    settings: Settings
    customers: int = 200
    seed: int = 7
    port: int = 0
    legacy: LegacyService = field(init=False)
    sidecar: Sidecar = field(init=False)
    legacy_url: str = field(init=False)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def __aenter__(self) -> ShadowStack:
        self.legacy = LegacyService(FaultRates(), seed=self.seed)
        self.legacy.seed_accounts(self.customers)
        runner = web.AppRunner(self.legacy.app(), access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.legacy_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        proxy = replace(
            self.settings.proxy,
            legacy_url=self.legacy_url,
            port=self.port,
            mode="shadow",
            mapping=str(MAPPING),
        )
        self.sidecar = Sidecar(replace(self.settings, proxy=proxy))
        await self.sidecar.start()
        self._stack.push_async_callback(self.sidecar.stop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.port}"

    async def bootstrap(self) -> BootstrapReport:
        applier = self.sidecar.applier
        assert applier is not None
        return await bootstrap(
            applier.stream,
            applier.comparisons,
            applier.routes,
            self.legacy_url,
            self.legacy_url + "/v1/accounts",
        )

    async def read_every_balance(self) -> int:
        """One balance read per legacy account, through the sidecar (so each is compared)."""
        numbers = list(self.legacy.state.accounts)
        async with aiohttp.ClientSession() as session:
            semaphore = asyncio.Semaphore(16)

            async def read(number: str) -> None:
                async with (
                    semaphore,
                    session.get(f"{self.sidecar_url}/v1/accounts/{number}/balance") as answer,
                ):
                    await answer.read()

            await asyncio.gather(*(read(n) for n in numbers))
        return len(numbers)

    async def catch_up(self, timeout_s: float = 120.0) -> None:
        applier = self.sidecar.applier
        assert applier is not None
        await applier.catch_up(timeout_s=timeout_s)

    async def settle(self, timeout_s: float = 120.0) -> None:
        """Wait until every request is answered or resolved, and the applier has caught up."""
        applier = self.sidecar.applier
        assert applier is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            head = await applier.stream.head()
            if not await applier.stream.in_doubt(head):
                break
            if loop.time() > deadline:
                raise TimeoutError("requests are still in doubt")
            await asyncio.sleep(0.1)
        await applier.catch_up(timeout_s=max(1.0, deadline - loop.time()))

    def comparisons(self) -> PostgresComparisonStore:
        applier = self.sidecar.applier
        assert applier is not None
        return applier.comparisons


def summarise(
    divergences: list[dict[str, Any]],
    counts: Any,
    faults: list[dict[str, Any]],
    traffic: TrafficReport,
) -> dict[str, Any]:
    """Injected faults against detected divergences; a divergence no fault explains is false."""
    injected = Counter(f["kind"] for f in faults)
    by_kind: Counter[str] = Counter()
    kinds_by_account: dict[str, set[str]] = {}
    for d in divergences:
        for kind in d["kinds"]:
            by_kind[kind] += 1
            if d["account_id"]:
                kinds_by_account.setdefault(d["account_id"], set()).add(kind)
    detected: Counter[str] = Counter()
    for fault in faults:
        wanted = DETECTED_BY.get(fault["kind"])
        if wanted and any(kinds_by_account.get(a, set()) & wanted for a in fault["accounts"]):
            detected[fault["kind"]] += 1
    legacy_errors = counts.by_outcome.get("legacy_error", 0)
    if injected.get("server_error"):
        detected["server_error"] = min(injected["server_error"], legacy_errors)
    tainted = {a for f in faults if f["kind"] in DETECTED_BY for a in f["accounts"]}
    false = [
        d
        for d in divergences
        if d["kinds"] != ["order_dependent"] and d["account_id"] not in tainted
    ]
    return {
        "requests": traffic.requests,
        "requests_by_kind": dict(traffic.by_kind),
        "comparisons": counts.total,
        "matches": counts.by_outcome.get("match", 0),
        "outcomes": dict(counts.by_outcome),
        "divergences_by_kind": dict(by_kind),
        "monetary_divergences": counts.monetary,
        "injected_faults": dict(injected),
        "detected_faults": dict(detected),
        "false_divergences": len(false),
        "false_divergence_examples": false[:5],
        "latency_ms": {
            target: {
                "p50": traffic.percentile_ms(target, 0.50),
                "p99": traffic.percentile_ms(target, 0.99),
                "n": len(traffic.latencies_s[target]),
            }
            for target in ("direct", "sidecar")
        },
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(summary: dict[str, Any]) -> str:
    kinds = sorted(set(summary["injected_faults"]) | {"rounding", "dropped", "wrong_balance"})
    rows = []
    for kind in kinds:
        injected = summary["injected_faults"].get(kind, 0)
        detected = summary["detected_faults"].get(kind, "n/a" if kind == "latency_spike" else 0)
        rows.append([kind, injected, detected])
    out = [
        table(["injected fault", "injected", "detected"], rows),
        "",
        table(
            ["divergence kind", "count"],
            sorted(summary["divergences_by_kind"].items()) or [["(none)", 0]],
        ),
        "",
        table(
            ["", "value"],
            [
                ["requests", summary["requests"]],
                ["comparisons", summary["comparisons"]],
                ["matches", summary["matches"]],
                ["false divergences", summary["false_divergences"]],
            ]
            + [[f"outcome {k}", v] for k, v in sorted(summary["outcomes"].items())],
        ),
        "",
        table(
            ["latency (ms)", "p50", "p99", "requests"],
            [[t, _fmt(v["p50"]), _fmt(v["p99"]), v["n"]] for t, v in summary["latency_ms"].items()],
        ),
    ]
    return "\n".join(out)


async def run_shadow_demo(
    settings: Settings,
    *,
    seconds: float,
    port: int,
    customers: int,
    workers: int,
    seed: int,
    as_json: bool,
) -> int:
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    db = settings.database
    # one line per divergence is for log pipelines; the demo ends with the table instead
    logging.getLogger("sidecar.applier").setLevel(logging.ERROR)
    await drop_schema(db, db.schema)
    settings = replace(settings, applier=replace(settings.applier, require_bootstrap=True))
    say(f"==> fresh ledger in schema {db.schema} at {db.url}")
    async with ShadowStack(settings, customers=customers, seed=seed, port=port) as stack:
        say(
            f"==> demo legacy service at {stack.legacy_url} ({customers} customers with money); "
            f"sidecar in shadow mode at {stack.sidecar_url} (metrics will live there)"
        )
        started = time.monotonic()

        def tick(report: TrafficReport) -> None:
            applier = stack.sidecar.applier
            compared = applier.stats.compared if applier else 0
            say(
                f"    {time.monotonic() - started:5.1f}s  {report.requests:,} requests, "
                f"{compared:,} compared"
            )

        bootstrapped = asyncio.Event()
        traffic = asyncio.create_task(
            run_traffic(
                stack.sidecar_url,
                stack.legacy_url,
                [f"CUST-{i:05d}" for i in range(customers)],
                seconds=seconds,
                workers=workers,
                seed=seed,
                on_tick=tick,
                refundable=bootstrapped,
            )
        )
        await asyncio.sleep(min(1.0, seconds / 4))
        report = await stack.bootstrap()
        bootstrapped.set()
        say(
            f"==> bootstrapped {report.opened} of {report.accounts} legacy accounts while "
            f"traffic flowed ({report.reads} balance reads, {report.reread} read again)"
        )
        stack.legacy.rates = DEMO_FAULTS
        say("==> fault injection on")
        result = await traffic
        stack.legacy.rates = FaultRates()
        say("==> traffic done; reading every balance once through the sidecar")
        await stack.read_every_balance()
        await stack.settle()
        store = stack.comparisons()
        divergences = await store.divergences(limit=1_000_000)
        counts = await store.counts()
        async with (
            aiohttp.ClientSession() as session,
            session.get(stack.legacy_url + "/_legacy/faults") as answer,
        ):
            faults = (await answer.json())["faults"]
    summary = summarise(divergences, counts, faults, result)
    if as_json:
        summary.pop("false_divergence_examples")
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    return 0
