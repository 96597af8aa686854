"""The demo traffic generator: a wealth platform's clients, talking to the legacy API.

Workers send a seeded mix: payments between customers, a hot account, near-floor races (two
concurrent payments that cannot both fit), balance reads, new accounts funded from the house,
rejections (unknown beneficiary, more than the balance), client retries with the same
idempotency key, and refunds. Latencies are kept per target (``direct`` to the legacy service,
``sidecar`` through it) so their p50 and p99 can be held side by side.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from sidecar.demo.legacy import BASELINE_HEADER

HOT_ACCOUNT = "CUST-00000"


@dataclass
class TrafficReport:
    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    latencies_s: dict[str, list[float]] = field(
        default_factory=lambda: {"sidecar": [], "direct": []}
    )

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_kind": dict(self.by_kind),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "errors": self.errors,
            "latency_ms": {
                target: {
                    "p50": self.percentile_ms(target, 0.50),
                    "p99": self.percentile_ms(target, 0.99),
                    "n": len(self.latencies_s[target]),
                }
                for target in ("direct", "sidecar")
            },
        }

    def percentile_ms(self, target: str, q: float) -> float | None:
        values = sorted(self.latencies_s.get(target, []))
        if not values:
            return None
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class _Client:
    session: aiohttp.ClientSession
    sidecar: str
    direct: str
    accounts: list[str]
    rng: random.Random
    report: TrafficReport
    refundable: asyncio.Event | None = None  # set once payments can be refunded in shadow
    payments: list[str] = field(default_factory=list)  # keys of accepted payments
    last: tuple[str, dict[str, Any], str] | None = None  # (path, body, key) to retry

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = None,
        target: str = "sidecar",
    ) -> tuple[int, Any]:
        base = self.sidecar if target == "sidecar" else self.direct
        headers = {"Idempotency-Key": key} if key else {}
        if target == "direct":
            headers[BASELINE_HEADER] = "1"
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, base + path, json=body, headers=headers
            ) as answer:
                payload = await answer.json(content_type=None)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.report.errors += 1
            return 0, None
        self.report.latencies_s[target].append(time.perf_counter() - started)
        self.report.requests += 1
        self.report.by_kind[kind] += 1
        self.report.by_status[status] += 1
        return status, payload

    def amount(self, low: int = 100, high: int = 5000) -> str:
        return f"{self.rng.randint(low, high) / 100:.2f}"

    async def pay(
        self, kind: str, debit: str, credit: str, value: str, key: str | None = None
    ) -> int:
        key = key or uuid.UUID(int=self.rng.getrandbits(128)).hex
        body = {
            "beneficiary": {"account_number": credit},
            "amount": {"value": value, "currency": "EUR"},
            "reference": kind,
        }
        path = f"/v1/accounts/{debit}/payments"
        status, _ = await self.call(kind, "POST", path, body, key)
        if status == 201 and (self.refundable is None or self.refundable.is_set()):
            # a payment from before the ledger's bootstrap is in no ledger to be reversed
            self.payments.append(key)
            self.last = (path, body, key)
        return status

    def two(self) -> tuple[str, str]:
        a, b = self.rng.sample(self.accounts, 2)
        return a, b

    async def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.40:
            await self.pay("payment", *self.two(), self.amount())
        elif roll < 0.50:
            other = self.rng.choice([a for a in self.accounts[:50] if a != HOT_ACCOUNT])
            if self.rng.random() < 0.5:
                await self.pay("hot_payment", HOT_ACCOUNT, other, self.amount(100, 1000))
            else:
                await self.pay("hot_payment", other, HOT_ACCOUNT, self.amount(100, 1000))
        elif roll < 0.56:
            await self.race()
        elif roll < 0.76:
            account = self.rng.choice(self.accounts)
            target = "direct" if self.rng.random() < 0.5 else "sidecar"
            await self.call("balance", "GET", f"/v1/accounts/{account}/balance", target=target)
        elif roll < 0.80:
            number = f"NEW-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]}"
            status, _ = await self.call(
                "open_account",
                "POST",
                "/v1/accounts",
                {"account_number": number, "currency": "EUR"},
                key=number,
            )
            if status == 201:
                await self.pay("funding", "HOUSE-EUR", number, self.amount(10_000, 100_000))
                self.accounts.append(number)
        elif roll < 0.85 and self.last is not None:
            path, body, key = self.last
            await self.call("retry", "POST", path, body, key)
        elif roll < 0.90:
            if self.rng.random() < 0.5:
                await self.pay("rejected_unknown", self.rng.choice(self.accounts), "NOBODY", "1.00")
            else:
                debit, credit = self.two()
                await self.pay("rejected_nsf", debit, credit, "99999999.00")
        elif self.payments:
            original = self.payments.pop(self.rng.randrange(len(self.payments)))
            await self.call(
                "refund",
                "POST",
                "/v1/payments/p/refund",
                {"original_idempotency_key": original},
                key="refund-" + original,
            )

    async def race(self) -> None:
        """Two concurrent payments from one account that cannot both fit its balance."""
        account, other = self.two()
        status, payload = await self.call(
            "balance", "GET", f"/v1/accounts/{account}/balance", target="direct"
        )
        if status != 200:
            return
        minor = int(Decimal(payload["available"]["value"]).scaleb(2))
        if minor < 200:
            return
        each = f"{(minor * 7 // 10) / 100:.2f}"
        await asyncio.gather(
            self.pay("race", account, other, each), self.pay("race", account, other, each)
        )


async def run_traffic(
    sidecar_url: str,
    direct_url: str,
    accounts: list[str],
    *,
    seconds: float,
    workers: int = 8,
    seed: int = 1,
    on_tick: Callable[[TrafficReport], None] | None = None,
    stop: asyncio.Event | None = None,
    refundable: asyncio.Event | None = None,
) -> TrafficReport:
    report = TrafficReport()
    deadline = time.monotonic() + seconds
    stop = stop or asyncio.Event()
    connector = aiohttp.TCPConnector(limit=workers * 2)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def worker(n: int) -> None:
            client = _Client(
                session,
                sidecar_url,
                direct_url,
                list(accounts),
                random.Random(seed * 1000 + n),
                report,
                refundable=refundable,
            )
            while time.monotonic() < deadline and not stop.is_set():
                await client.step()

        async def ticker() -> None:
            while time.monotonic() < deadline and not stop.is_set():
                await asyncio.sleep(0.5)
                if on_tick is not None:
                    on_tick(report)

        tick = asyncio.create_task(ticker())
        try:
            await asyncio.gather(*(worker(n) for n in range(workers)))
        finally:
            tick.cancel()
    return report
