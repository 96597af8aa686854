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
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import trace

from sidecar.app import Sidecar
from sidecar.bootstrap import BootstrapReport, bootstrap
from sidecar.config import Settings
from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.db.migrate import drop_schema
from sidecar.demo.legacy import FaultRates, LegacyService
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
    #: run the demo legacy service in its own process (as a deployment does), not in this one
    legacy_process: bool = False
    mapping: Path = MAPPING
    #: spans of the sidecar (none by default)
    tracer: trace.Tracer | None = None
    legacy: LegacyService = field(init=False)
    sidecar: Sidecar = field(init=False)
    legacy_url: str = field(init=False)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def __aenter__(self) -> ShadowStack:
        try:
            if self.legacy_process:
                self.legacy_url = await self._spawn_legacy()
            else:
                self.legacy = LegacyService(FaultRates(), seed=self.seed)
                self.legacy.seed_accounts(self.customers)
                runner = web.AppRunner(self.legacy.app(), access_log=None)
                await runner.setup()
                self._stack.push_async_callback(runner.cleanup)
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                self.legacy_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            await self._start_sidecar()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _spawn_legacy(self) -> str:
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar.cli",
            "demo",
            "legacy",
            "--port",
            str(port),
            "--customers",
            str(self.customers),
            "--seed",
            str(self.seed),
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._stack.push_async_callback(_terminate, process)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(url + "/_legacy/health") as answer:
                        if answer.status == 200:
                            return url
                except aiohttp.ClientError:
                    pass
                if process.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the demo legacy service did not start on port {port}")

    async def set_faults(self, rates: FaultRates) -> None:
        if not self.legacy_process:
            self.legacy.rates = rates
            return
        async with (
            aiohttp.ClientSession() as session,
            session.put(self.legacy_url + "/_legacy/faults", json=asdict(rates)) as answer,
        ):
            answer.raise_for_status()

    async def faults(self) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.legacy_url + "/_legacy/faults") as answer,
        ):
            faults: list[dict[str, Any]] = (await answer.json())["faults"]
        return faults

    async def _start_sidecar(self) -> None:
        proxy = replace(
            self.settings.proxy,
            legacy_url=self.legacy_url,
            port=self.port,
            mode="shadow",
            mapping=str(self.mapping),
        )
        admin = replace(self.settings.admin, port=0)  # beside any sidecar already running
        self.sidecar = Sidecar(
            replace(self.settings, proxy=proxy, admin=admin),
            tracer=self.tracer or trace.NoOpTracer(),
        )
        await self.sidecar.start()
        self._stack.push_async_callback(self.sidecar.stop)

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
        async with aiohttp.ClientSession() as session:
            async with session.get(self.legacy_url + "/v1/accounts") as listing:
                numbers = [a["account_number"] for a in (await listing.json())["accounts"]]
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def summarise(
    divergences: list[dict[str, Any]],
    counts: Any,
    faults: list[dict[str, Any]],
    traffic: dict[str, Any],
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
    missed: list[dict[str, Any]] = []
    for fault in faults:
        wanted = DETECTED_BY.get(fault["kind"])
        if not wanted:
            continue
        if any(kinds_by_account.get(a, set()) & wanted for a in fault["accounts"]):
            detected[fault["kind"]] += 1
        else:
            missed.append(fault)
    legacy_errors = counts.by_outcome.get("legacy_error", 0)
    if injected.get("server_error"):
        detected["server_error"] = min(injected["server_error"], legacy_errors)
    # a fault's accounts are tainted, and so is every account a later divergence on a tainted
    # account touched: its money moved (or did not) because of the fault
    tainted = {a for f in faults if f["kind"] in DETECTED_BY for a in f["accounts"]}
    for d in sorted(divergences, key=lambda d: d["seq"]):
        if tainted & set(d["accounts"]):
            tainted.update(d["accounts"])
    false = [
        d
        for d in divergences
        if d["kinds"] != ["order_dependent"]
        and not tainted & set(d["accounts"] or [d["account_id"]])
    ]
    return {
        "requests": traffic["requests"],
        "requests_by_kind": traffic["by_kind"],
        "comparisons": counts.total,
        "matches": counts.by_outcome.get("match", 0),
        "outcomes": dict(counts.by_outcome),
        "divergences_by_kind": dict(by_kind),
        "monetary_divergences": counts.monetary,
        "injected_faults": dict(injected),
        "detected_faults": dict(detected),
        "false_divergences": len(false),
        "false_divergence_examples": false[:5],
        "undetected_faults": missed[:10],
        "latency_ms": traffic["latency_ms"],
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
    for fault in summary.get("undetected_faults") or []:
        out.append(
            f"undetected: {fault['kind']} on {', '.join(fault['accounts'])} "
            f"(key {fault['key']}): {fault['detail']}"
        )
    examples = summary.get("false_divergence_examples") or []
    if examples:
        out += ["", "false divergences (no injected fault explains them), first few:"]
        for d in examples:
            values = "; ".join(
                f"{x['field']}: legacy {x['legacy']} / ledger {x['ledger']}"
                for x in d["differences"]
            )
            out.append(f"  offset {d['seq']}  {d['account_id']}  {d['route']}  {values}")
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
    tracer: trace.Tracer | None = None,
) -> int:
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    db = settings.database
    # one line per divergence is for log pipelines; the demo ends with the table instead
    for name in ("sidecar.applier", "sidecar.in_doubt", "sidecar.requests"):
        logging.getLogger(name).setLevel(logging.ERROR)
    await drop_schema(db, db.schema)
    # the demo legacy service answers within 200 ms, latency spikes included: a request with
    # no recorded answer after 3 s is in doubt (in production: more than the legacy timeout)
    settings = replace(
        settings,
        proxy=replace(settings.proxy, legacy_timeout_s=2.0),
        applier=replace(settings.applier, require_bootstrap=True, in_doubt_after_s=3.0),
    )
    say(f"==> fresh ledger in schema {db.schema} at {db.url}")
    stack = ShadowStack(
        settings, customers=customers, seed=seed, port=port, legacy_process=True, tracer=tracer
    )
    async with stack:
        say(
            f"==> demo legacy service at {stack.legacy_url} ({customers} customers with money); "
            f"sidecar in shadow mode at {stack.sidecar_url} (its /metrics lives there)"
        )
        traffic = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar.cli",
            "demo",
            "traffic",
            "--target",
            stack.sidecar_url,
            "--direct",
            stack.legacy_url,
            "--seconds",
            str(seconds),
            "--customers",
            str(customers),
            "--workers",
            str(workers),
            "--seed",
            str(seed),
            "--refunds-on-signal",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            report = await _run_alongside(stack, traffic, seconds, say)
        finally:
            await _terminate(traffic)
        store = stack.comparisons()
        divergences = await store.divergences(limit=1_000_000)
        counts = await store.counts()
        faults = await stack.faults()
    summary = summarise(divergences, counts, faults, report)
    if as_json:
        summary.pop("false_divergence_examples")
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    return 0


async def _run_alongside(
    stack: ShadowStack,
    traffic: asyncio.subprocess.Process,
    seconds: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Bootstrap under the traffic, turn faults on, show progress, then settle."""
    started = time.monotonic()
    applier = stack.sidecar.applier
    assert applier is not None

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            head = await applier.stream.head()
            say(
                f"    {time.monotonic() - started:5.1f}s  stream head {head:,}, "
                f"{applier.stats.compared:,} compared"
            )

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(min(1.0, seconds / 4))
        boot = await stack.bootstrap()
        if traffic.returncode is None:
            traffic.send_signal(signal.SIGUSR1)
        say(
            f"==> bootstrapped {boot.opened} of {boot.accounts} legacy accounts while traffic "
            f"flowed ({boot.reads} balance reads, {boot.reread} read again)"
        )
        await stack.set_faults(DEMO_FAULTS)
        say("==> fault injection on")
        out, _ = await traffic.communicate()
        await stack.set_faults(FaultRates())
        say("==> traffic done; reading every balance once through the sidecar")
        await stack.read_every_balance()
        say("==> waiting for requests in doubt to be resolved and the applier to catch up")
        await stack.settle(timeout_s=max(120.0, 4 * stack.settings.applier.in_doubt_after_s))
    finally:
        tick.cancel()
    if traffic.returncode != 0:
        raise RuntimeError(f"the traffic generator failed (exit {traffic.returncode})")
    summary: dict[str, Any] = json.loads(out)
    return summary
