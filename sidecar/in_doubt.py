"""Requests in doubt: an intent in the mirror stream with no outcome, because the sidecar died
(or capture dropped the outcome) between forwarding the request and recording the answer.

They are never guessed. ``resolve_in_doubt`` asks the legacy service what each one was
answered, through the route's ``lookup`` (a read-only GET by idempotency key that returns the
original answer, or 404 if the request was never processed), and records that as the outcome,
marked ``in_doubt``; the applier then applies and compares it like any other. A balance read in
doubt moved no money: it is closed as such. A request whose route has no lookup is closed as
``unresolvable``, counted by ``ledger-sidecar stream status``, for an operator. The applier
holds exchanges that overlap a request in doubt until it is resolved, and applies a resolved
one at its intent's place in the stream.

Guarantees (tests/integration/test_in_doubt.py):
- Nothing is sent to the legacy service but the lookup GET: a request in doubt is never
  replayed, so resolving can never make a payment happen.
- Each intent is resolved at most once (the stream keeps one outcome per request); a lookup
  that fails (5xx, unreachable) leaves the intent in doubt for the next attempt.
- A request the ledger answered is not in doubt: in ledger-primary its delivery to the legacy
  service records the outcome (``sidecar.legacy_delivery``); in ledger-only it is closed as
  such.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

import aiohttp

from sidecar.domain.mapping import MISSING, Operation, RouteTable, lookup_path
from sidecar.domain.mirror import MirrorEvent, MirrorRecord, RecordKind
from sidecar.domain.shadow import exchange_of
from sidecar.domain.translate import exchange_value
from sidecar.errors import SidecarError
from sidecar.owned import OwnedTask
from sidecar.ports import MirrorLog

log = logging.getLogger(__name__)

#: the legacy service could not say now: ask again next time
RETRY: dict[str, object] = {"retry": True}
#: nothing can tell what happened (no lookup route, or no key): closed as such, for an
#: operator; the applier skips it and stream status counts it
UNRESOLVABLE: dict[str, object] = {"in_doubt": "unresolvable"}


@dataclass
class InDoubtReport:
    found: int = 0
    resolved: dict[str, int] = field(default_factory=dict)  # how -> count
    unresolved: list[int] = field(default_factory=list)  # seqs still in doubt

    def count(self, how: str) -> None:
        self.resolved[how] = self.resolved.get(how, 0) + 1


async def resolve_in_doubt(
    stream: MirrorLog,
    routes: RouteTable,
    session: aiohttp.ClientSession,
    legacy_url: str,
    up_to_seq: int,
    timeout_s: float = 10.0,
    after_seq: int = 0,
) -> InDoubtReport:
    """Resolve every intent in doubt after ``after_seq``, at or before ``up_to_seq``, that can
    be resolved."""
    report = InDoubtReport()
    for intent in await stream.in_doubt(up_to_seq, after_seq):
        answered_by = intent.record.content.get("answered_by")
        if answered_by == "ledger-primary":
            continue  # not in doubt: the ledger answered; legacy delivery records its outcome
        report.found += 1
        if answered_by == "ledger-only":  # the ledger answered; legacy was never to be asked
            outcome: dict[str, object] = {"ledger_only": True, "in_doubt": "ledger_only"}
        else:
            outcome = await _resolution(intent, routes, session, legacy_url, timeout_s)
        if outcome is RETRY:
            report.unresolved.append(intent.seq)
            continue
        record = MirrorRecord(
            intent.record.partition,
            RecordKind.OUTCOME,
            intent.record.request_id,
            outcome,
            route=intent.record.route,
            trace_id=intent.record.trace_id,
        )
        await stream.append([record])
        how = str(outcome["in_doubt"])
        report.count(how)
        log.info(
            "request in doubt resolved",
            extra={"event": "in_doubt", "stream_offset": intent.seq, "resolution": how},
        )
    return report


async def _resolution(
    intent: MirrorEvent,
    routes: RouteTable,
    session: aiohttp.ClientSession,
    legacy_url: str,
    timeout_s: float,
) -> dict[str, object]:
    exchange = exchange_of(intent.record, None)
    matched = routes.match(exchange.method, exchange.path)
    if matched is None:
        return UNRESOLVABLE
    route = matched.route
    if route.operation is Operation.BALANCE:
        return {"in_doubt": "read"}  # a read moved nothing; its answer is gone with it
    if route.lookup is None:
        return UNRESOLVABLE
    values: dict[str, str] = {}
    for name, source in route.fields.items():
        value = exchange_value(source, exchange, matched.path_params)
        if value is not MISSING and value is not None:
            values[name] = str(value)
    try:
        path = lookup_path(route, values)
    except KeyError:
        return UNRESOLVABLE  # the request lacks what the lookup needs (no idempotency key)
    try:
        async with session.get(
            legacy_url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as answer:
            body = await answer.text()
            status = answer.status
    except (aiohttp.ClientError, TimeoutError):
        return RETRY
    if status == 404:
        return {"in_doubt": "not_processed"}
    if status >= 500:
        return RETRY
    return {"status": status, "headers": [], "body": body, "in_doubt": "looked_up"}


class InDoubtResolver:
    """Owner of the periodic resolution: every so often, resolve what has been in doubt for
    longer than ``after_s`` (longer than any request may take, so never one still in flight)."""

    def __init__(
        self,
        stream: MirrorLog,
        routes: RouteTable,
        session: aiohttp.ClientSession,
        legacy_url: str,
        after_s: float,
    ) -> None:
        self.stream = stream
        self.routes = routes
        self.session = session
        self.legacy_url = legacy_url
        self.after_s = after_s
        self.totals = InDoubtReport()
        self._heads: deque[tuple[float, int]] = deque()
        self._resolved_to = 0  # every intent at or before this seq has an outcome
        self._owned = OwnedTask("in-doubt-resolver")

    def start(self) -> None:
        self._owned.start(self._run)

    async def stop(self) -> None:
        await self._owned.stop()

    async def run_once(self) -> InDoubtReport | None:
        now = asyncio.get_running_loop().time()
        self._heads.append((now, await self.stream.head()))
        settled = None
        while self._heads and now - self._heads[0][0] >= self.after_s:
            settled = self._heads.popleft()[1]
        if settled is None:
            return None
        self._heads.appendleft((now - self.after_s, settled))  # still the bound next time
        report = await resolve_in_doubt(
            self.stream,
            self.routes,
            self.session,
            self.legacy_url,
            settled,
            after_seq=self._resolved_to,
        )
        # everything up to the oldest intent still in doubt is settled: not scanned again
        self._resolved_to = min(report.unresolved, default=settled + 1) - 1
        self.totals.found = report.found
        self.totals.unresolved = report.unresolved
        for how, n in report.resolved.items():
            self.totals.resolved[how] = self.totals.resolved.get(how, 0) + n
        return report

    async def _run(self) -> None:
        pause = max(0.2, min(5.0, self.after_s / 4))
        while True:
            try:
                await self.run_once()
            except SidecarError as exc:
                log.warning(
                    "resolving requests in doubt failed; will try again",
                    extra={"event": "in_doubt", "code": exc.code, "error": exc.message},
                )
            await asyncio.sleep(pause)
