"""The ledger answering customers (sidecar/proxy/ledger_answer.py) against the demo legacy
service and real PostgreSQL: the same requests get the same customer-visible answers in
``shadow`` and ``ledger-primary``; the write is durable before the answer; flipping back to
``shadow`` loses nothing; ``ledger-only`` leaves legacy untouched."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.admin_store import PostgresAdminStore
from sidecar.demo.legacy import FaultRates
from sidecar.demo.shadow_demo import ShadowStack
from sidecar.domain.audit import AuditRecord
from sidecar.domain.flags import Mode
from sidecar.verify import verify

from tests.integration.test_shadow import CUSTOMERS, shadow_settings, traffic

#: fields each side makes up for itself: never compared
VOLATILE = {"payment_id", "refund_id", "created_at", "opened_at", "as_of"}


@pytest.fixture
async def stack(settings: Settings, db: DatabaseSettings) -> AsyncIterator[ShadowStack]:
    async with ShadowStack(shadow_settings(settings, db), customers=CUSTOMERS, seed=11) as running:
        await running.bootstrap()
        await running.settle()
        yield running


async def set_mode(stack: ShadowStack, pool: asyncpg.Pool, mode: Mode) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    record = AuditRecord("rm", "release_manager", "flag.flip", True, reason="test")
    await store.change_flag(lambda r: r.with_default(mode), record)
    flags = stack.sidecar.flags
    assert flags is not None
    await flags.refresh()


def scenario(run: str) -> list[tuple[str, str, dict[str, str], Any]]:
    """One customer's day, replayable: requests with fixed keys (``run`` keeps two stacks'
    new account ids apart from nothing: both start from the same seed)."""
    key = lambda name: f"{run}-{name}"  # noqa: E731 - a short local helper
    pay = "/v1/accounts/{}/payments"
    return [
        ("GET", "/v1/accounts/CUST-00001/balance", {}, None),
        (
            "POST",
            "/v1/accounts",
            {"Idempotency-Key": key("open")},
            {"account_number": "NEW-1", "currency": "EUR"},
        ),
        (
            "POST",
            "/v1/accounts",
            {"Idempotency-Key": key("open-again")},
            {"account_number": "NEW-1", "currency": "EUR"},
        ),
        (
            "POST",
            pay.format("CUST-00001"),
            {"Idempotency-Key": key("p1")},
            {
                "beneficiary": {"account_number": "NEW-1"},
                "amount": {"value": "12.34", "currency": "EUR"},
            },
        ),
        (
            "POST",
            pay.format("CUST-00001"),
            {"Idempotency-Key": key("p1")},
            {
                "beneficiary": {"account_number": "NEW-1"},
                "amount": {"value": "12.34", "currency": "EUR"},
            },
        ),
        (
            "POST",
            pay.format("NEW-1"),
            {"Idempotency-Key": key("nsf")},
            {
                "beneficiary": {"account_number": "CUST-00002"},
                "amount": {"value": "99999.00", "currency": "EUR"},
            },
        ),
        (
            "POST",
            pay.format("CUST-00002"),
            {"Idempotency-Key": key("nobody")},
            {
                "beneficiary": {"account_number": "NOBODY"},
                "amount": {"value": "1.00", "currency": "EUR"},
            },
        ),
        (
            "POST",
            "/v1/payments/x/refund",
            {"Idempotency-Key": key("r1")},
            {"original_idempotency_key": key("p1")},
        ),
        (
            "POST",
            "/v1/payments/x/refund",
            {"Idempotency-Key": key("r2")},
            {"original_idempotency_key": key("p1")},
        ),
        (
            "POST",
            "/v1/payments/x/refund",
            {"Idempotency-Key": key("r3")},
            {"original_idempotency_key": key("never")},
        ),
        # not money: the ledger cannot decide it, so the legacy service answers, as in shadow
        (
            "POST",
            pay.format("CUST-00003"),
            {"Idempotency-Key": key("bad")},
            {
                "beneficiary": {"account_number": "NEW-1"},
                "amount": {"value": "lots", "currency": "EUR"},
            },
        ),
        ("GET", "/v1/accounts/NEW-1/balance", {}, None),
        ("GET", "/v1/accounts/CUST-00001/balance", {}, None),
        ("GET", "/v1/accounts/NOBODY/balance", {}, None),
        # retries under a key get the first answer, whatever changed since
        (
            "POST",
            "/v1/accounts",
            {"Idempotency-Key": key("open")},
            {"account_number": "NEW-1", "currency": "EUR"},
        ),
        (
            "POST",
            pay.format("CUST-00002"),
            {"Idempotency-Key": key("later")},
            {
                "beneficiary": {"account_number": "LATER-1"},
                "amount": {"value": "1.00", "currency": "EUR"},
            },
        ),
        (
            "POST",
            "/v1/accounts",
            {"Idempotency-Key": key("open-later")},
            {"account_number": "LATER-1", "currency": "EUR"},
        ),
        (
            "POST",
            pay.format("CUST-00002"),
            {"Idempotency-Key": key("later")},
            {
                "beneficiary": {"account_number": "LATER-1"},
                "amount": {"value": "1.00", "currency": "EUR"},
            },
        ),
    ]


async def play(stack: ShadowStack, run: str) -> list[tuple[int, Any]]:
    answers = []
    async with aiohttp.ClientSession() as session:
        for method, path, headers, body in scenario(run):
            async with session.request(
                method, stack.sidecar_url + path, headers=headers, json=body
            ) as answer:
                document = await answer.json()
                answers.append((answer.status, scrub(document)))
    return answers


def scrub(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: scrub(v) for k, v in document.items() if k not in VOLATILE}
    return document


async def test_the_customer_sees_the_same_answers_in_shadow_and_ledger_primary(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool
) -> None:
    # two stacks from one seed: the same accounts and balances, one per mode
    async with ShadowStack(shadow_settings(settings, db), customers=CUSTOMERS, seed=11) as shadow:
        await shadow.bootstrap()
        await shadow.settle()
        shadowed = await play(shadow, "run")
    other = DatabaseSettings(**{**db.__dict__, "schema": db.schema + "_p"})
    from sidecar.db.migrate import drop_schema

    try:
        configured = shadow_settings(settings, other)
        async with ShadowStack(configured, customers=CUSTOMERS, seed=11) as primary:
            await primary.bootstrap()
            await primary.settle()
            other_pool = await asyncpg.create_pool(
                other.url.reveal(), server_settings={"search_path": other.schema}
            )
            try:
                await set_mode(primary, other_pool, Mode.LEDGER_PRIMARY)
                answered = await play(primary, "run")
            finally:
                await other_pool.close()
    finally:
        await drop_schema(db, other.schema)
    assert [status for status, _ in answered] == [status for status, _ in shadowed]
    assert answered == shadowed
    statuses = [200, 201, 409, 201, 201, 402, 422, 201, 409, 404, 422, 200, 200, 404]
    statuses += [201, 422, 201, 422]
    assert [s for s, _ in shadowed] == statuses


async def test_ledger_primary_writes_first_and_flipping_back_loses_nothing(
    stack: ShadowStack, pool: asyncpg.Pool
) -> None:
    await set_mode(stack, pool, Mode.LEDGER_PRIMARY)
    run = uuid.uuid4().hex[:8]
    answers = await play(stack, run)
    # the ledger holds the payment the customer was told about, at once
    key = f"transfer:{run}-p1"
    assert await pool.fetchval("SELECT status FROM transfers WHERE key = $1", key) == "posted"
    await set_mode(stack, pool, Mode.SHADOW)  # back: legacy answers again
    await stack.settle()
    outcomes = {
        r["operation"]: r["n"]
        for r in await pool.fetch(
            "SELECT operation, count(*) AS n FROM comparisons"
            " WHERE operation NOT LIKE 'bootstrap%' GROUP BY 1"
        )
    }
    assert sum(outcomes.values()) == len(answers)  # every request compared, none lost
    monetary = await pool.fetch("SELECT operation, kinds, detail FROM comparisons WHERE monetary")
    # legacy, delivered every request in order per account, agrees on every movement (a
    # balance read may see another partition's movement early: order_dependent, not money)
    assert [dict(m) for m in monetary] == []
    # every movement the ledger accepted while primary is in the ledger once
    posted = await pool.fetchval(
        "SELECT count(*) FROM transfers WHERE key LIKE $1 AND status = 'posted'", f"%{run}-%"
    )
    assert posted == 2  # the payment (its replay moved nothing) and its refund


async def test_ledger_only_answers_without_asking_legacy(
    stack: ShadowStack, pool: asyncpg.Pool
) -> None:
    await set_mode(stack, pool, Mode.LEDGER_ONLY)
    before = stack.legacy.state.requests
    run = uuid.uuid4().hex[:8]
    answers = await play(stack, run)
    assert stack.legacy.state.requests == before  # legacy never asked
    assert [s for s, _ in answers][:4] == [200, 201, 409, 201]
    assert [s for s, _ in answers][-4:] == [201, 422, 201, 422]  # first answers, kept
    # what the ledger cannot decide gets the sidecar's own clear 4xx: there is no one else
    status, said = answers[10]
    assert (status, said["code"]) == (422, "invalid_command") and "lots" in said["message"]
    await stack.settle()
    skipped = await pool.fetchval(
        "SELECT count(*) FROM comparisons WHERE outcome = 'skipped' AND detail LIKE 'ledger-only%'"
    )
    assert skipped == len(answers)


async def test_concurrent_traffic_in_ledger_primary_loses_nothing_and_applies_nothing_twice(
    stack: ShadowStack, pool: asyncpg.Pool, db: DatabaseSettings
) -> None:
    await set_mode(stack, pool, Mode.LEDGER_PRIMARY)
    report = await traffic(stack, 2.0, seed=21)
    assert report.errors == 0 and 500 not in report.by_status
    await set_mode(stack, pool, Mode.SHADOW)
    await stack.settle()
    mapped = await pool.fetchval(
        "SELECT count(*) FROM mirror_events WHERE kind = 'intent' AND route IS NOT NULL"
        " AND NOT content ? 'bootstrap'"
    )
    compared = await pool.fetchval(
        "SELECT count(*) FROM comparisons WHERE operation NOT LIKE 'bootstrap%'"
    )
    assert compared == mapped > 100  # every request the ledger answered is compared
    answered = await pool.fetchval(
        "SELECT count(*) FROM mirror_events WHERE kind = 'intent' AND content ? 'answered_by'"
    )
    assert answered > 100
    report_ = await verify(db)
    assert report_.ok, report_.to_dict()  # chain, rows, trial balance: nothing twice


async def test_a_movement_legacy_never_took_is_a_monetary_divergence(
    stack: ShadowStack, pool: asyncpg.Pool
) -> None:
    worker = stack.sidecar.worker
    assert worker is not None and worker.delivery is not None
    worker.delivery.attempts_max = 2
    stack.legacy.rates = FaultRates(server_error=1.0)  # legacy fails everything
    await set_mode(stack, pool, Mode.LEDGER_PRIMARY)
    async with aiohttp.ClientSession() as session:
        path = "/v1/accounts/CUST-00004/payments"
        body = {
            "beneficiary": {"account_number": "CUST-00005"},
            "amount": {"value": "3.00", "currency": "EUR"},
        }
        async with session.post(
            stack.sidecar_url + path, json=body, headers={"Idempotency-Key": "lost-1"}
        ) as answer:
            assert answer.status == 201  # the ledger answered
    await stack.settle()
    row = await pool.fetchrow(
        "SELECT outcome, kinds, monetary, detail FROM comparisons WHERE operation = 'transfer'"
        " ORDER BY seq DESC LIMIT 1"
    )
    assert (row["outcome"], row["kinds"], row["monetary"]) == (
        "mismatch",
        ["missing_in_legacy"],
        True,
    )
    assert "never delivered" in row["detail"]
