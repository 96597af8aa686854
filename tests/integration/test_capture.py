"""Capture on the customer path: committed before the answer when durable, bounded always,
never raising, never dropping without counting; many records per commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import asyncpg
import pytest
from sidecar.capture import Capture
from sidecar.config import CaptureSettings, DatabaseSettings, Settings
from sidecar.db.mirror_store import FIND, PostgresMirrorLog
from sidecar.demo.shadow_demo import ShadowStack
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.errors import LedgerUnavailable
from sidecar.memory import InMemoryMirrorLog

from tests.integration.test_shadow import shadow_settings, traffic

SETTINGS = CaptureSettings(wait_ms_max=200.0)


def intent(i: int) -> MirrorRecord:
    return MirrorRecord(i % 4, RecordKind.INTENT, f"req-{i}", {"n": i})


class FailingLog(InMemoryMirrorLog):
    """Our own port's fake: the store is down."""

    async def append(self, records: Sequence[MirrorRecord]) -> list[int]:
        raise LedgerUnavailable("database connection failed: stopped for the test")


class SlowLog(InMemoryMirrorLog):
    """Our own port's fake: each commit takes ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def append(self, records: Sequence[MirrorRecord]) -> list[int]:
        await asyncio.sleep(self.delay_s)
        return await super().append(records)


async def test_a_durable_record_is_in_the_stream_when_record_returns(pool: asyncpg.Pool) -> None:
    log = PostgresMirrorLog(pool)
    capture = Capture(log, SETTINGS)
    await capture.start()
    try:
        assert await capture.record(intent(1)) is True
        events = await log.read()
        assert [e.record.request_id for e in events] == ["req-1"]
    finally:
        await capture.stop()


async def test_concurrent_records_share_commits_and_leave_no_gap(pool: asyncpg.Pool) -> None:
    log = PostgresMirrorLog(pool)
    capture = Capture(log, SETTINGS)
    await capture.start()
    try:
        results = await asyncio.gather(*(capture.record(intent(i)) for i in range(300)))
    finally:
        await capture.stop()
    assert all(results)
    assert capture.stats.committed == 300
    assert capture.stats.appends < 300 / 10  # group commit, not one commit per record
    assert [e.seq for e in await log.read(limit=1000)] == list(range(1, 301))


async def test_a_store_that_is_down_costs_the_customer_a_bounded_wait_and_is_counted() -> None:
    capture = Capture(FailingLog(), SETTINGS)
    await capture.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(capture.record(intent(i)) for i in range(20))), 5.0
        )
    finally:
        await capture.stop()
    assert results == [False] * 20
    assert sum(capture.stats.dropped.values()) == 20
    assert set(capture.stats.dropped) <= {"store_error", "stopped"}


async def test_a_slow_store_releases_the_answer_and_still_writes_what_it_took() -> None:
    log = SlowLog(delay_s=0.5)
    capture = Capture(log, replace(SETTINGS, wait_ms_max=20.0))
    await capture.start()
    try:
        assert await asyncio.wait_for(capture.record(intent(1)), 5.0) is False
    finally:
        await capture.stop()
    # the caller gave up waiting: written late, not lost
    assert capture.stats.late == 1
    assert len(await log.read()) == 1


async def test_a_record_whose_caller_stopped_waiting_is_still_written_in_order() -> None:
    log = SlowLog(delay_s=0.2)
    capture = Capture(log, replace(SETTINGS, wait_ms_max=10.0, batch_records_max=1))
    await capture.start()
    try:
        answered = await asyncio.gather(*(capture.record(intent(i)) for i in range(5)))
    finally:
        await capture.stop(timeout_s=5.0)
    assert answered.count(False) >= 4  # none waited for the slow store
    assert [e.record.request_id for e in await log.read()] == [f"req-{i}" for i in range(5)]
    assert capture.stats.late == capture.stats.committed - answered.count(True)
    assert not capture.stats.dropped


async def test_a_full_queue_drops_and_counts_instead_of_holding_the_customer() -> None:
    log = SlowLog(delay_s=0.2)
    capture = Capture(log, replace(SETTINGS, queue_records_max=5, mode="async"))
    await capture.start()
    try:
        results = [await capture.record(intent(i)) for i in range(50)]
    finally:
        await capture.stop()
    assert results.count(False) == capture.stats.dropped["queue_full"] > 0
    assert capture.stats.committed + sum(capture.stats.dropped.values()) == 50


async def test_async_capture_never_waits_and_the_record_arrives() -> None:
    log = InMemoryMirrorLog()
    capture = Capture(log, replace(SETTINGS, mode="async"))
    await capture.start()
    try:
        assert await capture.record(intent(7)) is True
        for _ in range(200):  # poll with a deadline, no fixed sleep
            if await log.head() == 1:
                break
            await asyncio.sleep(0.01)
        assert await log.head() == 1
    finally:
        await capture.stop()


async def test_records_after_stop_are_counted_not_lost_silently() -> None:
    capture = Capture(InMemoryMirrorLog(), SETTINGS)
    assert await capture.record(intent(1)) is False
    assert capture.stats.dropped["stopped"] == 1


async def test_a_nul_character_does_not_cost_the_group_its_records(pool: asyncpg.Pool) -> None:
    log = PostgresMirrorLog(pool)
    capture = Capture(log, SETTINGS)
    await capture.start()
    try:
        records = [intent(i) for i in range(5)]
        records.append(MirrorRecord(0, RecordKind.INTENT, "nul", {"note": "a\u0000b"}))
        assert await asyncio.gather(*(capture.record(r) for r in records)) == [True] * 6
    finally:
        await capture.stop()
    stored = {e.record.request_id: e.record.content for e in await log.read()}
    assert stored["nul"] == {"note": "a\\u0000b"}  # kept as six characters, not lost


@pytest.mark.parametrize("mode", ["durable", "async"])
async def test_stopping_mid_write_counts_every_record_once(mode: str) -> None:
    capture = Capture(SlowLog(delay_s=5.0), replace(SETTINGS, mode=mode, wait_ms_max=20.0))
    await capture.start()
    results = await asyncio.gather(*(capture.record(intent(i)) for i in range(3)))
    await capture.stop(timeout_s=0.1)
    stats = capture.stats
    assert stats.committed == 0
    assert stats.recorded == 3 == stats.committed + sum(stats.dropped.values())
    assert stats.late == 0
    assert results == ([False] * 3 if mode == "durable" else [True] * 3)


async def test_a_held_connection_that_dies_is_replaced_and_nothing_is_written_twice(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    stream = PostgresMirrorLog(pool, hold_connection=True)
    try:
        assert await stream.append([intent(1)]) == [1]
        # the database ends the writer's session (a restart, a failover, an idle timeout)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND datname = current_database()"
            " AND query LIKE '%append_mirror%'"
        )
        assert killed == 1
        # the next append either finds the session gone and takes another connection, or
        # fails on it (as a dropped group does: capture retries it); never half-written
        try:
            first = await stream.append([intent(2)])
        except LedgerUnavailable:
            first = await stream.append([intent(2)])
        assert first == [2]
        assert await stream.append([intent(2), intent(3)]) == [2, 3]  # a retry: seq kept
    finally:
        await stream.close()
    assert await conn.fetchval("SELECT count(*) FROM mirror_events") == 3


async def test_appends_probe_the_index_whatever_size_the_stream_had_when_planned(
    conn: asyncpg.Connection,
) -> None:
    """A session's plans are made once: planned on an empty stream, the append (migration 0010)
    and the lookup by request id must still probe the index when the stream holds many
    records, not scan it (what 0006's join did)."""

    def group(prefix: str, n: int) -> list[list[object]]:
        ids = [f"{prefix}-{i}" for i in range(n)]
        return [[0] * n, ["intent"] * n, ids, ["r"] * n, ['{"path": "/p"}'] * n, [None] * n]

    append = "SELECT append_mirror($1::int[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6)"
    find = await conn.prepare(FIND)  # the applier's and the resolver's lookup, prepared once
    for i in range(8):  # planned on a near-empty stream, and kept (PL/pgSQL's plan cache)
        await conn.fetchval(append, *group(f"early{i}", 1))
        await find.fetch([f"early{i}-0"], "intent")
    await conn.fetchval(append, *group("bulk", 20_000))
    plans: list[str] = []
    conn.add_log_listener(lambda _conn, message: plans.append(message.message))
    await conn.execute("LOAD 'auto_explain'")
    await conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_level = 'notice'"
    )
    await conn.fetchval(append, *group("late", 2))
    await conn.fetchval(append, *group("late", 2))  # appended again: the general path
    assert len(await find.fetch(["late-0", "late-1", "bulk-7"], "intent")) == 3
    await conn.execute("RESET auto_explain.log_min_duration")
    said = "\n".join(plans)
    assert "mirror_events_once" in said, said
    assert "Seq Scan on mirror_events" not in said, said


async def test_capture_holding_its_connection_leaves_the_sidecars_pool_to_the_rest(
    settings: Settings, db: DatabaseSettings
) -> None:
    """With a pool of one connection (a valid setting), the flag, the counts and the ledger's
    answers still get it: capture's writer holds a connection of a pool of its own."""
    small = replace(db, pool_connections_max=1)
    async with ShadowStack(shadow_settings(settings, small), customers=10) as stack:
        await stack.bootstrap()
        await traffic(stack, 1.0)
        await stack.settle()
        pools = stack.sidecar.metrics.pools
        assert pools["capture_writer"].get_size() == 1
        async with asyncio.timeout(10):  # it would wait for ever behind the writer
            assert await pools["capture"].fetchval("SELECT 1") == 1
