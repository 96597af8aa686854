"""A client cannot tell the sidecar is there: for every route of the demo legacy service,
errors and unmapped routes included, the answer through the sidecar (shadow mode) equals the
direct one: status, end-to-end headers and body bytes. Requests that create something carry an
idempotency key, sent first directly and then through the sidecar, so the legacy service
answers both with the same stored answer."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from sidecar.config import DatabaseSettings, Settings
from sidecar.demo.shadow_demo import ShadowStack

from tests.integration.test_shadow import shadow_settings

PAY = "/v1/accounts/CUST-00001/payments"


def payment(value: str, beneficiary: str = "CUST-00002") -> dict[str, Any]:
    return {
        "beneficiary": {"account_number": beneficiary},
        "amount": {"value": value, "currency": "EUR"},
    }


CASES: list[tuple[str, str, str, Any, str | None]] = [
    (
        "open account",
        "POST",
        "/v1/accounts",
        {"account_number": "NEW-1", "currency": "EUR"},
        "open-1",
    ),
    (
        "open account taken",
        "POST",
        "/v1/accounts",
        {"account_number": "CUST-00001", "currency": "EUR"},
        None,
    ),
    ("open account invalid", "POST", "/v1/accounts", {"currency": "XXX"}, None),
    ("payment", "POST", PAY, payment("12.34"), "pay-1"),
    ("payment refused", "POST", PAY, payment("99999999.00"), "pay-nsf"),
    ("payment unknown payee", "POST", PAY, payment("1.00", "NOBODY"), "pay-unknown"),
    ("payment malformed", "POST", PAY, {"amount": "a lot"}, "pay-bad"),
    ("refund", "POST", "/v1/payments/p/refund", {"original_idempotency_key": "pay-1"}, "refund-1"),
    (
        "refund of nothing",
        "POST",
        "/v1/payments/p/refund",
        {"original_idempotency_key": "never"},
        "refund-2",
    ),
    ("balance of nobody", "GET", "/v1/accounts/NOBODY/balance", None, None),
    ("unmapped account page", "GET", "/v1/accounts/CUST-00001", None, None),
    ("unmapped nowhere", "GET", "/v1/nowhere?x=1", None, None),
    ("unmapped method", "DELETE", "/v1/accounts", None, None),
]


async def exchange(
    client: aiohttp.ClientSession, base: str, method: str, path: str, body: Any, key: str | None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Idempotency-Key": key} if key else {}
    data = orjson.dumps(body) if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with client.request(method, base + path, data=data, headers=headers) as answer:
        raw = await answer.read()
        end_to_end = {k: v for k, v in answer.headers.items() if k.lower() not in ("date",)}
        return answer.status, end_to_end, raw


@pytest.fixture
async def stack(settings: Settings, db: DatabaseSettings):  # type: ignore[no-untyped-def]
    async with ShadowStack(shadow_settings(settings, db), customers=5) as running:
        await running.bootstrap()
        yield running


async def test_every_route_answers_the_same_through_the_sidecar(stack: ShadowStack) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for name, method, path, body, key in CASES:
            direct = await exchange(client, stack.legacy_url, method, path, body, key)
            through = await exchange(client, stack.sidecar_url, method, path, body, key)
            assert through == direct, name


async def test_a_balance_read_answers_the_same_but_for_its_clock(stack: ShadowStack) -> None:
    async with aiohttp.ClientSession() as client:
        path = "/v1/accounts/CUST-00001/balance"
        direct = await exchange(client, stack.legacy_url, "GET", path, None, None)
        through = await exchange(client, stack.sidecar_url, "GET", path, None, None)
    assert direct[0] == through[0] == 200
    assert set(direct[1]) == set(through[1])
    mine, theirs = orjson.loads(direct[2]), orjson.loads(through[2])
    assert mine.pop("as_of") and theirs.pop("as_of")  # the legacy service's own clock
    assert mine == theirs
