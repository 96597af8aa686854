"""The ledger answering customers (``ledger-primary``, ``ledger-only``): a mapped request is
turned into a ledger command, posted (durable before the answer goes out), and answered in the
legacy API's shape through the route's ``[route.answer]``. In ``ledger-primary`` the legacy
service then gets the same request from the mirror stream (``sidecar.legacy_delivery``), and
its answer is the request's outcome, which the applier compares in reverse (the ledger's key
makes its replay a no-op, so nothing is applied twice).

Guarantees (tests/integration/test_ledger_primary.py):
- The customer's answer is rendered from what the ledger committed. A request the ledger cannot
  decide (malformed, the ledger unreachable) is answered, in ledger-primary, by the legacy
  service as in shadow mode (the applier then applies it from the stream as it would in
  shadow); in ledger-only, by the sidecar itself: a JSON 422 (malformed) or 503 (the ledger
  unreachable) with the error's code.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sidecar.domain.answer import LedgerAnswer, render
from sidecar.domain.ledger import OpenAccount, Reversal
from sidecar.domain.mapping import MISSING, MatchedRoute, Operation
from sidecar.domain.outcome import AccountOutcome, TransferOutcome
from sidecar.domain.translate import Exchange, exchange_value, to_ledger
from sidecar.errors import (
    CurrencyMismatch,
    InvalidCommand,
    SidecarError,
    UnknownAccount,
    UnknownTransfer,
)
from sidecar.ports import AnswerStore, LedgerStore
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

    def __init__(
        self,
        ledger: Ledger,
        store: LedgerStore,
        currencies: Mapping[str, int],
        answers: AnswerStore | None = None,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.currencies = currencies
        #: answers by legacy idempotency key: a retry gets the first answer, as from legacy
        self.answers = answers

    async def decide(
        self, matched: MatchedRoute, exchange: Exchange
    ) -> tuple[int, Any] | SidecarError:
        """The (status, body) the legacy API would give for what the ledger did, or why the
        ledger cannot decide this request (ledger-primary then lets the legacy service answer;
        ledger-only says so itself)."""
        route = matched.route
        assert route.answer is not None
        key = self._key(matched, exchange)
        if key is not None and self.answers is not None:
            try:
                kept = await self.answers.get(route.name, key)
            except Exception as exc:  # the database away: the ledger cannot answer either
                return SidecarError(f"answers unreadable: {type(exc).__name__}")
            if kept is not None:
                return kept
        try:
            decided = await self._on_ledger(matched, exchange)
        except InvalidCommand as exc:
            log.info("ledger cannot decide", extra={"event": "ledger_primary", "code": exc.code})
            return exc
        except SidecarError as exc:  # the ledger unavailable or busy
            log.warning("ledger unavailable", extra={"event": "ledger_primary", "code": exc.code})
            return exc
        answer = render(
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
        if key is None or self.answers is None:
            return answer
        try:  # the first answer under a key is the one every retry gets
            return await self.answers.put(route.name, key, *answer)
        except Exception:  # decided and committed: answer now; a retry decides it again
            log.exception("answer not kept", extra={"event": "ledger_primary"})
            return answer

    @staticmethod
    def _key(matched: MatchedRoute, exchange: Exchange) -> str | None:
        source = matched.route.fields.get("key")
        if source is None:
            return None
        value = exchange_value(source, exchange, matched.path_params)
        return str(value)[:512] if value is not MISSING and value not in (None, "") else None

    async def _on_ledger(self, matched: MatchedRoute, exchange: Exchange) -> LedgerAnswer:
        route = matched.route
        if route.operation is Operation.BALANCE:
            account = exchange_value(route.fields["account"], exchange, matched.path_params)
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
        except SidecarError as exc:  # a key reused for another request stays an error
            refusal = next((name for kind, name in _REFUSAL_OF if isinstance(exc, kind)), None)
            if (
                refusal is None
                and isinstance(command, Reversal)
                and isinstance(exc, InvalidCommand)
            ):
                refusal = "unknown_transfer"  # nothing posted under that key to reverse
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


__all__ = ["LedgerAnswerer"]
