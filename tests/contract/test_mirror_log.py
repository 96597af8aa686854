"""The MirrorLog contract: one suite, run against the in-memory log and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sidecar.db.mirror_store import PostgresMirrorLog
from sidecar.domain.mirror import MirrorRecord, RecordKind, partition_of
from sidecar.errors import AppendOnlyViolation, InvalidCommand, LedgerIntegrityError
from sidecar.memory import InMemoryMirrorLog
from sidecar.ports import MirrorLog


@pytest.fixture
async def held_log(pool: asyncpg.Pool) -> AsyncIterator[PostgresMirrorLog]:
    """The adapter as capture's writer uses it: appends on one held connection."""
    stream = PostgresMirrorLog(pool, hold_connection=True)
    yield stream
    await stream.close()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-held", marks=pytest.mark.postgres),
    ]
)
def log(request: pytest.FixtureRequest) -> MirrorLog:
    if request.param == "memory":
        return InMemoryMirrorLog()
    if request.param == "postgres-held":
        held: MirrorLog = request.getfixturevalue("held_log")
        return held
    return PostgresMirrorLog(request.getfixturevalue("pool"))


def intent(request_id: str, partition: int = 0, **content: object) -> MirrorRecord:
    return MirrorRecord(partition, RecordKind.INTENT, request_id, {"path": "/p", **content})


def outcome(request_id: str, partition: int = 0, status: int = 200) -> MirrorRecord:
    return MirrorRecord(partition, RecordKind.OUTCOME, request_id, {"status": status})


async def test_a_group_gets_consecutive_seqs_in_order(log: MirrorLog) -> None:
    assert await log.head() == 0
    assert await log.append([intent("a"), intent("b"), outcome("a")]) == [1, 2, 3]
    assert await log.append([outcome("b")]) == [4]
    assert await log.head() == 4
    events = await log.read()
    assert [(e.seq, e.record.request_id, e.record.kind) for e in events] == [
        (1, "a", RecordKind.INTENT),
        (2, "b", RecordKind.INTENT),
        (3, "a", RecordKind.OUTCOME),
        (4, "b", RecordKind.OUTCOME),
    ]
    assert events[0].record.content == {"path": "/p"}


async def test_a_record_appended_again_keeps_its_seq_and_adds_nothing(log: MirrorLog) -> None:
    assert await log.append([intent("a"), intent("b")]) == [1, 2]
    assert await log.append([intent("c"), intent("a"), intent("c")]) == [3, 1, 3]
    assert await log.head() == 3
    assert [e.seq for e in await log.read()] == [1, 2, 3]


async def test_reads_page_and_keep_one_partitions_order(log: MirrorLog) -> None:
    records = [intent(f"r{i}", partition=i % 3, n=i) for i in range(30)]
    await log.append(records)
    page = await log.read(after_seq=10, limit=5)
    assert [e.seq for e in page] == [11, 12, 13, 14, 15]
    one = await log.read(partition=1, limit=100)
    assert [e.record.content["n"] for e in one] == list(range(1, 30, 3))
    assert [e.seq for e in one] == sorted(e.seq for e in one)


async def test_intents_without_an_outcome_are_in_doubt(log: MirrorLog) -> None:
    await log.append([intent("a"), intent("b"), outcome("a"), intent("c")])
    assert [e.record.request_id for e in await log.in_doubt(up_to_seq=4)] == ["b", "c"]
    assert [e.record.request_id for e in await log.in_doubt(up_to_seq=2)] == ["b"]
    assert [e.record.request_id for e in await log.in_doubt(4, after_seq=2)] == ["c"]
    await log.append([outcome("b")])
    assert [e.record.request_id for e in await log.in_doubt(up_to_seq=10)] == ["c"]


async def test_a_requests_intent_and_outcome_are_found_by_its_id(log: MirrorLog) -> None:
    await log.append([intent("a"), intent("b"), outcome("a")])
    intents = await log.intents(["a", "b", "nobody"])
    assert {k: v.seq for k, v in intents.items()} == {"a": 1, "b": 2}
    outcomes = await log.outcomes(["a", "b"])
    assert {k: (v.seq, v.record.kind) for k, v in outcomes.items()} == {
        "a": (3, RecordKind.OUTCOME)
    }
    assert await log.intents([]) == {}


async def test_offsets_start_at_zero_and_only_move_forward(log: MirrorLog) -> None:
    assert await log.offset("applier", 0) == 0
    await log.commit_offset("applier", 0, 5)
    await log.commit_offset("applier", 0, 5)
    assert await log.offset("applier", 0) == 5
    assert await log.offset("applier", 1) == 0
    with pytest.raises(AppendOnlyViolation):
        await log.commit_offset("applier", 0, 4)
    assert await log.offset("applier", 0) == 5


async def test_concurrent_groups_leave_no_gap(log: MirrorLog) -> None:
    async def writer(w: int) -> list[int]:
        seqs: list[int] = []
        for g in range(10):
            seqs += await log.append([intent(f"w{w}-{g}-{i}", partition=w % 4) for i in range(5)])
        return seqs

    results = await asyncio.gather(*(writer(w) for w in range(8)))
    every = sorted(s for seqs in results for s in seqs)
    assert every == list(range(1, 401))
    assert await log.head() == 400
    for seqs in results:
        assert seqs == sorted(seqs)  # each writer's groups in its own order


def test_a_partition_is_stable_and_in_range() -> None:
    assert partition_of("acc-1", 8) == partition_of("acc-1", 8)
    assert {partition_of(f"acc-{i}", 8) for i in range(200)} == set(range(8))
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("acc-1", 0)


@pytest.mark.postgres
async def test_the_stream_is_append_only_in_the_database(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await PostgresMirrorLog(pool).append([intent("a")])
    for statement in ("UPDATE mirror_events SET route = 'x'", "DELETE FROM mirror_events"):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute(statement)


async def test_content_that_is_not_plain_json_is_refused_and_nothing_is_written(
    log: MirrorLog,
) -> None:
    bad = MirrorRecord(0, RecordKind.INTENT, "x", {"when": object()})
    with pytest.raises(InvalidCommand, match="not JSON"):
        await log.append([intent("ok"), bad])
    assert await log.head() == 0


@pytest.mark.parametrize(
    "record",
    [
        MirrorRecord(-1, RecordKind.INTENT, "neg", {}),
        MirrorRecord(0, RecordKind.INTENT, "", {}),
        MirrorRecord(0, RecordKind.INTENT, "x" * 129, {}),
    ],
)
async def test_records_the_stream_cannot_hold_are_refused_whole(
    log: MirrorLog, record: MirrorRecord
) -> None:
    with pytest.raises(LedgerIntegrityError):
        await log.append([intent("ok"), record])
    assert await log.head() == 0
