"""The admin side's state on real PostgreSQL (sidecar/db/admin_store.py, migration 0008): every
change and its one audit record commit together; refused changes change nothing; the audit
log is append-only and hash-chained, and `ledger verify` finds tampering."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sidecar.config import DatabaseSettings
from sidecar.db.admin_store import AdminExists, NotFound, PostgresAdminStore, split_token
from sidecar.domain.audit import AuditRecord, Role
from sidecar.domain.flags import Mode, parse_cohort
from sidecar.errors import FlagRulesInvalid
from sidecar.verify import verify


def action(name: str, actor: str = "alice") -> AuditRecord:
    return AuditRecord(actor, "admin", name, True, reason="testing")


async def audit_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM audit_log")
    return count


async def test_a_flag_change_and_its_one_audit_record_commit_together(pool: asyncpg.Pool) -> None:
    store = PostgresAdminStore(pool, Mode.LEGACY)
    assert (await store.flag_rules()).default is Mode.LEGACY  # the configured mode, version 0
    before, after, seq = await store.change_flag(
        lambda r: r.with_default(Mode.SHADOW), action("flag.set_default")
    )
    assert (before.version, after.version, after.default) == (0, 1, Mode.SHADOW)
    assert await store.flag_version() == 1
    (record,) = await store.audit_log()
    assert record["seq"] == seq
    assert record["before"]["default"] == "legacy" and record["after"]["default"] == "shadow"
    assert record["produced"] == {"flag_version": 1}
    canary = parse_cohort({"name": "canary", "mode": "ledger-primary", "percent": "5"})
    await store.change_flag(lambda r: r.with_cohort(canary), action("flag.set_cohort"))
    rules = await PostgresAdminStore(pool, Mode.LEGACY).flag_rules()  # another instance
    assert (rules.version, rules.default, rules.cohorts) == (2, Mode.SHADOW, (canary,))
    assert await audit_count(pool) == 2


async def test_a_refused_change_changes_nothing_and_writes_no_record(pool: asyncpg.Pool) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)

    def bad(rules: object) -> object:
        raise FlagRulesInvalid("cohorts.x.percent: 101 is outside 0..100")

    with pytest.raises(FlagRulesInvalid):
        await store.change_flag(bad, action("flag.set_cohort"))  # type: ignore[arg-type]
    assert await store.flag_version() == 0
    assert await audit_count(pool) == 0
    with pytest.raises(NotFound):
        await store.triage(12345, "resolved", "no such", action("divergence.resolve"))
    assert await audit_count(pool) == 0
    with pytest.raises(NotFound):
        await store.revoke_token("abcdefghijkl", action("token.revoke"))
    assert await audit_count(pool) == 0


async def test_tokens_are_stored_hashed_and_stop_working_when_revoked(pool: asyncpg.Pool) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    assert not await store.has_admin()
    token, text = await store.create_token(
        "release-bot", Role.RELEASE_MANAGER, action("token.create")
    )
    parts = split_token(text)
    assert parts is not None and parts[0] == token.id
    stored = await pool.fetchval("SELECT secret_hash FROM api_tokens WHERE id = $1", token.id)
    assert parts[1].encode() not in bytes(stored) and len(bytes(stored)) == 32
    found = await store.authenticate(text)
    assert found is not None and found.role is Role.RELEASE_MANAGER
    assert await store.authenticate(text[:-1] + ("A" if text[-1] != "A" else "B")) is None
    assert await store.authenticate("Bearer nonsense") is None
    await store.revoke_token(token.id, action("token.revoke"))
    assert await store.authenticate(text) is None
    assert await audit_count(pool) == 2


async def test_the_audit_log_is_append_only(pool: asyncpg.Pool) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    await store.record(action("flag.set_default"))
    for statement in (
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await pool.execute(statement)
    assert await audit_count(pool) == 1


async def test_verify_checks_the_audit_chain_and_finds_tampering(
    pool: asyncpg.Pool, db: DatabaseSettings
) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    for n in range(5):
        await store.record(action(f"action.{n}", actor=f"user{n}"))
    report = await verify(db)
    assert report.check("audit_chain").ok, report.check("audit_chain").detail
    assert "5 admin actions" in report.check("audit_chain").detail
    # the owner can switch the trigger off; the chain still tells
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute(
            "UPDATE audit_log SET content = replace(content, 'user3', 'mallory') WHERE seq = 4"
        )
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    report = await verify(db)
    assert not report.check("audit_chain").ok
    assert "broken at seq 4" in report.check("audit_chain").detail


async def test_two_bootstraps_at_once_make_one_admin(pool: asyncpg.Pool) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    record = AuditRecord("bootstrap", None, "token.create", True, reason="first")
    results = await asyncio.gather(
        *(store.create_first_admin(f"root{n}", record) for n in range(4)), return_exceptions=True
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, AdminExists) for r in results if isinstance(r, BaseException))
    admins = await pool.fetchval("SELECT count(*) FROM api_tokens WHERE role = 'admin'")
    assert admins == 1 and await audit_count(pool) == 1


async def test_verify_finds_a_row_whose_columns_disagree_with_its_content(
    pool: asyncpg.Pool, db: DatabaseSettings
) -> None:
    store = PostgresAdminStore(pool, Mode.SHADOW)
    await store.record(action("flag.set_default"))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    check = (await verify(db)).check("audit_chain")
    assert not check.ok and "seq 1: actor, action or allowed differ" in check.detail
