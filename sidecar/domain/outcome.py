"""Result codes as values: what happened to one ledger command.

A command that was understood gets an outcome, even when the ledger said no (insufficient
funds): rejections are recorded under the idempotency key so a retry gets the same answer.
A command that cannot be understood raises a ``SidecarError`` instead and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class TransferStatus(StrEnum):
    POSTED = "posted"
    REJECTED = "rejected"


class Rejection(StrEnum):
    """Why a well-formed transfer was refused. Recorded, so replays refuse it again."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    ACCOUNT_NOT_OPEN = "account_not_open"
    BALANCE_OUT_OF_RANGE = "balance_out_of_range"


class PostedLeg(NamedTuple):
    """One posting as committed: signed amount (debit > 0, credit < 0) and the balance after it.

    ``balance_after_minor`` is in the account's normal-side terms, so it is the balance a
    customer would read at that point. A tuple: two are made per transfer on the posting path.
    """

    account_id: str
    currency: str
    amount_minor: int
    balance_after_minor: int


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """The result of a transfer or reversal command.

    ``replayed`` is true when the key had already been decided and nothing moved now.
    ``seq`` is the event-log sequence number of the decision (set once committed).
    """

    key: str
    status: TransferStatus
    rejection: Rejection | None = None
    postings: tuple[PostedLeg, ...] = ()
    reverses: str | None = None
    replayed: bool = False
    seq: int | None = None

    @property
    def posted(self) -> bool:
        return self.status is TransferStatus.POSTED


@dataclass(frozen=True, slots=True)
class AccountOutcome:
    """The result of opening an account: ``created`` is false when it already existed as asked."""

    account_id: str
    created: bool
    seq: int | None = None
