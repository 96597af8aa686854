"""The ledger answering customers (``ledger-primary``, ``ledger-only``): a mapped request is
turned into a ledger command, posted (durable before the answer goes out), and answered in the
legacy API's shape through the route's ``[route.answer]``. In ``ledger-primary`` the legacy
service then gets the same request in the background, and its answer is recorded as the
request's outcome in the mirror stream, where the applier compares the two in reverse (the
ledger's key makes its replay a no-op, so nothing is applied twice).

Guarantees (tests/integration/test_ledger_primary.py):
- The customer's answer is rendered from what the ledger committed. A request the ledger cannot
  decide (malformed, the ledger unreachable) is answered, in ledger-primary, by the legacy
  service as in shadow mode (the applier then applies it from the stream as it would in
  shadow); in ledger-only, by the sidecar itself: a JSON 422 (malformed) or 503 (the ledger
  unreachable) with the error's code.
- Background legacy calls are bounded (``legacy_connections_max`` at once, a queue of
  ``capture.queue_records_max``); beyond that the call is skipped and its outcome says so.
- Stopping waits for background calls, then cancels what is left; each has an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sidecar.domain.answer import LedgerAnswer, render
from sidecar.domain.ledger import OpenAccount, Reversal
from sidecar.domain.mapping import MISSING, MatchedRoute, Operation, extract
from sidecar.domain.outcome import AccountOutcome, TransferOutcome
from sidecar.domain.translate import Exchange, to_ledger
from sidecar.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidCommand,
    SidecarError,
    UnknownAccount,
    UnknownTransfer,
)
from sidecar.ports import LedgerStore
from sidecar.posting import Ledger

log = logging.getLogger(__name__)

#: the ledger's errors that are refusals in the API's words
_REFUSAL_OF: tuple[tuple[type[SidecarError], str], ...] = (
    (UnknownAccount, "unknown_account"),
    (CurrencyMismatch, "currency_mismatch"),
    (UnknownTransfer, "unknown_transfer"),
)


class LedgerAnswerer:
    """Decides mapped requests on the ledger and renders the legacy API's answer."""

    def __init__(self, ledger: Ledger, store: LedgerStore, currencies: Mapping[str, int]) -> None:
        self.ledger = ledger
        self.store = store
        self.currencies = currencies

    async def decide(
        self, matched: MatchedRoute, exchange: Exchange
    ) -> tuple[int, Any] | SidecarError:
        """The (status, body) the legacy API would give for what the ledger did, or why the
        ledger cannot decide this request (ledger-primary then lets the legacy service answer;
        ledger-only says so itself)."""
        route = matched.route
        assert route.answer is not None
        try:
            decided = await self._on_ledger(matched, exchange)
        except InvalidCommand as exc:
            log.info("ledger cannot decide", extra={"event": "ledger_primary", "code": exc.code})
            return exc
        except SidecarError as exc:  # the ledger unavailable or busy
            log.warning("ledger unavailable", extra={"event": "ledger_primary", "code": exc.code})
            return exc
        return render(
            route.answer,
            decided,
            amount_format=route.amount_format,
            currencies=self.currencies,
            request=exchange.request,
            path_params=matched.path_params,
            query=exchange.query,
            headers=exchange.headers,
            now=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            new_id=uuid.uuid4().hex[:16],
        )

    async def _on_ledger(self, matched: MatchedRoute, exchange: Exchange) -> LedgerAnswer:
        route = matched.route
        if route.operation is Operation.BALANCE:
            account = extract(
                route.fields["account"],
                request=exchange.request,
                path_params=matched.path_params,
                query=exchange.query,
                headers=exchange.headers,
            )
            if account is MISSING:
                raise InvalidCommand(f"route {route.name!r}: no account")
            view = await self.store.load({str(account)}, set())
            state = view.accounts.get(str(account))
            if state is None:
                return LedgerAnswer("unknown_account", {"account": str(account)})
            return LedgerAnswer(
                None,
                {
                    "account": state.account.id,
                    "balance": state.balance_minor,
                    "currency": state.account.currency.code,
                },
            )
        command = to_ledger(matched, exchange, self.currencies)
        try:
            result = await self.ledger.submit(command)  # type: ignore[arg-type]
        except IdempotencyConflict:
            raise  # the key reused for another request: the legacy service answers that
        except SidecarError as exc:
            refusal = next((name for kind, name in _REFUSAL_OF if isinstance(exc, kind)), None)
            if refusal is None:
                raise
            return LedgerAnswer(refusal, {})
        if isinstance(result, AccountOutcome):
            assert isinstance(command, OpenAccount)
            account = command.account
            values = {"account": account.id, "currency": account.currency.code}
            return LedgerAnswer(None if result.created else "exists", values)
        assert isinstance(result, TransferOutcome)
        if isinstance(command, Reversal) and result.replayed and result.key != command.key:
            return LedgerAnswer("already_reversed", {})
        if not result.posted:
            refusal = result.rejection.value if result.rejection else "insufficient_funds"
            if refusal == "balance_out_of_range":
                refusal = "insufficient_funds"
            return LedgerAnswer(refusal, {})
        moved = sum(p.amount_minor for p in result.postings if p.amount_minor > 0)
        currency = result.postings[0].currency if result.postings else None
        return LedgerAnswer(None, {"amount": moved, "currency": currency, "key": result.key})


class ShadowCalls:
    """Owner of the background legacy calls of ``ledger-primary``: bounded, drained at stop."""

    def __init__(self, concurrency: int, queued_max: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queued_max = queued_max
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped = 0

    def start(
        self, call: Callable[[], Awaitable[None]], skipped: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``call`` in the background, or ``skipped`` if too many are waiting already."""
        work = call if len(self._tasks) < self._queued_max else skipped
        if work is skipped:
            self.skipped += 1

        async def bounded() -> None:
            async with self._slots:
                await work()

        task = asyncio.create_task(bounded(), name="ledger-primary-shadow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, timeout_s: float = 10.0) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["LedgerAnswerer", "ShadowCalls"]
