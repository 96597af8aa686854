"""The applier on hand-written streams (real PostgreSQL): one group is one transaction, a
bootstrap run again opens nothing twice, and a replay reaches the live verdicts."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from sidecar.applier import Applier
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.comparison_store import BalanceReader, Finish, PostgresComparisonStore
from sidecar.db.connect import create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import drop_schema, migrate
from sidecar.db.mirror_store import PostgresMirrorLog
from sidecar.demo.shadow_demo import MAPPING
from sidecar.domain.bootstrap import BOOTSTRAP_ROUTE
from sidecar.domain.ledger import BatchPlan
from sidecar.domain.mapping import RouteTable
from sidecar.domain.mirror import Checkpoint, MirrorRecord, RecordKind
from sidecar.domain.shadow import ComparisonRecord
from sidecar.errors import LedgerUnavailable
from sidecar.mapping_file import load_route_table

ROUTES = load_route_table(MAPPING)


def record(kind: RecordKind, request_id: str, content: dict[str, Any], route: str) -> MirrorRecord:
    return MirrorRecord(0, kind, request_id, content, route=route)


def snapshot(request_id: str, balances: dict[str, str]) -> list[MirrorRecord]:
    accounts = [
        {"account_number": n, "currency": "EUR", "balance": b, "overdraft_limit": "0.00"}
        for n, b in balances.items()
    ]
    return [
        record(
            RecordKind.INTENT,
            request_id,
            {"method": "BOOTSTRAP", "bootstrap": "snapshot"},
            BOOTSTRAP_ROUTE,
        ),
        record(
            RecordKind.OUTCOME,
            request_id,
            {"status": 200, "body": json.dumps({"accounts": accounts})},
            BOOTSTRAP_ROUTE,
        ),
    ]


def plan(request_id: str, names: list[str]) -> list[MirrorRecord]:
    accounts = [{"account_number": n, "currency": "EUR", "overdraft_limit": "0.00"} for n in names]
    return [
        record(
            RecordKind.INTENT,
            request_id,
            {"method": "BOOTSTRAP", "bootstrap": "plan"},
            BOOTSTRAP_ROUTE,
        ),
        record(
            RecordKind.OUTCOME,
            request_id,
            {"status": 200, "body": json.dumps({"accounts": accounts})},
            BOOTSTRAP_ROUTE,
        ),
    ]


def read(request_id: str, account: str, value: str) -> list[MirrorRecord]:
    answer = {"available": {"value": value, "currency": "EUR"}}
    return [
        record(
            RecordKind.INTENT,
            request_id,
            {"method": "GET", "path": f"/v1/accounts/{account}/balance", "bootstrap": "read"},
            BOOTSTRAP_ROUTE,
        ),
        record(
            RecordKind.OUTCOME,
            request_id,
            {"status": 200, "body": json.dumps(answer)},
            BOOTSTRAP_ROUTE,
        ),
    ]


def exchange(
    request_id: str, route: str, path: str, body: dict[str, Any], answer: dict[str, Any]
) -> tuple[MirrorRecord, ...]:
    """A POST with its own idempotency key (``key-`` and the request id), answered 201."""
    return (
        record(
            RecordKind.INTENT,
            request_id,
            {
                "method": "POST",
                "path": path,
                "headers": [["Idempotency-Key", "key-" + request_id]],
                "body": json.dumps(body),
            },
            route,
        ),
        record(RecordKind.OUTCOME, request_id, {"status": 201, "body": json.dumps(answer)}, route),
    )


def payment(request_id: str, debit: str, credit: str, value: str) -> tuple[MirrorRecord, ...]:
    body = {
        "beneficiary": {"account_number": credit},
        "amount": {"value": value, "currency": "EUR"},
    }
    answer = {"payment_id": request_id, "amount": {"value": value, "currency": "EUR"}}
    return exchange(request_id, "payment", f"/v1/accounts/{debit}/payments", body, answer)


class FailingAfterTheWrite(PostgresComparisonStore):
    """Our adapter, failing once right after the group's ledger write, inside its
    transaction: as if the connection broke there."""

    failures = 1

    async def apply_group(
        self,
        plan: BatchPlan | None,
        ledger_checkpoints: list[Checkpoint],  # type: ignore[override]
        finish: Finish,
        compare_checkpoints: list[Checkpoint],  # type: ignore[override]
    ) -> list[ComparisonRecord]:
        async def broken(first_seq: int | None, reader: BalanceReader) -> list[ComparisonRecord]:
            if plan is not None and self.failures:
                self.failures -= 1
                raise LedgerUnavailable("connection broke (injected)")
            return await finish(first_seq, reader)

        return await super().apply_group(plan, ledger_checkpoints, broken, compare_checkpoints)


async def run_to_the_head(
    stream: PostgresMirrorLog,
    pool: asyncpg.Pool,
    comparisons: PostgresComparisonStore,
    routes: RouteTable,
    settings: Settings,
) -> Applier:
    """An applier started on the stream, run until it has compared everything, stopped."""
    applier = Applier(stream, PostgresLedgerStore(pool), comparisons, routes, settings.applier, 1)
    await applier.start()
    try:
        await applier.catch_up(timeout_s=30)
    finally:
        await applier.stop()
    return applier


async def balances(pool: asyncpg.Pool, names: str) -> dict[str, int | None]:
    store = PostgresLedgerStore(pool)
    return {n: await store.balance(n) for n in names}


async def test_a_failure_inside_a_group_writes_nothing_and_the_group_redone_is_right(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    stream = PostgresMirrorLog(pool)
    for r in snapshot("s", {"A": "0.00", "B": "10.00", "C": "0.00"}):
        await stream.append([r])
    x_in, x_out = payment("X", "B", "A", "10.00")  # money into A, then out of A: the order counts
    y_in, y_out = payment("Y", "A", "C", "10.00")
    for r in (x_in, x_out, y_in, y_out):
        await stream.append([r])
    comparisons = FailingAfterTheWrite(pool)
    applier = await run_to_the_head(stream, pool, comparisons, ROUTES, settings)
    assert applier.stats.retries >= 1
    assert await balances(pool, "ABC") == {"A": 0, "B": 0, "C": 1000}
    verdicts = await comparisons.by_request()
    assert {k: v["outcome"] for k, v in verdicts.items()} == {
        "s": "match",
        "X": "match",
        "Y": "match",
    }


async def test_a_bootstrap_run_again_opens_no_account_twice(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    stream = PostgresMirrorLog(pool)
    events = [
        *plan("p1", ["A", "B"]),
        *read("r1", "A", "0.00"),
        *read("r2", "B", "100.00"),
        *payment("X", "B", "A", "10.00"),
        *plan("p2", ["A", "B"]),  # an operator runs bootstrap again
        *payment("Y", "B", "A", "5.00"),
        *read("r3", "A", "15.00"),
        *read("r4", "B", "85.00"),
    ]
    for r in events:
        await stream.append([r])
    comparisons = PostgresComparisonStore(pool)
    await run_to_the_head(stream, pool, comparisons, ROUTES, settings)
    assert await balances(pool, "AB") == {"A": 1500, "B": 8500}
    assert (await comparisons.counts()).by_outcome.get("mismatch", 0) == 0


@pytest.mark.parametrize("chunk", [3, 5, 1000])
async def test_a_replay_applies_in_the_live_order_whatever_it_reads_at_once(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, chunk: int
) -> None:
    stream = PostgresMirrorLog(pool)
    for r in snapshot("s", {"A": "0.00", "B": "10.00", "C": "0.00"}):
        await stream.append([r])
    x_in, x_out = payment("X", "B", "A", "10.00")
    y_in, y_out = payment("Y", "A", "C", "10.00")
    for r in (x_in, y_in, y_out, x_out):  # overlapping: Y answered first, X took the money in
        await stream.append([r])
    applier_settings = replace(settings.applier, chunk_events_max=chunk)
    live = Applier(
        stream,
        PostgresLedgerStore(pool),
        PostgresComparisonStore(pool),
        ROUTES,
        applier_settings,
        1,
    )
    await live.start()
    try:
        await live.catch_up(timeout_s=30)
    finally:
        await live.stop()
    target = replace(db, schema=db.schema + "_r")
    await migrate(target)
    target_pool = await create_pool(target)
    try:
        replayed = Applier(
            stream,
            PostgresLedgerStore(target_pool),
            PostgresComparisonStore(target_pool),
            ROUTES,
            applier_settings,
            1,
        )
        replayed.replaying_to = await stream.head()
        replayed.never_answered = frozenset()
        await replayed._resume()
        while await replayed.apply_once():
            pass
        assert replayed.cursor == await stream.head()
        assert (
            await balances(target_pool, "ABC")
            == await balances(pool, "ABC")
            == {"A": 0, "B": 0, "C": 1000}
        )
    finally:
        await target_pool.close()
        await drop_schema(target, target.schema)


def cents_to_amount(exchange: Any, path_params: Any) -> dict[str, Any]:
    """A route hook: the request says cents, which the mapping file cannot turn into money."""
    cents = exchange.request["amount"]["cents"]
    if cents < 0:
        raise ValueError("negative cents")
    return {"amount": f"{cents // 100}.{cents % 100:02d}"}


HOOKED = (
    MAPPING.read_text()
    .replace(
        'amount = "request:amount.value"',
        'amount = "request:amount.cents"',
    )
    .replace(
        'operation = "transfer"',
        'operation = "transfer"\nhook = "tests.integration.test_applier:cents_to_amount"',
    )
)


async def test_a_route_hook_says_what_the_mapping_file_cannot(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    from sidecar.mapping_file import parse_text

    routes = parse_text(HOOKED, "hooked.toml")
    stream = PostgresMirrorLog(pool)
    for r in snapshot("s", {"A": "100.00", "B": "0.00"}):
        await stream.append([r])
    for request_id, cents in (("ok", 1050), ("bad", -5)):
        body = {
            "beneficiary": {"account_number": "B"},
            "amount": {"cents": cents, "currency": "EUR"},
        }
        answer = {"payment_id": request_id, "amount": {"value": "10.50", "currency": "EUR"}}
        await stream.append(
            [
                record(
                    RecordKind.INTENT,
                    request_id,
                    {
                        "method": "POST",
                        "path": "/v1/accounts/A/payments",
                        "headers": [["Idempotency-Key", request_id]],
                        "body": json.dumps(body),
                    },
                    "payment",
                )
            ]
        )
        await stream.append(
            [
                record(
                    RecordKind.OUTCOME,
                    request_id,
                    {"status": 201, "body": json.dumps(answer)},
                    "payment",
                )
            ]
        )
    comparisons = PostgresComparisonStore(pool)
    await run_to_the_head(stream, pool, comparisons, routes, settings)
    verdicts = await comparisons.by_request()
    assert verdicts["ok"]["outcome"] == "match"
    assert verdicts["bad"]["outcome"] == "skipped"
    assert "hook failed" in verdicts["bad"]["detail"]
    assert await balances(pool, "AB") == {"A": 10000 - 1050, "B": 1050}


async def test_an_applier_behind_does_not_pause_between_groups(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """A group that ends at an exchange still in flight is no sign of keeping up: only a read
    that reached the stream's head lets the next group gather (group_interval_ms)."""
    stream = PostgresMirrorLog(pool)
    for r in snapshot("s", {"A": "1000.00", "B": "0.00"}):
        await stream.append([r])
    exchanges = [payment(f"P{i}", "A", "B", "0.01") for i in range(400)]
    records = [exchanges[0][0]]
    for i in range(1, len(exchanges)):  # each answer recorded after the next request began
        records += [exchanges[i][0], exchanges[i - 1][1]]
    records.append(exchanges[-1][1])
    await stream.append(records)
    # a minute between groups if the applier thought it kept up: catch_up (30 s) would fail
    slow = replace(
        settings, applier=replace(settings.applier, chunk_events_max=100, group_interval_ms=60_000)
    )
    applier = await run_to_the_head(stream, pool, PostgresComparisonStore(pool), ROUTES, slow)
    assert applier.stats.groups >= 8
    assert await balances(pool, "AB") == {"A": 100_000 - 400, "B": 400}


def refund(request_id: str, of: str, value: str) -> tuple[MirrorRecord, ...]:
    answer = {"refund_id": request_id, "amount": {"value": value, "currency": "EUR"}}
    body = {"original_idempotency_key": "key-" + of}
    return exchange(request_id, "refund", f"/v1/payments/{of}/refund", body, answer)


async def test_a_posting_legacy_dropped_does_not_pass_for_a_race_and_its_refund_names_it(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Legacy accepts three payments out of A, which holds enough for the first only, and
    posts one of them (it dropped another silently). The ledger posts X and refuses Y and Z.
    The three overlapped, so some order of them is in question; but no order lets legacy pay
    out 25.00 from 10.00: Y's and Z's refusals are money divergences, not `order_dependent`.
    The refund of Y, which the ledger never posted, is listed under Y's accounts."""
    stream = PostgresMirrorLog(pool)
    for r in snapshot("s", {"A": "10.00", "B": "0.00", "C": "0.00", "D": "5.00", "E": "0.00"}):
        await stream.append([r])
    for r in payment("W", "D", "E", "1.00"):
        await stream.append([r])
    x_in, x_out = payment("X", "A", "B", "10.00")
    y_in, y_out = payment("Y", "A", "C", "10.00")
    z_in, z_out = payment("Z", "A", "B", "5.00")
    # a refund elsewhere (of W, D to E) in flight meanwhile changes nothing on A
    v_in, v_out = refund("V", "W", "1.00")
    for r in (x_in, y_in, v_in, z_in, x_out, y_out, v_out, z_out, *refund("R", "Y", "10.00")):
        await stream.append([r])
    comparisons = PostgresComparisonStore(pool)
    await run_to_the_head(stream, pool, comparisons, ROUTES, settings)
    verdicts = await comparisons.by_request()
    assert verdicts["X"]["outcome"] == verdicts["V"]["outcome"] == "match"
    for refused in ("Y", "Z"):
        assert verdicts[refused]["outcome"] == "mismatch", verdicts[refused]
        assert verdicts[refused]["kinds"] == ["status"], verdicts[refused]
        assert verdicts[refused]["monetary"], verdicts[refused]
    assert verdicts["R"]["outcome"] == "mismatch"
    assert set(verdicts["R"]["accounts"]) >= {"A", "C"}, verdicts["R"]
    listed = {d["request_id"] for d in await comparisons.divergences(account_id="C")}
    assert {"Y", "R"} <= listed  # `divergences list --account C` shows both


async def test_a_refusal_with_a_refund_in_flight_stays_explainable_by_order(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """As above, but a refund of X overlaps Y: legacy may have refunded X before paying Y, so
    Y's refusal by the ledger is `order_dependent` (a reversal's effect on the account is not
    known where orders are weighed, so the lenient rule holds)."""
    stream = PostgresMirrorLog(pool)
    for r in snapshot("s", {"A": "10.00", "B": "0.00", "C": "0.00"}):
        await stream.append([r])
    x_in, x_out = payment("X", "A", "B", "10.00")
    y_in, y_out = payment("Y", "A", "C", "10.00")
    q_in, q_out = refund("Q", "X", "10.00")
    for r in (x_in, y_in, x_out, q_in, y_out, q_out):  # the ledger takes X, refuses Y, then Q
        await stream.append([r])
    comparisons = PostgresComparisonStore(pool)
    await run_to_the_head(stream, pool, comparisons, ROUTES, settings)
    verdicts = await comparisons.by_request()
    assert verdicts["X"]["outcome"] == verdicts["Q"]["outcome"] == "match"
    assert verdicts["Y"]["kinds"] == ["order_dependent"], verdicts["Y"]
