"""What PostgreSQL itself refuses, whatever the Python code does (we connect as superuser)."""

from __future__ import annotations

import json

import asyncpg
import pytest
from sidecar.domain.chain import canonical
from sidecar.posting import Ledger

from tests.ledger_builders import open_bank, pay

POST = "SELECT post_batch($1::text[], $2::text[], $3::bigint[], $4::bigint[])"


def posted(key: str, postings: list[tuple[str, int, int]]) -> str:
    return canonical(
        {
            "type": "transfer_posted",
            "key": key,
            "fingerprint": "00",
            "reverses": None,
            "metadata": {},
            "postings": [
                {"account": a, "currency": "EUR", "amount_minor": m, "balance_after_minor": b}
                for a, m, b in postings
            ],
        }
    )


async def test_the_database_refuses_an_unbalanced_entry(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    event = posted("evil", [("c0", 100, 9_900), ("c1", -90, 10_090)])
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await conn.fetchval(POST, [event], ["c0", "c1"], [10_000, 10_000], [9_900, 10_090])


async def forge_sealed_event(conn: asyncpg.Connection, type_: str = "transfer_posted") -> int:
    """Append an event and advance the head past it, as post_batch would (triggers off)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        seq: int = await conn.fetchval("SELECT seq FROM log_head") + 1
        await conn.execute(
            "INSERT INTO events (seq, batch, type, content, hash) VALUES ($1, 0, $2, '{}', $3)",
            seq,
            type_,
            bytes(32),
        )
        await conn.execute("UPDATE log_head SET seq = $1", seq)
    return seq


async def test_the_database_refuses_a_one_legged_entry(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = await forge_sealed_event(conn)
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO transfers (key, fingerprint, status, legs, seq) "
                "VALUES ('solo', '\\x00', 'posted', 2, $1)",
                seq,
            )
            await conn.execute(
                "INSERT INTO postings VALUES ('solo', 0, 'c0', 'EUR', 0 + 5, 5, $1)", seq
            )


async def test_a_transfer_beyond_the_log_head_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = await forge_sealed_event(conn) + 1
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "INSERT INTO events (seq, batch, type, content, hash) "
            "VALUES ($1, 0, 'transfer_rejected', '{}', $2)",
            seq,
            bytes(32),
        )
    with pytest.raises(asyncpg.CheckViolationError, match="beyond the sealed log head"):
        await conn.execute(
            "INSERT INTO transfers (key, fingerprint, status, rejection, legs, seq) "
            "VALUES ('early', '\\x00', 'rejected', 'insufficient_funds', 0, $1)",
            seq,
        )


async def test_sealing_events_without_their_rows_is_refused_at_commit(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    """A posted transfer whose postings never come, sealed with its event: refused at commit."""
    await open_bank(ledger)
    head = await conn.fetchval("SELECT seq FROM log_head")
    with pytest.raises(asyncpg.CheckViolationError, match="sealed without exactly the rows"):
        async with conn.transaction():
            await conn.execute("UPDATE log_head SET seq = $1, hash = $2", head + 1, bytes(32))
            await conn.execute(
                "INSERT INTO events (seq, batch, type, content, hash) "
                "VALUES ($1, 0, 'transfer_posted', '{}', $2)",
                head + 1,
                bytes(32),
            )
            await conn.execute(
                "INSERT INTO transfers (key, fingerprint, status, legs, seq) "
                "VALUES ('hollow', '\\x00', 'posted', 2, $1)",
                head + 1,
            )
    assert await conn.fetchval("SELECT seq FROM log_head") == head


async def test_direct_unbalanced_postings_are_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = (await ledger.transfer(pay("t1", "c0", "c1", 100))).seq
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("INSERT INTO postings VALUES ('t1', 2, 'c0', 'EUR', 50, 9850, $1)", seq)


@pytest.mark.parametrize("table", ["events", "transfers", "postings"])
@pytest.mark.parametrize(
    "statement", ["UPDATE {t} SET seq = seq", "DELETE FROM {t}", "TRUNCATE {t} CASCADE"]
)
async def test_append_only_tables_refuse_changes_even_for_their_owner(
    ledger: Ledger, conn: asyncpg.Connection, table: str, statement: str
) -> None:
    await open_bank(ledger)
    await ledger.transfer(pay("t1", "c0", "c1", 100))
    with pytest.raises(asyncpg.PostgresError, match="append-only") as caught:
        await conn.execute(statement.format(t=table))
    assert caught.value.sqlstate == "LS001"


async def test_accounts_cannot_be_deleted_or_change_identity(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await conn.execute("DELETE FROM accounts WHERE id = 'c0'")
    with pytest.raises(asyncpg.PostgresError, match="fixed"):
        await conn.execute("UPDATE accounts SET currency = 'USD' WHERE id = 'c0'")


async def test_a_balance_below_its_floor_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    with pytest.raises(asyncpg.CheckViolationError, match="balance_within_limit"):
        await conn.execute("UPDATE accounts SET balance_minor = -1 WHERE id = 'c0'")


async def test_a_posting_in_another_currency_than_its_account_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    doc = json.loads(posted("fx", [("c0", 100, 9_900), ("c1", -100, 10_100)]))
    for p in doc["postings"]:
        p["currency"] = "USD"
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.fetchval(POST, [canonical(doc)], ["c0", "c1"], [10_000, 10_000], [9_900, 10_100])


async def test_a_plan_from_stale_balances_is_refused_and_changes_nothing(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    head = await conn.fetchval("SELECT seq FROM log_head")
    event = posted("late", [("c0", 100, 9_800), ("c1", -100, 10_200)])
    with pytest.raises(asyncpg.PostgresError) as caught:
        await conn.fetchval(POST, [event], ["c0", "c1"], [9_900, 10_100], [9_800, 10_200])
    assert caught.value.sqlstate == "LS409"
    assert await conn.fetchval("SELECT seq FROM log_head") == head


async def test_balances_that_disagree_with_the_postings_are_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    event = posted("skim", [("c0", 100, 9_900), ("c1", -100, 10_100)])
    with pytest.raises(asyncpg.PostgresError) as caught:
        await conn.fetchval(POST, [event], ["c0", "c1"], [10_000, 10_000], [9_900, 10_150])
    assert caught.value.sqlstate == "LS500"


async def test_a_posting_to_an_unknown_account_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = (await ledger.transfer(pay("t1", "c0", "c1", 100))).seq
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="no such account"):
        await conn.execute("INSERT INTO postings VALUES ('t1', 7, 'nobody', 'EUR', 5, 5, $1)", seq)


async def test_a_plan_posting_to_an_account_that_does_not_exist_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    head = await conn.fetchval("SELECT seq FROM log_head")
    event = posted("ghost", [("c0", 100, 9_900), ("nobody", -100, 100)])
    with pytest.raises(asyncpg.PostgresError) as caught:
        await conn.fetchval(POST, [event], ["c0", "nobody"], [10_000, 0], [9_900, 100])
    assert caught.value.sqlstate in {"LS409", "23503"}
    assert await conn.fetchval("SELECT seq FROM log_head") == head


async def test_a_transfer_without_its_event_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="no transfer_rejected event"):
        await conn.execute(
            "INSERT INTO transfers (key, fingerprint, status, rejection, legs, seq) "
            "VALUES ('orphan', '\\x00', 'rejected', 'insufficient_funds', 0, 999)"
        )


async def test_balanced_postings_cannot_be_added_to_an_existing_entry(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    """Two extra legs that cancel out would keep the entry balanced: still refused."""
    await open_bank(ledger)
    seq = (await ledger.transfer(pay("t1", "c0", "c1", 100))).seq
    with pytest.raises(asyncpg.CheckViolationError, match="do not form the posted entry"):
        await conn.execute(
            "INSERT INTO postings VALUES ('t1', 2, 'c0', 'EUR', 5, 0, $1), "
            "('t1', 3, 'c1', 'EUR', -5, 0, $1)",
            seq,
        )


async def test_a_reversal_of_a_transfer_that_does_not_exist_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = await forge_sealed_event(conn, "transfer_rejected")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="was not decided before it"):
        await conn.execute(
            "INSERT INTO transfers (key, fingerprint, status, rejection, reverses, legs, seq) "
            "VALUES ('undo', '\\x00', 'rejected', 'insufficient_funds', 'nothing', 0, $1)",
            seq,
        )


def opened(account: str, balance_floor: int | None = 0) -> str:
    return canonical(
        {
            "type": "account_opened",
            "account": account,
            "currency": "EUR",
            "exponent": 2,
            "normal_side": "credit",
            "overdraft_limit_minor": balance_floor,
            "status": "open",
        }
    )


async def head_of(conn: asyncpg.Connection) -> tuple[int, bytes]:
    row = await conn.fetchrow("SELECT seq, hash FROM log_head")
    return row["seq"], bytes(row["hash"])


async def test_an_account_cannot_be_opened_holding_money_nothing_moved(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    head = await head_of(conn)
    with pytest.raises(asyncpg.PostgresError) as caught:
        await conn.fetchval(POST, [opened("ghost")], ["ghost"], [5_000], [5_000])
    assert caught.value.sqlstate == "LS409"
    assert await head_of(conn) == head
    assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = 'ghost'") == 0


async def test_a_posting_before_its_account_is_opened_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    head = await head_of(conn)
    events = [posted("early", [("c0", 50, 9_950), ("late", -50, 50)]), opened("late")]
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="opened before it"):
        await conn.fetchval(POST, events, ["c0", "late"], [10_000, 0], [9_950, 50])
    assert await head_of(conn) == head


async def test_a_reversal_before_the_transfer_it_reverses_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    first = json.loads(posted("rev-first", [("cash", -10, 29_990), ("c1", 10, 9_990)]))
    first["reverses"] = "later"
    events = [canonical(first), posted("later", [("cash", 10, 30_000), ("c1", -10, 10_000)])]
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not decided before it"):
        await conn.fetchval(POST, events, ["c1", "cash"], [10_000, 30_000], [10_000, 30_000])


async def test_a_plan_that_dips_below_a_floor_between_entries_is_refused(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    """c0 (floor 0) goes to -1,000 after one entry and back after the next: still refused."""
    await open_bank(ledger)
    head = await head_of(conn)
    events = [
        posted("dip", [("c0", 11_000, -1_000), ("cash", -11_000, 19_000)]),
        posted("undip", [("cash", 11_000, 30_000), ("c0", -11_000, 10_000)]),
    ]
    with pytest.raises(asyncpg.PostgresError, match="past its floor") as caught:
        await conn.fetchval(POST, events, ["c0", "cash"], [10_000, 30_000], [10_000, 30_000])
    assert caught.value.sqlstate == "LS500"
    assert await head_of(conn) == head


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE accounts SET status = 'frozen' WHERE id = 'c0'",
        "UPDATE accounts SET overdraft_limit_minor = NULL WHERE id = 'c0'",
    ],
)
async def test_only_the_balance_of_an_account_changes(
    ledger: Ledger, conn: asyncpg.Connection, statement: str
) -> None:
    await open_bank(ledger)
    with pytest.raises(asyncpg.PostgresError, match="only the balance changes"):
        await conn.execute(statement)


async def test_an_account_without_its_event_cannot_be_inserted(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    with pytest.raises(asyncpg.CheckViolationError, match="not what an account_opened event"):
        await conn.execute(
            "INSERT INTO accounts (id, currency, currency_exponent, normal_side, status, "
            "overdraft_limit_minor, balance_minor, opened_seq) "
            "VALUES ('sneak', 'EUR', 2, 'credit', 'open', NULL, 1000000000, 3)"
        )


async def test_the_log_head_cannot_skip_sequence_numbers(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    head = await head_of(conn)
    with pytest.raises(asyncpg.CheckViolationError, match="log head moved"):
        await conn.execute("UPDATE log_head SET seq = seq + 3")
    assert await head_of(conn) == head
    seq = (await ledger.transfer(pay("after", "c0", "c1", 1))).seq
    assert seq == head[0] + 1


async def test_an_event_beyond_the_head_is_refused_and_posting_goes_on(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    seq = (await head_of(conn))[0] + 1
    with pytest.raises(asyncpg.CheckViolationError, match="beyond the log head"):
        await conn.execute(
            "INSERT INTO events (seq, batch, type, content, hash) "
            "VALUES ($1, 0, 'transfer_rejected', '{}', $2)",
            seq,
            bytes(32),
        )
    assert (await ledger.transfer(pay("next", "c0", "c1", 1))).seq == seq


async def test_no_setting_switches_the_append_only_triggers_off(
    ledger: Ledger, conn: asyncpg.Connection
) -> None:
    await open_bank(ledger)
    async with conn.transaction():
        await conn.execute("SET LOCAL ledger_sidecar.migrating = 'on'")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE postings SET amount_minor = amount_minor")
