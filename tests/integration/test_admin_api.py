"""The admin API against real PostgreSQL and real sidecars (sidecar/admin/api.py): tokens and
roles, one audit record per change, refused attempts recorded, bad input refused with nothing
changed, and a flag change reaching every running instance without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from sidecar.app import Sidecar
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.admin_store import PostgresAdminStore
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.demo.legacy import FaultRates, LegacyService
from sidecar.domain.audit import AuditRecord, Role
from sidecar.domain.flags import Mode
from sidecar.posting import Ledger
from sidecar.verify import verify

from tests.ledger_builders import open_bank

MAPPING = Path(__file__).parents[2] / "config" / "mappings" / "example-legacy.toml"


class Instance:
    """One running sidecar and a client for its admin API."""

    def __init__(self, sidecar: Sidecar, session: aiohttp.ClientSession) -> None:
        self.sidecar = sidecar
        self.session = session
        self.admin = f"http://127.0.0.1:{sidecar.admin_port}/admin/v1"
        self.proxy = f"http://127.0.0.1:{sidecar.port}"

    async def call(
        self, method: str, path: str, token: str | None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.admin + path, headers=headers, **kwargs
        ) as answer:
            return answer.status, await answer.json()


@pytest.fixture
async def legacy_url() -> AsyncIterator[str]:
    legacy = LegacyService(FaultRates(), seed=3)
    legacy.seed_accounts(20)
    runner = web.AppRunner(legacy.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


async def start(
    settings: Settings, db: DatabaseSettings, legacy_url: str, stack: AsyncExitStack
) -> Instance:
    configured = replace(
        settings,
        database=db,
        proxy=replace(
            settings.proxy, legacy_url=legacy_url, port=0, mode="legacy", mapping=str(MAPPING)
        ),
        admin=replace(settings.admin, port=0, flag_poll_s=0.2),
    )
    sidecar = Sidecar(configured)
    await sidecar.start()
    stack.push_async_callback(sidecar.stop)
    session = await stack.enter_async_context(aiohttp.ClientSession())
    return Instance(sidecar, session)


async def token(pool: asyncpg.Pool, role: Role, name: str | None = None) -> str:
    store = PostgresAdminStore(pool, Mode.LEGACY)
    bootstrap = AuditRecord("bootstrap", None, "token.create", True, reason="test set-up")
    _, text = await store.create_token(name or role.value, role, bootstrap)
    return text


async def audit(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return await PostgresAdminStore(pool, Mode.LEGACY).audit_log(limit=1000)


async def test_no_token_or_a_bad_one_is_401_and_recorded(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    body = {"mode": "shadow", "reason": "try it"}
    status, answer = await one.call("PUT", "/modes/default", None, json=body)
    assert (status, answer["error"]["code"]) == (401, "unauthenticated")
    status, _ = await one.call("PUT", "/modes/default", "lsk_abcdefghijkl_nope", json=body)
    assert status == 401
    assert one.sidecar.flags is not None and one.sidecar.flags.rules.version == 0
    records = await audit(pool)
    assert [(r["actor"], r["action"], r["allowed"]) for r in records] == [
        ("anonymous", "flag.set_default", False)
    ] * 2
    assert records[0]["refusal"]["code"] == "unauthenticated"


async def test_roles_get_the_least_they_need_and_refusals_are_recorded(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    viewer = await token(pool, Role.VIEWER)
    operator = await token(pool, Role.OPERATOR)
    status, modes = await one.call("GET", "/modes", viewer)
    assert (status, modes["default"], modes["version"]) == (200, "legacy", 0)
    assert modes["available"] == ["ledger-only", "ledger-primary", "legacy", "shadow"]
    for who in (viewer, operator):
        status, answer = await one.call(
            "PUT", "/modes/default", who, json={"mode": "shadow", "reason": "not mine"}
        )
        assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, _ = await one.call("GET", "/tokens", operator)
    assert status == 403
    assert (await one.call("GET", "/modes", viewer))[1]["version"] == 0
    refused = [r for r in await audit(pool) if not r["allowed"]]
    assert [(r["actor"], r["action"]) for r in refused] == [
        ("viewer", "flag.set_default"),
        ("operator", "flag.set_default"),
        ("operator", "token.list"),
    ]
    assert [r["reason"] for r in refused] == ["not mine", "not mine", None]


async def test_a_mode_change_writes_one_record_with_before_after_reason_and_trace(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    release = await token(pool, Role.RELEASE_MANAGER, "rm-alice")
    before = len(await audit(pool))
    status, answer = await one.call(
        "PUT", "/modes/default", release, json={"mode": "shadow", "reason": "start shadowing"}
    )
    assert (status, answer["default"], answer["version"]) == (200, "shadow", 1)
    records = await audit(pool)
    assert len(records) == before + 1
    record = records[-1]
    assert record["seq"] == answer["audit_seq"]
    assert (record["actor"], record["role"], record["action"], record["allowed"]) == (
        "rm-alice",
        "release_manager",
        "flag.set_default",
        True,
    )
    assert record["reason"] == "start shadowing" and record["target"] == "default"
    assert (record["before"]["default"], record["after"]["default"]) == ("legacy", "shadow")
    assert record["produced"] == {"flag_version": 1}
    assert "trace_id" in record
    report = await verify(db)
    assert report.check("audit_chain").ok


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/modes/default", {"mode": "shadow"}, 400, "invalid_request"),  # no reason
        ("PUT", "/modes/default", {"mode": 3, "reason": "why not"}, 400, "invalid_request"),
        ("PUT", "/modes/default", {"mode": "primary", "reason": "typo"}, 400, "invalid_request"),
        ("PUT", "/modes/default", {"mode": "shadow", "reason": "x", "extra": 1}, 400, None),
        ("PUT", "/modes/default", "not json", 400, "invalid_request"),
        (
            "PUT",
            "/modes/default",
            {"mode": "ledger-primary", "reason": "too soon"},
            409,
            "flip_required",
        ),
        (
            "PUT",
            "/modes/cohorts/canary",
            {"mode": "ledger-only", "percent": 5, "reason": "too soon"},
            409,
            "flip_required",
        ),
        ("PUT", "/modes/cohorts/canary", {"mode": "shadow", "reason": "wave"}, 400, None),
        (
            "PUT",
            "/modes/cohorts/canary",
            {"mode": "shadow", "percent": 101, "reason": "too many"},
            400,
            None,
        ),
        (
            "PUT",
            "/modes/cohorts/canary",
            {"mode": "shadow", "percent": "0.001", "reason": "too fine"},
            400,
            None,
        ),
        ("PUT", "/modes/cohorts/Bad Name", {"mode": "shadow", "reason": "name"}, 400, None),
        ("DELETE", "/modes/cohorts/nothere?reason=tidy", None, 404, "not_found"),
        ("DELETE", "/modes/cohorts/nothere", None, 400, None),  # no reason
        ("GET", "/divergences?limit=0", None, 400, None),
        ("GET", "/divergences?limit=ten", None, 400, None),
        ("GET", "/divergences?colour=red", None, 400, None),
        ("PUT", "/modes/default", {"mode": "shadow", "reason": "x" * 70_000}, 413, None),
    ],
)
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    settings: Settings,
    db: DatabaseSettings,
    pool: asyncpg.Pool,
    legacy_url: str,
    stack: Any,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str | None,
) -> None:
    one = await start(settings, db, legacy_url, stack)
    admin = await token(pool, Role.ADMIN)
    kwargs: dict[str, Any] = {}
    if isinstance(body, dict):
        kwargs["json"] = body
    elif body is not None:
        kwargs["data"] = body
    got, answer = await one.call(method, path, admin, **kwargs)
    assert got == status, answer
    assert answer["error"]["message"]
    if code:
        assert answer["error"]["code"] == code
    assert (await PostgresAdminStore(pool, Mode.LEGACY).flag_rules()).version == 0


async def test_a_flip_applies_at_run_time_on_every_instance(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    two = await start(settings, db, legacy_url, stack)
    release = await token(pool, Role.RELEASE_MANAGER)

    async def mirrored() -> int:
        count: int = await pool.fetchval("SELECT count(*) FROM mirror_events")
        return count

    async def read(instance: Instance, account: str) -> None:
        async with instance.session.get(f"{instance.proxy}/v1/accounts/{account}/balance") as a:
            assert a.status == 200

    await read(two, "CUST-00001")
    assert await mirrored() == 0  # legacy mode: nothing mirrored
    # one account shadowed, by a list cohort, through instance one's API
    status, _ = await one.call(
        "PUT",
        "/modes/cohorts/pilot",
        release,
        json={"mode": "shadow", "accounts": ["CUST-00001"], "reason": "pilot one account"},
    )
    assert status == 200
    deadline = time.monotonic() + 10
    while two.sidecar.flags is None or two.sidecar.flags.rules.version != 1:
        assert time.monotonic() < deadline, "instance two never saw the change"
        await asyncio.sleep(0.05)
    await read(two, "CUST-00002")  # not in the cohort: still legacy
    assert await mirrored() == 0
    await read(two, "CUST-00001")
    assert await mirrored() == 2  # its intent and its outcome
    status, evaluation = await two.call("GET", "/modes/evaluation?account_id=CUST-00001", release)
    assert evaluation == {
        "flag_key": "ledger-mode",
        "variant": "shadow",
        "reason": "TARGETING_MATCH",
        "cohort": "pilot",
    }
    # everyone, and back: each instance follows
    await one.call("PUT", "/modes/default", release, json={"mode": "shadow", "reason": "all"})
    while two.sidecar.flags.rules.version != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    async with two.session.get(f"{two.proxy}/_sidecar/health") as answer:
        assert (await answer.json())["mode"] == "shadow"


async def test_triage_and_tokens_through_the_api(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    admin = await token(pool, Role.ADMIN, "root")
    await pool.execute(
        "INSERT INTO comparisons (request_id, seq, intent_seq, partition, route, operation,"
        " outcome, kinds, monetary, account_id, accounts)"
        " VALUES ('r1', 42, 41, 0, 'pay', 'transfer', 'mismatch', '{amount}', true,"
        " 'CUST-00003', '{CUST-00003}')"
    )
    status, listed = await one.call("GET", "/divergences", admin)
    assert status == 200
    assert [(d["seq"], d["triage"]["state"]) for d in listed["divergences"]] == [(42, "open")]
    body = {"state": "resolved", "reason": "fixed upstream"}
    status, answer = await one.call("POST", "/divergences/42/triage", admin, json=body)
    assert (status, answer["error"]["code"]) == (400, "invalid_request")  # a note is needed
    body["note"] = "legacy rounding bug, refunded by ticket 123"
    status, answer = await one.call("POST", "/divergences/42/triage", admin, json=body)
    assert (status, answer["state"]) == (200, "resolved")
    status, listed = await one.call("GET", "/divergences", admin)
    assert listed["divergences"][0]["triage"]["state"] == "resolved"
    status, _ = await one.call("POST", "/divergences/999/triage", admin, json=body)
    assert status == 404

    status, created = await one.call(
        "POST", "/tokens", admin, json={"name": "bob", "role": "operator", "reason": "new hire"}
    )
    assert status == 201
    status, me = await one.call("GET", "/whoami", created["token"])
    assert (status, me["role"]) == (200, "operator")
    status, _ = await one.call("DELETE", f"/tokens/{created['id']}?reason=left", admin)
    assert status == 200
    status, _ = await one.call("GET", "/whoami", created["token"])
    assert status == 401
    status, listed_tokens = await one.call("GET", "/tokens", admin)
    assert all("secret" not in t and "token" not in t for t in listed_tokens["tokens"])
    actions = [
        r["action"] for r in (await one.call("GET", "/audit?limit=1000", admin))[1]["records"]
    ]
    assert actions.count("divergence.triage") == 3  # the refused note-less one, the resolve, 404
    assert actions.count("token.create") == 2 and actions.count("token.revoke") == 1


async def test_the_openapi_document_is_served_without_a_token(
    settings: Settings, db: DatabaseSettings, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    async with one.session.get(one.admin + "/openapi.json") as answer:
        document = await answer.json()
    assert document["openapi"] == "3.1.0"
    assert "/admin/v1/modes/default" in document["paths"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/tokens",
            b'{"name": "' + b"a" * 100 + b'\\n", "role": "viewer", "reason": "x1y"}',
        ),
        ("PUT", "/modes/default", b'{"mode": "shadow", "reason": "abc\\ud800"}'),
        ("PUT", "/modes/default", b'{"mode": "shadow", "reason": "abc\\u0000"}'),
        ("PUT", "/modes/cohorts/abc%0A", b'{"mode": "shadow", "percent": 1, "reason": "abc"}'),
        ("GET", "/divergences?limit=1&limit=abc", None),
        ("GET", "/divergences?after_seq=1_0", None),
        ("GET", "/divergences?after_seq=99999999999999999999999", None),
    ],
)
async def test_odd_input_is_a_4xx_never_a_5xx(
    settings: Settings,
    db: DatabaseSettings,
    pool: asyncpg.Pool,
    legacy_url: str,
    stack: Any,
    method: str,
    path: str,
    body: bytes | None,
) -> None:
    one = await start(settings, db, legacy_url, stack)
    admin = await token(pool, Role.ADMIN)
    status, answer = await one.call(method, path, admin, data=body)
    assert 400 <= status < 500, answer
    assert answer["error"]["code"] and answer["error"]["message"]
    assert (await PostgresAdminStore(pool, Mode.LEGACY).flag_rules()).version == 0


async def test_a_token_of_non_ascii_bytes_is_a_401(
    settings: Settings, db: DatabaseSettings, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    reader, writer = await asyncio.open_connection("127.0.0.1", one.sidecar.admin_port)
    writer.write(
        b"GET /admin/v1/modes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer lsk_abcdefghijkl_\xff\xfe\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_anonymous_knocking_is_recorded_at_a_bounded_pace(
    settings: Settings, db: DatabaseSettings, pool: asyncpg.Pool, legacy_url: str, stack: Any
) -> None:
    one = await start(settings, db, legacy_url, stack)
    for _ in range(75):
        status, _ = await one.call("GET", "/modes", None)
        assert status == 401
    records = await audit(pool)
    assert len(records) == 60  # one minute's allowance; the other 15 are counted, not kept


async def test_a_manual_adjustment_posts_through_the_ledger_with_its_record_in_one_transaction(
    settings: Settings,
    db: DatabaseSettings,
    pool: asyncpg.Pool,
    ledger: Ledger,
    legacy_url: str,
    stack: Any,
) -> None:
    await open_bank(ledger)  # c0, c1, c2 with 100.00 EUR each
    one = await start(settings, db, legacy_url, stack)
    operator = await token(pool, Role.OPERATOR, "ops-carol")
    release = await token(pool, Role.RELEASE_MANAGER)
    store = PostgresLedgerStore(pool)
    body = {
        "debit": "c0",
        "credit": "c1",
        "amount": "12.34",
        "currency": "EUR",
        "key": "ADJ-ticket-42",
        "reason": "legacy rounding refund, ticket 42",
    }
    status, _ = await one.call("POST", "/adjustments", release, json=body)
    assert status == 403  # moving money is an operator's job, not a release manager's
    head = (await store.head()).seq
    status, made = await one.call("POST", "/adjustments", operator, json=body)
    assert (status, made["status"], made["replayed"]) == (201, "posted", False), made
    assert made["ledger_seq"] == head + 1
    assert (await store.balance("c0"), await store.balance("c1")) == (10_000 - 1234, 10_000 + 1234)
    record = next(r for r in await audit(pool) if r["seq"] == made["audit_seq"])
    assert (record["actor"], record["action"], record["target"]) == (
        "ops-carol",
        "ledger.adjust",
        "transfer/ADJ-ticket-42",
    )
    assert record["produced"] == {"ledger_seq": head + 1, "key": "ADJ-ticket-42", "replayed": False}
    metadata = await pool.fetchval("SELECT metadata FROM transfers WHERE key = 'ADJ-ticket-42'")
    assert "ticket 42" in metadata and "ops-carol" in metadata  # in the account's history
    # the same key again moves nothing and says so
    status, again = await one.call("POST", "/adjustments", operator, json=body)
    assert (status, again["replayed"]) == (201, True)
    assert await store.balance("c0") == 10_000 - 1234
    # more than the account holds: refused, nothing written
    events = (await store.head()).seq
    records = len(await audit(pool))
    too_much = {**body, "key": "ADJ-2", "amount": "1000.00"}
    status, refused = await one.call("POST", "/adjustments", operator, json=too_much)
    assert (status, refused["error"]["code"]) == (422, "adjustment_refused")
    assert (await store.head()).seq == events
    assert len(await audit(pool)) == records + 1  # the refusal, recorded
    for bad in ({"amount": "1.234"}, {"amount": "0"}, {"currency": "XXX"}, {"credit": "c0"}):
        status, _ = await one.call("POST", "/adjustments", operator, json={**body, **bad})
        assert status == 400, bad
    report = await verify(db)
    assert report.ok, report.to_dict()
