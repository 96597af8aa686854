"""``ledger-sidecar bootstrap``: open the legacy service's accounts in the ledger, with their
balances, while traffic keeps flowing.

1. The account list (the legacy listing URL, or a JSON file of the same shape; see
   ``sidecar.domain.bootstrap``) is recorded in the mirror stream as a *plan*.
2. Each account's balance is read through the mapping's balance route, recorded like a
   mirrored request: an intent before the read, the answer after. The applier opens the account
   at that place in the stream, when no money movement on it overlapped the read.
3. Reads that overlapped a movement (the applier says so in their comparison) are read again,
   until every account is open or ``rounds_max`` is reached.

A file export that carries balances can instead be recorded as one *snapshot*
(``--snapshot``): exact only if nothing moved while it was exported.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.domain.bootstrap import BOOTSTRAP_ROUTE, snapshot_accounts
from sidecar.domain.mapping import Operation, Origin, RouteTable
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.errors import InvalidCommand, SidecarError
from sidecar.ports import MirrorLog

READS_PER_BATCH = 100


class BootstrapFailed(SidecarError):
    code = "bootstrap_failed"


@dataclass
class BootstrapReport:
    source: str
    accounts: int
    rounds: int = 0
    reads: int = 0
    reread: int = 0
    opened: int = 0
    not_opened: list[str] = field(default_factory=list)


async def bootstrap(
    stream: MirrorLog,
    comparisons: PostgresComparisonStore,
    routes: RouteTable,
    legacy_url: str,
    source: str,
    *,
    rounds_max: int = 10,
    verdict_timeout_s: float = 120.0,
    progress: Callable[[int, int], None] | None = None,
) -> BootstrapReport:
    """Plan, read every account, and read again what overlapped a movement."""
    # the plan's intent goes in before the listing is taken: whatever was answered before it
    # is in the listing, and what overlaps it is sorted out against the listing
    plan_id = "bootstrap-" + uuid.uuid4().hex
    await stream.append(
        [
            MirrorRecord(
                0,
                RecordKind.INTENT,
                plan_id,
                {"method": "BOOTSTRAP", "path": "plan", "bootstrap": "plan"},
                BOOTSTRAP_ROUTE,
            )
        ]
    )
    rows = snapshot_accounts(_parse(source, await _fetch(source)))
    numbers = [str(r.get("account_number")) for r in rows]
    plan = {"accounts": [{k: v for k, v in r.items() if k != "balance"} for r in rows]}
    await stream.append(
        [
            MirrorRecord(
                0,
                RecordKind.OUTCOME,
                plan_id,
                {"status": 200, "headers": [], "body": _text(plan)},
                BOOTSTRAP_ROUTE,
            )
        ]
    )
    route = next((r for r in routes.routes if r.operation is Operation.BALANCE), None)
    source_field = route.fields.get("account") if route else None
    if route is None or source_field is None or source_field.origin is not Origin.PATH:
        raise BootstrapFailed("the mapping has no balance route with the account in its path")
    report = BootstrapReport(source, len(numbers))
    todo = numbers
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while todo and report.rounds < rounds_max:
            report.rounds += 1
            if report.rounds > 1:
                report.reread += len(todo)
            ids: dict[str, str] = {}
            for start in range(0, len(todo), READS_PER_BATCH):
                batch = todo[start : start + READS_PER_BATCH]
                ids.update(
                    await _read_batch(
                        stream, session, legacy_url, route.path, source_field.locator, batch
                    )
                )
                report.reads += len(batch)
                if progress is not None:
                    progress(min(start + len(batch), len(todo)), len(todo))
            verdicts = await _verdicts(comparisons, list(ids.values()), verdict_timeout_s)
            todo = [n for n, rid in ids.items() if verdicts.get(rid, ("", None))[0] != "match"]
    report.not_opened = todo
    report.opened = len(numbers) - len(todo)
    return report


async def _read_batch(
    stream: MirrorLog,
    session: aiohttp.ClientSession,
    legacy_url: str,
    template: str,
    param: str,
    numbers: list[str],
) -> dict[str, str]:
    paths = {n: template.replace("{" + param + "}", n) for n in numbers}
    ids = {n: "bootstrap-" + uuid.uuid4().hex for n in numbers}
    await stream.append(
        [
            MirrorRecord(
                0,
                RecordKind.INTENT,
                ids[n],
                {
                    "method": "GET",
                    "path": paths[n],
                    "query": [],
                    "headers": [],
                    "bootstrap": "read",
                },
                route=BOOTSTRAP_ROUTE,
            )
            for n in numbers
        ]
    )

    async def read(number: str) -> dict[str, object]:
        try:
            async with session.get(legacy_url + paths[number]) as answer:
                return {"status": answer.status, "headers": [], "body": await answer.text()}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"error": f"{exc!r}"}

    answers = await asyncio.gather(*(read(n) for n in numbers))
    await stream.append(
        [
            MirrorRecord(0, RecordKind.OUTCOME, ids[n], answer, route=BOOTSTRAP_ROUTE)
            for n, answer in zip(numbers, answers, strict=True)
        ]
    )
    return ids


async def _verdicts(
    comparisons: PostgresComparisonStore, request_ids: list[str], timeout_s: float
) -> dict[str, tuple[str, str | None]]:
    """Wait until the applier has compared every one of these reads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = await comparisons.verdicts(request_ids)
        if len(found) == len(request_ids):
            return found
        if loop.time() > deadline:
            raise BootstrapFailed(
                f"the applier compared {len(found)} of {len(request_ids)} bootstrap reads in "
                f"{timeout_s:.0f} s: is the sidecar running in shadow mode?"
            )
        await asyncio.sleep(0.1)


async def record_snapshot(stream: MirrorLog, source: str) -> int:
    """Record a file export with balances as one snapshot; returns how many accounts."""
    text = await _fetch(source)
    accounts = len(snapshot_accounts(_parse(source, text)))
    await _exchange(
        stream,
        {"method": "BOOTSTRAP", "path": source, "bootstrap": "snapshot"},
        {"status": 200, "headers": [], "body": text},
    )
    return accounts


async def _exchange(
    stream: MirrorLog, intent: dict[str, object], outcome: dict[str, object]
) -> str:
    request_id = "bootstrap-" + uuid.uuid4().hex
    await stream.append([MirrorRecord(0, RecordKind.INTENT, request_id, intent, BOOTSTRAP_ROUTE)])
    await stream.append([MirrorRecord(0, RecordKind.OUTCOME, request_id, outcome, BOOTSTRAP_ROUTE)])
    return request_id


def _text(document: object) -> str:
    return orjson.dumps(document).decode()


def _parse(source: str, text: str) -> object:
    try:
        document = orjson.loads(text)
        snapshot_accounts(document)
    except (orjson.JSONDecodeError, InvalidCommand) as exc:
        raise BootstrapFailed(f"{source}: not an account listing: {exc}") from None
    return document


async def _fetch(source: str, timeout_s: float = 60.0) -> str:
    if source.startswith(("http://", "https://")):
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
                session.get(source) as answer,
            ):
                body = await answer.text()
                if answer.status != 200:
                    raise BootstrapFailed(f"{source} answered {answer.status}: {body[:200]}")
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BootstrapFailed(f"{source} cannot be read: {exc!r}") from None
    try:
        return await asyncio.to_thread(Path(source).read_text, encoding="utf-8")
    except OSError as exc:
        raise BootstrapFailed(f"{source} cannot be read: {exc.strerror}") from None
