"""``ledger-sidecar bootstrap``: put a snapshot of the legacy accounts into the mirror stream.

The snapshot (the legacy service's account listing, or a file export of the same shape; see
``sidecar.domain.bootstrap``) is recorded like a mirrored request: an intent before it is
fetched and an outcome holding it after. The applier opens the accounts with their balances
when it reaches that outcome, and skips what came before it, which the snapshot holds. So
traffic keeps flowing while the bootstrap runs, and the ledger agrees with the legacy service
from the first exchange after it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from sidecar.domain.bootstrap import BOOTSTRAP_ROUTE, snapshot_accounts
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.errors import InvalidCommand, SidecarError
from sidecar.ports import MirrorLog


class BootstrapFailed(SidecarError):
    code = "bootstrap_failed"


@dataclass(frozen=True)
class BootstrapReport:
    request_id: str
    source: str
    accounts: int
    intent_seq: int
    outcome_seq: int


async def bootstrap(stream: MirrorLog, source: str, timeout_s: float = 60.0) -> BootstrapReport:
    """Record a snapshot from ``source`` (an http(s) URL of the listing, or a file path)."""
    request_id = "bootstrap-" + uuid.uuid4().hex
    (intent_seq,) = await stream.append(
        [
            MirrorRecord(
                0,
                RecordKind.INTENT,
                request_id,
                {"method": "GET", "path": source, "query": [], "headers": []},
                route=BOOTSTRAP_ROUTE,
            )
        ]
    )
    text = await _fetch(source, timeout_s)
    try:
        accounts = len(snapshot_accounts(orjson.loads(text)))
    except (orjson.JSONDecodeError, InvalidCommand) as exc:
        raise BootstrapFailed(f"{source}: not a bootstrap snapshot: {exc}") from None
    (outcome_seq,) = await stream.append(
        [
            MirrorRecord(
                0,
                RecordKind.OUTCOME,
                request_id,
                {"status": 200, "headers": [], "body": text},
                route=BOOTSTRAP_ROUTE,
            )
        ]
    )
    return BootstrapReport(request_id, source, accounts, intent_seq, outcome_seq)


async def _fetch(source: str, timeout_s: float) -> str:
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
