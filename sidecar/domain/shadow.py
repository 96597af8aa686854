"""Shadowing one captured exchange: decode it, reduce both systems' results to comparable
sides, and name the noise that concurrency makes.

The applier (``sidecar.applier``) reads intent and outcome records from the mirror stream and
asks this module, with no I/O: what did the legacy request and answer say (``exchange_of``),
what did each system do (``legacy_result``, ``ledger_result``), in which order should
concurrent exchanges be applied (``serialise``), and is a difference explained by the order
concurrent requests took (``explained_by_order``).

Guarantees (tests/unit/test_shadow.py):
- Bodies are parsed with numbers as ``Decimal``: an amount never passes through a float.
- A ledger that holds an account exactly as asked agrees with the legacy answer whether the
  legacy service says created or already exists; a ledger refusal (unknown account, conflict)
  is a rejection with its code, never a ``ledger_error``: only an unanswered ledger is one.
- ``serialise`` only moves an exchange past others it overlapped in time (intent to outcome) on
  the same account: any order among those is one the legacy service could have taken.
- A difference is ``order_dependent`` only if some other order of the overlapping exchanges
  on the account produces exactly what the legacy service answered.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import combinations
from typing import Any

from sidecar.domain.comparison import (
    MONETARY,
    Comparison,
    Difference,
    DivergenceKind,
    Outcome,
    Side,
    SideStatus,
)
from sidecar.domain.ledger import Result, Reversal, Transfer
from sidecar.domain.mapping import MISSING, RESULT_FIELDS, Route
from sidecar.domain.mirror import MirrorRecord
from sidecar.domain.outcome import AccountOutcome, TransferOutcome
from sidecar.domain.translate import (
    BalanceRead,
    Exchange,
    LedgerRequest,
    exchange_value,
    legacy_side,
)
from sidecar.errors import SidecarError

#: overlapping exchanges looked at when explaining a difference by order (2^n subsets)
ORDER_CANDIDATES_MAX = 12


def body_of(content: Mapping[str, Any]) -> Any:
    """A captured body as JSON (numbers as Decimal), or ``MISSING`` if it is none."""
    if "body" in content:
        text = content["body"]
    elif "body_base64" in content and "encoding" not in content:
        try:
            text = base64.b64decode(content["body_base64"]).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return MISSING
    else:
        return MISSING
    if not isinstance(text, str) or not text.strip():
        return MISSING
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return MISSING


def _pairs(value: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, list):
        for pair in value:
            if isinstance(pair, list) and len(pair) == 2:
                out.setdefault(str(pair[0]), str(pair[1]))
    return out


def exchange_of(intent: MirrorRecord, outcome: MirrorRecord | None) -> Exchange:
    """The request as captured and, if there is an outcome, the legacy answer."""
    request = intent.content
    answer: Mapping[str, Any] = outcome.content if outcome is not None else {}
    status = answer.get("status")
    return Exchange(
        method=str(request.get("method", "")),
        path=str(request.get("path", "")),
        request=body_of(request),
        answer=body_of(answer) if outcome is not None else MISSING,
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        headers=_pairs(request.get("headers")),
        query=_pairs(request.get("query")),
    )


def legacy_result(
    route: Route,
    exchange: Exchange,
    path_params: Mapping[str, str],
    rejection: str | None,
) -> Side:
    """What the legacy service says it did: its status and the result fields it reports."""
    status, code = legacy_side(route, exchange)
    fields: dict[str, Any] = {}
    currency: str | None = None
    if status is SideStatus.ACCEPTED:
        for name in sorted(RESULT_FIELDS):
            source = route.result.get(name) or route.fields.get(name)
            if source is None:
                continue
            value = exchange_value(source, exchange, path_params)
            if value is MISSING:
                continue
            if name == "currency":
                currency = str(value).strip()
            else:
                fields[name] = value
    elif status is SideStatus.REJECTED and rejection is not None:
        fields["rejection"] = rejection
    error = code if status is SideStatus.ERROR else None
    return Side(status, currency, fields, error)


def ledger_result(request: LedgerRequest, result: Result | int | None, legacy: SideStatus) -> Side:
    """What the ledger did with the command (or, for a read, the balance it holds)."""
    if isinstance(request, BalanceRead):
        if isinstance(result, int):
            return Side(SideStatus.ACCEPTED, request.currency, {"balance": result})
        # no such account: the same answer as a legacy "not found", else missing in the ledger
        status = SideStatus.REJECTED if legacy is SideStatus.REJECTED else SideStatus.ABSENT
        return Side(status, request.currency)
    if isinstance(result, SidecarError):
        return Side(SideStatus.REJECTED, None, {"rejection": result.code})
    if isinstance(result, AccountOutcome):
        if result.created or legacy not in (SideStatus.ACCEPTED, SideStatus.REJECTED):
            return Side(SideStatus.ACCEPTED)
        # the ledger holds the account exactly as asked: created now or before, as legacy says
        return Side(legacy)
    if isinstance(result, TransferOutcome):
        if isinstance(request, Reversal) and result.replayed and result.key != request.key:
            # reversed before under another key: the ledger moved nothing now
            return Side(SideStatus.REJECTED, None, {"rejection": "already_reversed"})
        if not result.posted:
            rejection = result.rejection.value if result.rejection else "rejected"
            return Side(SideStatus.REJECTED, None, {"rejection": rejection})
        moved = sum(p.amount_minor for p in result.postings if p.amount_minor > 0)
        currency = result.postings[0].currency if result.postings else None
        return Side(SideStatus.ACCEPTED, currency, {"amount": moved})
    return Side(SideStatus.ERROR, error="the ledger gave no result")


# --- concurrency --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Where an exchange sits in the stream: its intent's and its outcome's seqs."""

    intent_seq: int
    outcome_seq: int

    def overlaps(self, other: Span) -> bool:
        return self.intent_seq < other.outcome_seq and other.intent_seq < self.outcome_seq


def effects(request: LedgerRequest | None) -> dict[str, int]:
    """How a command would move each account's balance, in the account holder's terms (a
    debit lowers a customer's balance). Reversals and reads move nothing knowable here."""
    if not isinstance(request, Transfer):
        return {}
    out: dict[str, int] = {}
    for leg in request.legs:
        signed = -leg.amount_minor if leg.side.value == "debit" else leg.amount_minor
        out[leg.account_id] = out.get(leg.account_id, 0) + signed
    return out


def debit_account(request: LedgerRequest | None) -> str | None:
    if isinstance(request, Transfer):
        return next((leg.account_id for leg in request.legs if leg.side.value == "debit"), None)
    return None


@dataclass(frozen=True, slots=True)
class Pending:
    """An exchange to apply: its span, what legacy said, and the command it becomes."""

    span: Span
    legacy: SideStatus
    request: LedgerRequest | None


def serialise(items: Sequence[Pending]) -> list[int]:
    """An order to apply ``items`` in (indexes): outcome order, except among exchanges that
    overlapped in time, where the order that explains the legacy answers with the fewest
    assumptions wins:

    1. a transfer the legacy service accepted moves before the overlapping accepted transfers
       out of the account it credits (the money came in first, so both fit), unless legacy
       refused an overlapping transfer out of that account (then it had not come in yet);
    2. a transfer it refused moves after the overlapping accepted transfers out of the same
       account (a near-floor race: the accepted one went first).

    An exchange only ever passes exchanges it overlapped: any order among those is one the
    legacy service could have taken.
    """
    order = list(range(len(items)))
    debits: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        account = debit_account(item.request)
        if account is not None:
            debits.setdefault(account, []).append(i)

    def passes(mover: int, others: Sequence[int]) -> bool:
        return all(items[k].span.overlaps(items[mover].span) for k in others)

    # 1. money in before money out
    for j, item in enumerate(items):
        credit = credit_account(item.request)
        if item.legacy is not SideStatus.ACCEPTED or credit is None:
            continue
        if any(
            items[i].legacy is SideStatus.REJECTED and items[i].span.overlaps(item.span)
            for i in debits.get(credit, ())
        ):
            continue  # legacy refused a payment out meanwhile: the money had not come in yet
        earlier = [
            i
            for i in debits.get(credit, ())
            if i != j
            and items[i].legacy is SideStatus.ACCEPTED
            and order.index(i) < order.index(j)
            and items[i].span.overlaps(item.span)
        ]
        if not earlier:
            continue
        first = min(earlier, key=order.index)
        start, end = order.index(first), order.index(j)
        if passes(j, order[start:end]):
            order.remove(j)
            order.insert(start, j)

    # 2. a refusal after the acceptances it raced
    moves: dict[int, int] = {}  # refused index -> the index it must follow
    for indexes in debits.values():
        if len(indexes) < 2:
            continue
        for i in indexes:
            if items[i].legacy is not SideStatus.REJECTED:
                continue
            later = [
                j
                for j in indexes
                if order.index(j) > order.index(i)
                and items[j].legacy is SideStatus.ACCEPTED
                and items[j].span.overlaps(items[i].span)
            ]
            if later:
                moves[i] = max(later, key=order.index)
    for i in sorted(moves, key=order.index, reverse=True):
        start, end = order.index(i), order.index(moves[i])
        if end > start and passes(i, order[start + 1 : end + 1]):
            order.remove(i)
            order.insert(order.index(moves[i]) + 1, i)
    return order


def credit_account(request: LedgerRequest | None) -> str | None:
    if isinstance(request, Transfer):
        return next((leg.account_id for leg in request.legs if leg.side.value == "credit"), None)
    return None


@dataclass(frozen=True, slots=True)
class Overlap:
    """An exchange overlapping the one being compared, as order explanations need it: its
    effect on the account's balance in the ledger (or requested, if not applied yet), and
    whether legacy accepted it (None: not known yet)."""

    effect: int
    legacy_accepted: bool | None = None
    #: no other movement of the account overlaps the two exchanges: their relative order is
    #: all that differs between the two sides (False: not known to be so)
    alone: bool = False
    #: what it asked to move on the account, whatever the ledger did (None: ``effect``)
    requested: int | None = None
    #: answered before the exchange compared was: legacy had done it by then, if it accepted
    #: (None: when legacy answered it is not known, as for an answer learned in doubt)
    settled: bool | None = False

    @property
    def asked(self) -> int:
        return self.effect if self.requested is None else self.requested


def explained_by_order(
    comparison: Comparison,
    before: Iterable[int | Overlap],
    after: Iterable[int | Overlap],
    complete: bool = False,
) -> bool:
    """Whether another order of overlapping exchanges on the account explains ``comparison``.

    ``before`` holds the overlapping exchanges the ledger applied before this one, ``after``
    those it applies after (or has not yet applied); a bare int is an effect whose legacy
    answer is unknown. The legacy service may have taken any of them on the other side of
    this one, but only in a way its own answers allow: a refusal is not explained by a debit
    both sides accepted when no other movement of the account overlaps the two, since legacy
    would then have had enough for both, and the ledger, from the same balance, too.

    ``complete``: ``before`` and ``after`` hold every movement of the account that overlapped
    this exchange, each with what it asked. A refusal by the ledger of what legacy accepted is
    then explained only if legacy can have had more money than the ledger had when it
    refused (``_legacy_could_have_had_more``): a posting legacy dropped after accepting it
    must not pass for a race.
    """
    if comparison.outcome is not Outcome.MISMATCH or len(comparison.differences) != 1:
        return False
    difference = comparison.differences[0]
    before_ = [o if isinstance(o, Overlap) else Overlap(o) for o in before]
    after_ = [o if isinstance(o, Overlap) else Overlap(o) for o in after]
    if difference.kind is DivergenceKind.STATUS:
        if "rejected" not in (difference.legacy, difference.ledger):
            return False
        if difference.ledger == "rejected":  # the ledger had too little; legacy had more
            if complete and not _legacy_could_have_had_more(before_, after_):
                return False
            return any(o.effect > 0 and o.legacy_accepted is not False for o in after_) or any(
                o.effect < 0 and not (o.legacy_accepted is True and o.alone) for o in before_
            )
        # legacy had too little: it took a credit later, or a debit first
        return any(o.effect > 0 and o.legacy_accepted is not False for o in before_) or any(
            o.effect < 0 and not (o.legacy_accepted is not None and o.alone) for o in after_
        )
    if difference.kind is DivergenceKind.BALANCE:
        gap = _gap(difference)
        if gap is None or gap == 0:
            return False
        # legacy saw an "after" one the ledger had not applied (+d), or had not yet seen a
        # "before" one the ledger had (-d)
        candidates = [-o.effect for o in before_ if o.effect]
        candidates += [o.effect for o in after_ if o.effect]
        candidates = candidates[-ORDER_CANDIDATES_MAX:]
        for size in range(1, len(candidates) + 1):
            for subset in combinations(candidates, size):
                if sum(subset) == gap:
                    return True
    return False


def _legacy_could_have_had_more(before: Sequence[Overlap], after: Sequence[Overlap]) -> bool:
    """Whether legacy can have held more than the ledger held when it refused the one
    compared, once legacy had answered it: a necessary condition for legacy to have accepted
    it, since by then legacy had made it and every debit it accepted and answered before, and
    each of those had to fit. Legacy's best case: every overlapping credit it did not refuse,
    and of the debits only those it accepted and answered first (one answered later may have
    come after, paid for by money that came in later still); the ledger's: what it applied
    before its refusal."""
    most = sum(
        o.asked
        for o in (*before, *after)
        if (o.asked > 0 and o.legacy_accepted is not False)
        or (o.asked < 0 and o.legacy_accepted is True and o.settled is True)
    )
    return most > sum(o.effect for o in before)


def _gap(difference: Difference) -> int | None:
    """Legacy minus ledger, in minor units, when both are whole minor units."""
    if not isinstance(difference.ledger, int) or difference.legacy_minor is None:
        return None
    return difference.legacy_minor - difference.ledger


def order_dependent(comparison: Comparison) -> Comparison:
    """The comparison with its one difference renamed ``order_dependent`` (no money at risk)."""
    (difference,) = comparison.differences
    renamed = Difference(
        difference.field,
        DivergenceKind.ORDER_DEPENDENT,
        difference.legacy,
        difference.ledger,
        difference.currency,
        0,
    )
    return Comparison(Outcome.MISMATCH, (renamed,), {}, comparison.detail)


# --- the stored record --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComparisonRecord:
    """One mirrored request's comparison, as stored: where it is in the stream, whose account,
    what was found, and which ledger event decided the ledger's side."""

    request_id: str
    seq: int
    intent_seq: int
    partition: int
    route: str
    operation: str
    comparison: Comparison
    account_id: str | None = None
    ledger_seq: int | None = None
    trace_id: str | None = None
    #: every account the request touched (the payee's too), for listing per account
    accounts: tuple[str, ...] = ()

    @property
    def monetary(self) -> bool:
        return bool(self.comparison.kinds & MONETARY)

    def document(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "request_id": self.request_id,
            "seq": self.seq,
            "intent_seq": self.intent_seq,
            "partition": self.partition,
            "route": self.route,
            "operation": self.operation,
            "outcome": c.outcome.value,
            "kinds": sorted(k.value for k in c.kinds),
            "monetary": self.monetary,
            "account_id": self.account_id,
            "accounts": list(self.accounts),
            "differences": [
                {
                    "field": d.field,
                    "kind": d.kind.value,
                    "legacy": plain(d.legacy),
                    "ledger": plain(d.ledger),
                    "currency": d.currency,
                    "at_risk_minor": d.at_risk_minor,
                }
                for d in c.differences
            ],
            "at_risk": dict(c.at_risk_minor),
            "ledger_seq": self.ledger_seq,
            "trace_id": self.trace_id,
            "detail": c.detail,
        }


def plain(value: Any) -> Any:
    """A compared value as plain JSON: exact decimals as strings, a missing value as null."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, SideStatus):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


__all__ = [
    "ComparisonRecord",
    "Overlap",
    "Pending",
    "Span",
    "body_of",
    "debit_account",
    "effects",
    "exchange_of",
    "explained_by_order",
    "ledger_result",
    "legacy_result",
    "order_dependent",
    "serialise",
]
