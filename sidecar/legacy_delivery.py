"""Delivering to the legacy service the requests the ledger answered (``ledger-primary``), so
legacy, now the shadow, sees every movement the customer was told about, in order.

The requests are read from the mirror stream, where the sidecar recorded each one once the
ledger had decided it and before answering (``answered_by: ledger-primary``): the stream is the
durable outbox. Each is sent at once, in stream order for requests that share an account (an
account opened, then paid into, is opened first), requests with no account in common side by
side. The legacy answer becomes the request's outcome; the applier compares it with the
ledger's in reverse.

Guarantees (tests/integration/test_ledger_primary.py):
- Nothing is lost: a request not yet delivered stays in the stream and is delivered after a
  restart; a 5xx, a timeout or an unreachable legacy service is retried (the legacy idempotency
  key makes a retry safe) up to ``attempts_max`` times, then recorded as undelivered, which the
  applier reports as a monetary divergence (``missing_in_legacy``), never silently.
- Order is kept per account: a request is sent only after every earlier one naming any of its
  accounts has an outcome (a request whose accounts cannot be read waits for, and holds, all).
- Requests answered by ``ledger-only`` are never sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDict

from sidecar.domain.mapping import MISSING, RouteTable
from sidecar.domain.mirror import MirrorEvent, MirrorRecord, RecordKind
from sidecar.domain.shadow import exchange_of
from sidecar.domain.translate import exchange_value
from sidecar.errors import SidecarError
from sidecar.owned import OwnedTask
from sidecar.ports import MirrorLog
from sidecar.proxy.app import body_for_stream, end_to_end, header_pairs

log = logging.getLogger(__name__)

#: what the intent of a request the ledger answered first says, and whether legacy is asked
PRIMARY = "ledger-primary"
#: the fields naming accounts: requests sharing one are delivered in stream order
ACCOUNT_FIELDS = ("account", "debit", "credit")
#: requests sent side by side at most (the legacy session's pool bounds it further)
WAVE_MAX = 100


class LegacyDelivery:
    """Owner of the delivery loop: ``start`` it with the shadow worker, ``stop`` drains it."""

    def __init__(
        self,
        stream: MirrorLog,
        routes: RouteTable,
        session: aiohttp.ClientSession,
        legacy_url: str,
        timeout_s: float,
        attempts_max: int = 30,
        poll_s: float = 0.05,
    ) -> None:
        self.stream = stream
        self.routes = routes
        self.session = session
        self.legacy_url = legacy_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        #: how old a request must be before it is sent (0: at once; tests set it)
        self.grace_s = 0.0
        self.attempts_max = attempts_max
        self.poll_s = poll_s
        self.delivered = 0
        self.undelivered = 0
        self._cursor = 0  # every intent before it has its outcome
        self._owned = OwnedTask("legacy-delivery")

    def start(self) -> None:
        self._owned.start(self._run)

    async def stop(self) -> None:
        await self._owned.stop()

    async def _run(self) -> None:
        while True:
            try:
                if await self.deliver_once() == 0:
                    await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or legacy away: the stream keeps them
                code = exc.code if isinstance(exc, SidecarError) else type(exc).__name__
                log.warning("legacy delivery failed", extra={"event": "delivery", "code": code})
                await asyncio.sleep(1.0)

    async def deliver_once(self, now: float | None = None) -> int:
        """Deliver what is due, in order per account; how many were recorded."""
        head = await self.stream.head()
        waiting = [
            e
            for e in await self.stream.in_doubt(head, self._cursor)
            if e.record.content.get("answered_by") == PRIMARY
        ]
        if not waiting:
            self._cursor = head
            return 0
        self._cursor = waiting[0].seq - 1
        clock = time.time() if now is None else now
        done = 0
        while waiting:
            # a wave: every request no earlier waiting one shares an account with, side by side
            wave: list[MirrorEvent] = []
            blocked: set[str] = set()
            for event in waiting:
                if event.recorded_at is not None and clock - event.recorded_at < self.grace_s:
                    break  # its own answer may still be on its way; later ones are younger
                accounts = self._accounts(event)
                if accounts is None:  # unknown accounts: it goes alone, in order
                    if not wave and not blocked:
                        wave.append(event)
                    break
                if not accounts & blocked:
                    wave.append(event)
                    if len(wave) >= WAVE_MAX:
                        break
                blocked |= accounts  # later requests naming these wait for it
            if not wave:
                break
            await asyncio.gather(*(self._deliver(e) for e in wave))
            done += len(wave)
            delivered = {e.seq for e in wave}
            waiting = [e for e in waiting if e.seq not in delivered]
        return done

    def _accounts(self, intent: MirrorEvent) -> set[str] | None:
        """The accounts a request names (None: unknown, so it goes alone, in order)."""
        exchange = exchange_of(intent.record, None)
        matched = self.routes.match(exchange.method, exchange.path)
        if matched is None:
            return None
        found: set[str] = set()
        for name in ACCOUNT_FIELDS:
            source = matched.route.fields.get(name)
            if source is None:
                continue
            value = exchange_value(source, exchange, matched.path_params)
            if value is not MISSING and value is not None:
                found.add(str(value))
        return found or None

    async def _deliver(self, intent: MirrorEvent) -> None:
        content = intent.record.content
        for attempt in range(1, self.attempts_max + 1):
            outcome = await self._send(content)
            if outcome is not None:
                break
            await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
        else:
            outcome = {"error": "legacy_undelivered", "attempts": self.attempts_max}
            self.undelivered += 1
            log.error(
                "ledger-answered request not delivered to legacy",
                extra={"event": "delivery", "request_id": intent.record.request_id},
            )
        self.delivered += 1
        await self.stream.append(
            [
                MirrorRecord(
                    intent.record.partition,
                    RecordKind.OUTCOME,
                    intent.record.request_id,
                    {**outcome, "delivered": True},
                    route=intent.record.route,
                    trace_id=intent.record.trace_id,
                )
            ]
        )

    async def _send(self, content: Mapping[str, Any]) -> dict[str, object] | None:
        """The legacy answer as an outcome, or None when it should be tried again."""
        headers: CIMultiDict[str] = CIMultiDict()
        pairs = content.get("headers")
        for pair in pairs if isinstance(pairs, list) else []:
            if isinstance(pair, list) and len(pair) == 2:
                headers.add(str(pair[0]), str(pair[1]))
        body: bytes | None = None
        if isinstance(content.get("body"), str):
            body = str(content["body"]).encode()
        elif isinstance(content.get("body_base64"), str):
            body = base64.b64decode(str(content["body_base64"]))
        if "encoding" in content:  # kept decoded: send it so
            headers.popall("Content-Encoding", None)
        headers.popall("Content-Length", None)
        query = content.get("query")
        url = self.legacy_url + str(content.get("path", "/"))
        if isinstance(query, list) and query:
            url += "?" + urlencode([(str(k), str(v)) for k, v in query])
        try:
            async with self.session.request(
                str(content.get("method", "GET")),
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self.timeout,
            ) as answer:
                raw = await answer.read()
                status, answered = answer.status, end_to_end(answer.headers)
        except (TimeoutError, aiohttp.ClientError):
            return None
        if status >= 500:
            return None  # legacy failed before deciding: safe to ask again under the same key
        return {
            "status": status,
            "headers": header_pairs(answered),
            **body_for_stream(raw, answered.get("Content-Encoding")),
        }


__all__ = ["PRIMARY", "LegacyDelivery"]
