"""Delivering ledger-answered requests to the legacy service (sidecar/legacy_delivery.py): in
stream order per partition, retried while legacy fails, recorded as undelivered after that;
against a real aiohttp legacy stand-in, with the stream port's in-memory fake."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.legacy_delivery import LegacyDelivery
from sidecar.mapping_file import load_route_table
from sidecar.memory import InMemoryMirrorLog

from tests.e2e.test_cli import ROOT

ROUTES = load_route_table(str(ROOT / "config" / "mappings" / "example-legacy.toml"))


class Legacy:
    """Answers after a random short wait, or 503 while ``down``; remembers arrival order."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.down = False

    async def handle(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"error": "busy"}, status=503)
        await asyncio.sleep(random.uniform(0, 0.02))
        self.arrived.append(request.headers["Idempotency-Key"])
        return web.json_response({"ok": True}, status=201)


@pytest.fixture
async def legacy() -> AsyncIterator[tuple[Legacy, str]]:
    stand_in = Legacy()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield stand_in, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def intent(
    partition: int,
    key: str,
    answered_by: str = "ledger-primary",
    payer: str = "A",
    payee: str = "B",
) -> MirrorRecord:
    body = (
        '{"beneficiary": {"account_number": "%s"}, "amount": {"value": "1.00", "currency": "EUR"}}'
    )
    return MirrorRecord(
        partition,
        RecordKind.INTENT,
        key,
        {
            "answered_by": answered_by,
            "method": "POST",
            "path": f"/v1/accounts/{payer}/payments",
            "headers": [["Idempotency-Key", key], ["Content-Type", "application/json"]],
            "body": body % payee,
        },
        route="payment",
    )


async def test_order_is_kept_per_account_and_ledger_only_is_never_sent(
    legacy: tuple[Legacy, str],
) -> None:
    stand_in, url = legacy
    stream = InMemoryMirrorLog()
    # three payers, each paying its own payee six times; the last one pays payer 0's payee
    records = [
        intent(0, f"p{p}-{n}", payer=f"A{p}", payee=f"B{p}") for n in range(6) for p in range(3)
    ]
    records.append(intent(1, "cross", payer="C", payee="B0"))
    await stream.append([*records, intent(0, "only", "ledger-only", payer="A0")])
    async with aiohttp.ClientSession() as session:
        delivery = LegacyDelivery(stream, ROUTES, session, url, timeout_s=2.0)
        delivered = await delivery.deliver_once(now=10**12)  # every grace period passed
    assert delivered == 19 and "only" not in stand_in.arrived
    for p in range(3):
        mine = [k for k in stand_in.arrived if k.startswith(f"p{p}-")]
        assert mine == [f"p{p}-{n}" for n in range(6)]
    # it names B0 after every one of p0's payments did: it arrived after them all
    assert stand_in.arrived.index("cross") > stand_in.arrived.index("p0-5")
    outcomes = await stream.outcomes([r.request_id for r in records])
    assert {o.record.content["status"] for o in outcomes.values()} == {201}


async def test_a_failing_legacy_is_retried_then_recorded_as_undelivered(
    legacy: tuple[Legacy, str],
) -> None:
    stand_in, url = legacy
    stream = InMemoryMirrorLog()
    await stream.append([intent(0, "k1")])
    async with aiohttp.ClientSession() as session:
        stand_in.down = True
        patient = LegacyDelivery(stream, ROUTES, session, url, timeout_s=2.0, attempts_max=30)
        task = asyncio.create_task(patient.deliver_once(now=10**12))
        await asyncio.sleep(0.5)
        stand_in.down = False  # back: the retry gets through
        assert await task == 1
        assert stand_in.arrived == ["k1"]
        await stream.append([intent(0, "k2")])
        stand_in.down = True
        impatient = LegacyDelivery(stream, ROUTES, session, url, timeout_s=2.0, attempts_max=2)
        assert await impatient.deliver_once(now=10**12) == 1
    outcome = (await stream.outcomes(["k2"]))["k2"].record.content
    assert outcome["error"] == "legacy_undelivered"
    assert impatient.undelivered == 1


async def test_nothing_is_sent_before_its_grace_period(legacy: tuple[Legacy, str]) -> None:
    stand_in, url = legacy
    stream = InMemoryMirrorLog()
    await stream.append([intent(0, "young")])
    async with aiohttp.ClientSession() as session:
        delivery = LegacyDelivery(stream, ROUTES, session, url, timeout_s=2.0)
        delivery.grace_s = 5.0
        assert await delivery.deliver_once(now=0.0) == 0  # recorded "after" now: too young
    assert stand_in.arrived == []
