"""Rebuilding ledger state from the event log alone, checking every event as it is folded in.

The event log is the source of truth: folding its events in ``seq`` order yields every account,
every decided transfer and every balance. ``Fold`` refuses an event that does not follow from
the ones before it (a posting whose ``balance_after_minor`` disagrees with the running balance,
an unbalanced entry, an unknown account), naming its sequence number.

Guarantees (tests/unit/test_replay.py):
- Folding the events a sequence of plans produced gives the balances those plans computed.
- Any event whose content contradicts the running state is reported at its own ``seq``.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.domain.chain import canonical
from sidecar.domain.ledger import (
    Account,
    AccountState,
    AccountStatus,
    NormalSide,
    TransferRecord,
)
from sidecar.domain.money import Currency
from sidecar.domain.outcome import PostedLeg, Rejection, TransferStatus


class FoldError(ValueError):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"event {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class Fold:
    """Running ledger state built from events."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountState] = {}
        self.transfers: dict[str, TransferRecord] = {}
        self.last_seq = 0

    def apply(self, seq: int, content: str) -> dict[str, Any]:
        """Fold one event in; return its parsed document."""
        if seq != self.last_seq + 1:
            raise FoldError(seq, f"expected event {self.last_seq + 1}")
        try:
            doc = json.loads(content)
            kind = doc["type"]
            if kind == "account_opened":
                self._opened(seq, doc)
            elif kind in ("transfer_posted", "transfer_rejected"):
                self._decided(seq, doc)
            else:
                raise FoldError(seq, f"unknown event type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FoldError):
                raise
            raise FoldError(seq, f"malformed event: {exc!r}") from exc
        self.last_seq = seq
        return doc  # type: ignore[no-any-return]

    def _opened(self, seq: int, doc: dict[str, Any]) -> None:
        if doc["account"] in self.accounts:
            raise FoldError(seq, f"account {doc['account']} opened twice")
        account = Account(
            id=doc["account"],
            currency=Currency(doc["currency"], doc["exponent"]),
            normal_side=NormalSide(doc["normal_side"]),
            overdraft_limit_minor=doc["overdraft_limit_minor"],
            status=AccountStatus(doc["status"]),
        )
        self.accounts[account.id] = AccountState(account, 0)

    def _decided(self, seq: int, doc: dict[str, Any]) -> None:
        key = doc["key"]
        if key in self.transfers:
            raise FoldError(seq, f"transfer {key} decided twice")
        reverses = doc["reverses"]
        if reverses is not None:
            target = self.transfers.get(reverses)
            if target is None:
                raise FoldError(seq, f"reverses unknown transfer {reverses}")
        postings: list[PostedLeg] = []
        if doc["type"] == "transfer_posted":
            totals: dict[str, int] = {}
            running: dict[str, int] = {}
            for p in doc["postings"]:
                state = self.accounts.get(p["account"])
                if state is None:
                    raise FoldError(seq, f"posting to unknown account {p['account']}")
                if state.account.currency.code != p["currency"]:
                    raise FoldError(seq, f"posting in {p['currency']} to {p['account']}")
                amount = p["amount_minor"]
                if not isinstance(amount, int) or amount == 0:
                    raise FoldError(seq, f"posting amount {amount!r} is not a non-zero integer")
                balance = running.get(p["account"], state.balance_minor)
                after = balance + state.account.delta(amount)
                if after != p["balance_after_minor"]:
                    raise FoldError(
                        seq,
                        f"posting to {p['account']} says balance after is "
                        f"{p['balance_after_minor']}, the log before it gives {after}",
                    )
                running[p["account"]] = after
                totals[p["currency"]] = totals.get(p["currency"], 0) + amount
                postings.append(PostedLeg(p["account"], p["currency"], amount, after))
            if len(postings) < 2 or any(totals.values()):
                raise FoldError(seq, f"transfer {key} is not a balanced entry of two or more")
            for account_id, balance in running.items():
                state = self.accounts[account_id]
                self.accounts[account_id] = AccountState(state.account, balance)
            status, rejection = TransferStatus.POSTED, None
            if reverses is not None:
                target = self.transfers[reverses]
                if target.reversed_by is not None:
                    raise FoldError(seq, f"{reverses} reversed twice")
                self.transfers[reverses] = target._replace(reversed_by=key)
        else:
            status, rejection = TransferStatus.REJECTED, Rejection(doc["rejection"])
        self.transfers[key] = TransferRecord(
            key=key,
            fingerprint=bytes.fromhex(doc["fingerprint"]),
            status=status,
            rejection=rejection,
            postings=tuple(postings),
            reverses=reverses,
            reversed_by=None,
            seq=seq,
        )

    def trial_balance(self) -> dict[str, int]:
        """Sum of signed postings per currency; zero for every currency in a sound ledger."""
        totals: dict[str, int] = {}
        for record in self.transfers.values():
            for p in record.postings:
                totals[p.currency] = totals.get(p.currency, 0) + p.amount_minor
        return totals


AccountRow = tuple[str, str, int, str, str, int | None, int]
TransferRow = tuple[str, str, str, str | None, str | None, str, int, int]
PostingRow = tuple[int, int, str, str, str, int, int]


def expected_rows(
    seq: int, doc: dict[str, Any]
) -> tuple[AccountRow | None, TransferRow | None, list[PostingRow]]:
    """The table rows an event must have produced: its account, its transfer, its postings.

    Shapes match ``sidecar.db.ledger_audit``'s queries so verification compares like with like.
    """
    if doc["type"] == "account_opened":
        return (
            (
                doc["account"],
                doc["currency"],
                doc["exponent"],
                doc["normal_side"],
                doc["status"],
                doc["overdraft_limit_minor"],
                seq,
            ),
            None,
            [],
        )
    posted = doc["type"] == "transfer_posted"
    transfer: TransferRow = (
        doc["key"],
        doc["fingerprint"],
        "posted" if posted else "rejected",
        doc.get("rejection"),
        doc["reverses"],
        canonical(doc["metadata"]),
        len(doc["postings"]) if posted else 0,
        seq,
    )
    postings: list[PostingRow] = [
        (
            seq,
            leg,
            doc["key"],
            p["account"],
            p["currency"],
            p["amount_minor"],
            p["balance_after_minor"],
        )
        for leg, p in enumerate(doc.get("postings", []) if posted else [])
    ]
    return None, transfer, postings
