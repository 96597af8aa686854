"""In-memory adapter of the LedgerStore port, for fast tests of everything above the store.

It keeps what the PostgreSQL adapter keeps, in dicts: the hash-chained event log and the state
``domain.replay.Fold`` derives from it. The ledger's rules live in the domain; this module only
checks a plan against the stored state the way ``post_batch`` (migrations/0001_ledger.sql)
does; the contract suite pins that both refuse the same plans with the same error types (a plan
wrong in two ways at once may be refused for either).

Guarantees (tests/contract/test_ledger_store.py, run against this store and PostgreSQL):
- ``commit`` appends a plan's events with consecutive seqs and the hash chain of
  ``chain.link``, and returns the first seq
  (test_commit_returns_consecutive_seqs_across_commits,
  test_head_hash_is_the_chain_recomputed_over_the_events).
- A plan is refused whole, changing nothing, in ``post_batch``'s order: no events
  (LedgerIntegrityError), then an assumed balance that changed (PlanStale, naming the accounts),
  then an opened account that exists (AccountsTaken), then a key decided meanwhile or a second
  posted reversal of one transfer (KeysTaken), then anything the fold or the balance checks
  refuse (LedgerIntegrityError)
  (test_a_plan_from_stale_balances_is_refused_and_changes_nothing and its neighbours).
- ``balance`` at a seq is the ``balance_after_minor`` of the account's last posting at or before
  it, 0 if none, None before the account was opened
  (test_balance_at_an_earlier_seq_is_the_balance_after_the_last_posting_then).
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, replace

import orjson

from sidecar.domain.chain import GENESIS, link
from sidecar.domain.ledger import BatchPlan, LedgerView, TransferRecord
from sidecar.domain.mirror import (
    Checkpoint,
    MirrorEvent,
    MirrorRecord,
    RecordKind,
    content_json,
)
from sidecar.domain.replay import Fold, FoldError
from sidecar.errors import (
    AccountsTaken,
    AppendOnlyViolation,
    KeysTaken,
    LedgerIntegrityError,
    PlanStale,
)
from sidecar.ports import LogHead, StoredEvent

_DECIDED = ("transfer_posted", "transfer_rejected")


@dataclass(frozen=True, slots=True)
class _Names:
    """What a plan's events name, read before folding so a refusal can precede any change.

    ``opened`` holds (index of the event, account id); ``reversed`` the targets of posted
    reversals; ``accounts`` and ``transfers`` everything the fold will look up.
    """

    opened: tuple[tuple[int, str], ...]
    keys: tuple[str, ...]
    reversed: tuple[str, ...]
    accounts: frozenset[str]
    transfers: frozenset[str]


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _names(events: Sequence[str]) -> _Names:
    opened: list[tuple[int, str]] = []
    keys: list[str] = []
    reversed_: list[str] = []
    accounts: set[str] = set()
    transfers: set[str] = set()
    for index, content in enumerate(events):
        try:
            doc = json.loads(content)
            kind = doc["type"]
            if kind == "account_opened":
                opened.append((index, _text(doc["account"])))
            elif kind in _DECIDED:
                keys.append(_text(doc["key"]))
                if doc["reverses"] is not None:
                    transfers.add(_text(doc["reverses"]))
                    if kind == "transfer_posted":
                        reversed_.append(doc["reverses"])
                if kind == "transfer_posted":
                    accounts.update(_text(p["account"]) for p in doc["postings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerIntegrityError(
                f"event {index + 1} of the plan is malformed: {exc!r}"
            ) from exc
    return _Names(
        tuple(opened), tuple(keys), tuple(reversed_), frozenset(accounts), frozenset(transfers)
    )


def _repeated(values: Iterable[str]) -> set[str]:
    return {value for value, count in Counter(values).items() if count > 1}


class InMemoryLedgerStore:
    """The LedgerStore port in dicts. Each call runs without awaiting, so it is atomic."""

    def __init__(self) -> None:
        self._fold = Fold()
        self._offsets: dict[tuple[str, int], int] = {}
        self._events: list[StoredEvent] = []
        self._batches = 0
        self._opened_seq: dict[str, int] = {}
        #: per account, (seq, balance_after_minor) of every posting in seq and leg order
        self._history: dict[str, list[tuple[int, int]]] = {}

    async def load(self, account_ids: Collection[str], keys: Collection[str]) -> LedgerView:
        transfers: dict[str, TransferRecord] = {}
        for key in keys:
            record = self._fold.transfers.get(key)
            if record is None:
                continue
            transfers[key] = record
            if record.reversed_by is not None:
                transfers[record.reversed_by] = self._fold.transfers[record.reversed_by]
        wanted = set(account_ids)
        for record in transfers.values():
            wanted.update(p.account_id for p in record.postings)
        accounts = {a: self._fold.accounts[a] for a in wanted if a in self._fold.accounts}
        return LedgerView(accounts=accounts, transfers=transfers)

    async def commit(self, plan: BatchPlan, checkpoints: Sequence[Checkpoint] = ()) -> int:
        if plan.is_empty:
            raise LedgerIntegrityError("a commit needs at least one event")
        stale = frozenset(
            account_id
            for account_id, change in plan.balances.items()
            if self._is_stale(account_id, change.before_minor)
        )
        if stale:
            raise PlanStale("balances changed since the batch was planned", stale)
        names = _names(plan.events)
        self._refuse_taken(names)
        first = len(self._events) + 1
        scratch = self._scratch(names, plan)
        try:
            for offset, content in enumerate(plan.events):
                scratch.apply(first + offset, content)
        except FoldError as exc:
            raise LedgerIntegrityError(f"the store refused the plan: {exc}") from exc
        self._check_balances(plan, scratch, names)
        # every check passed: from here on nothing can fail
        self._append(plan.events, names, scratch)
        for c in checkpoints:
            key = (c.consumer, c.partition)
            self._offsets[key] = max(self._offsets.get(key, 0), c.seq)
        return first

    async def offset(self, consumer: str, partition: int) -> int:
        return self._offsets.get((consumer, partition), 0)

    async def balance(self, account_id: str, at_seq: int | None = None) -> int | None:
        if at_seq is None:
            state = self._fold.accounts.get(account_id)
            return state.balance_minor if state is not None else None
        opened = self._opened_seq.get(account_id)
        if opened is None or opened > at_seq:
            return None
        history = self._history.get(account_id, [])
        index = bisect_right(history, at_seq, key=lambda entry: entry[0])
        return history[index - 1][1] if index else 0

    async def head(self) -> LogHead:
        if not self._events:
            return LogHead(0, GENESIS, self._batches)
        last = self._events[-1]
        return LogHead(last.seq, last.hash, self._batches)

    async def events(self, after_seq: int = 0, chunk: int = 5000) -> AsyncIterator[StoredEvent]:
        """Events after ``after_seq`` in seq order; ``chunk`` only matters to paging adapters."""
        index = max(after_seq, 0)
        while index < len(self._events):
            yield self._events[index]
            index += 1

    # --- commit, step by step --------------------------------------------------------------

    def _is_stale(self, account_id: str, before_minor: int) -> bool:
        state = self._fold.accounts.get(account_id)
        if state is None:
            return before_minor != 0  # an account the plan opens starts at 0
        return state.balance_minor != before_minor

    def _refuse_taken(self, names: _Names) -> None:
        """The unique constraints of post_batch's inserts: accounts first, then transfers."""
        opened = [account_id for _, account_id in names.opened]
        taken = _repeated(opened) | {a for a in opened if a in self._fold.accounts}
        if taken:
            raise AccountsTaken(f"accounts opened meanwhile: {', '.join(sorted(taken))}")
        taken = _repeated(names.keys) | {k for k in names.keys if k in self._fold.transfers}
        reversed_ = _repeated(names.reversed) | {
            target
            for target in names.reversed
            if (record := self._fold.transfers.get(target)) is not None
            and record.reversed_by is not None
        }
        if taken or reversed_:
            raise KeysTaken(
                f"keys decided meanwhile: {', '.join(sorted(taken)) or '-'}; "
                f"transfers reversed meanwhile: {', '.join(sorted(reversed_)) or '-'}"
            )

    def _scratch(self, names: _Names, plan: BatchPlan) -> Fold:
        """A fold holding only the stored state the plan's events touch, to fold them into."""
        scratch = Fold()
        scratch.last_seq = len(self._events)
        for account_id in names.accounts | plan.balances.keys():
            state = self._fold.accounts.get(account_id)
            if state is not None:
                scratch.accounts[account_id] = state
        for key in names.transfers:
            record = self._fold.transfers.get(key)
            if record is not None:
                scratch.transfers[key] = record
        return scratch

    def _check_balances(self, plan: BatchPlan, scratch: Fold, names: _Names) -> None:
        """post_batch's step 4 and the balance_within_limit constraint.

        With the assumed balances checked, the balances the plan leaves must be the folded
        ones, every account a posting moved must be among them, and none may cross its floor.
        """
        moved = {p.account_id for key in names.keys for p in scratch.transfers[key].postings}
        wrong = sorted(moved - plan.balances.keys())
        over: list[str] = []
        for account_id, change in plan.balances.items():
            state = scratch.accounts.get(account_id)
            if state is None:
                continue  # neither stored nor opened: post_batch ignores it too
            if state.balance_minor != change.after_minor:
                wrong.append(account_id)
            elif not state.account.allows(state.balance_minor):
                over.append(account_id)
        if wrong:
            raise LedgerIntegrityError(
                f"planned balances disagree with the planned postings: {', '.join(sorted(wrong))}"
            )
        if over:
            raise LedgerIntegrityError(
                f"planned balances cross the accounts' limits: {', '.join(sorted(over))}"
            )

    def _append(self, events: Sequence[str], names: _Names, scratch: Fold) -> None:
        prev = self._events[-1].hash if self._events else GENESIS
        for content in events:
            seq = len(self._events) + 1
            prev = link(prev, seq, content)
            self._events.append(StoredEvent(seq, content, prev))
        self._batches += 1
        first = scratch.last_seq - len(events) + 1
        for index, account_id in names.opened:
            self._opened_seq[account_id] = first + index
        for key in names.keys:
            record = scratch.transfers[key]
            for p in record.postings:
                self._history.setdefault(p.account_id, []).append(
                    (record.seq, p.balance_after_minor)
                )
        self._fold.accounts.update(scratch.accounts)
        self._fold.transfers.update(scratch.transfers)
        self._fold.last_seq = scratch.last_seq


class InMemoryMirrorLog:
    """The MirrorLog port in memory: the same rules as ``db.mirror_store``, in a list."""

    def __init__(self) -> None:
        self._events: list[MirrorEvent] = []
        self._index: dict[tuple[str, RecordKind], int] = {}
        self._offsets: dict[tuple[str, int], int] = {}

    async def append(self, records: Sequence[MirrorRecord]) -> list[int]:
        # refused as the database refuses it, stored as it stores it (plain JSON)
        for r in records:
            if r.partition < 0 or not 1 <= len(r.request_id.encode()) <= 128:
                raise LedgerIntegrityError(
                    f"mirror record {r.request_id!r}: partition >= 0 and a 1-128 byte id"
                )
        stored = [replace(r, content=orjson.loads(content_json(r))) for r in records]
        seqs: list[int] = []
        for record in stored:
            known = self._index.get((record.request_id, record.kind))
            if known is None:
                known = len(self._events) + 1
                self._events.append(MirrorEvent(known, record, time.time()))
                self._index[(record.request_id, record.kind)] = known
            seqs.append(known)
        return seqs

    async def read(
        self, after_seq: int = 0, limit: int = 1000, partition: int | None = None
    ) -> list[MirrorEvent]:
        out: list[MirrorEvent] = []
        for event in self._events[max(after_seq, 0) :]:
            if partition is None or event.record.partition == partition:
                out.append(event)
                if len(out) == limit:
                    break
        return out

    async def head(self) -> int:
        return len(self._events)

    async def in_doubt(self, up_to_seq: int, after_seq: int = 0) -> list[MirrorEvent]:
        return [
            e
            for e in self._events[max(after_seq, 0) : max(up_to_seq, 0)]
            if e.record.kind is RecordKind.INTENT
            and (e.record.request_id, RecordKind.OUTCOME) not in self._index
        ]

    async def intents(self, request_ids: Collection[str]) -> dict[str, MirrorEvent]:
        return self._find(request_ids, RecordKind.INTENT)

    async def outcomes(self, request_ids: Collection[str]) -> dict[str, MirrorEvent]:
        return self._find(request_ids, RecordKind.OUTCOME)

    def _find(self, request_ids: Collection[str], kind: RecordKind) -> dict[str, MirrorEvent]:
        out: dict[str, MirrorEvent] = {}
        for request_id in request_ids:
            seq = self._index.get((request_id, kind))
            if seq is not None:
                out[request_id] = self._events[seq - 1]
        return out

    async def offset(self, consumer: str, partition: int) -> int:
        return self._offsets.get((consumer, partition), 0)

    async def commit_offset(self, consumer: str, partition: int, seq: int) -> None:
        current = self._offsets.get((consumer, partition), 0)
        if seq < current:
            raise AppendOnlyViolation(
                f"offset of {consumer} on partition {partition} only moves forward "
                f"({current} -> {seq})"
            )
        self._offsets[(consumer, partition)] = seq
