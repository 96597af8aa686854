"""``ledger verify``: prove from the database alone that the ledger is whole.

Checks, each reported with what it measured (tests/integration/test_verify.py):
- ``hash_chain``: every event's hash is sha256(previous hash, seq, content), seqs run 1..head
  with no gap, and the log head matches; tampering is reported at the first seq it breaks.
- ``rows_match_log``: every account, transfer and posting row is exactly what its event says,
  and no row exists that no event explains; a changed, deleted or inserted row is reported at
  the seq of the event it contradicts.
- ``audit_chain``: the admin audit log (append-only, hash-chained by the same rule) is whole.
- ``log_replays``: folding the events in order reproduces every posting's balance-after.
- ``trial_balance``: the signed postings of every currency sum to zero.
- ``cached_balances``: each account's balance equals the sum of its postings, and each
  posting's balance-after equals the running sum up to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import DatabaseSettings
from sidecar.db.connect import connection
from sidecar.db.ledger_audit import (
    PostgresLedgerAudit,
    audit_trail_head,
    audit_trail_page,
    events_page,
    log_head,
)
from sidecar.domain.chain import ChainChecker, canonical
from sidecar.domain.replay import Fold, FoldError, expected_rows

PAGE_EVENTS = 5000

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    head_seq: int = 0
    head_hash: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
            "head": {"seq": self.head_seq, "hash": self.head_hash},
        }


class _RowDiff:
    """Remembers the first (lowest-seq) disagreement between rows and the log, and a count."""

    def __init__(self) -> None:
        self.count = 0
        self.first_seq: int | None = None
        self.first_detail = ""

    def add(self, seq: int, detail: str) -> None:
        self.count += 1
        if self.first_seq is None or seq < self.first_seq:
            self.first_seq = seq
            self.first_detail = detail

    def compare(self, what: str, expected: dict[Any, Any], actual: dict[Any, Any]) -> None:
        for key in expected.keys() | actual.keys():
            want, have = expected.get(key), actual.get(key)
            if want == have:
                continue
            row: Any = want if want is not None else have
            seq = key[0] if what == "posting" else row[-1]
            if have is None:
                self.add(seq, f"{what} {key} of event {seq} is missing from its table")
            elif want is None:
                self.add(seq, f"{what} {key} is in its table but no event {seq} records it")
            else:
                self.add(seq, f"{what} {key} differs from event {seq}: table {have}, log {want}")


def _actual_rows(
    accounts: list[Any], transfers: list[Any], postings: list[Any]
) -> tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any]]:
    return (
        {
            r["opened_seq"]: (
                r["id"],
                r["currency"],
                r["currency_exponent"],
                r["normal_side"],
                r["status"],
                r["overdraft_limit_minor"],
                r["opened_seq"],
            )
            for r in accounts
        },
        {
            r["seq"]: (
                r["key"],
                bytes(r["fingerprint"]).hex(),
                r["status"],
                r["rejection"],
                r["reverses"],
                canonical(json.loads(r["metadata"])),
                r["legs"],
                r["seq"],
            )
            for r in transfers
        },
        {
            (r["seq"], r["leg"]): (
                r["seq"],
                r["leg"],
                r["transfer_key"],
                r["account_id"],
                r["currency"],
                r["amount_minor"],
                r["balance_after_minor"],
            )
            for r in postings
        },
    )


async def _audit_chain(conn: Any) -> Check:
    """The admin audit log's chain: the event log's rule, checked the same way."""
    head = await audit_trail_head(conn)
    if head is None:
        return Check("audit_chain", True, "no audit log in this schema (before migration 0008)")
    chain = ChainChecker()
    last = 0
    mismatch: int | None = None  # a row whose columns say other than its hashed content
    while page := await audit_trail_page(conn, last, PAGE_EVENTS):
        for row in page:
            chain.feed(row["seq"], row["content"], bytes(row["hash"]))
            if mismatch is None and not _columns_agree(row):
                mismatch = row["seq"]
        last = page[-1]["seq"]
    chain.finish(head["seq"], bytes(head["hash"]))
    if chain.first_break is not None:
        where = chain.first_break
        return Check("audit_chain", False, f"broken at seq {where.seq}: {where.reason}")
    if mismatch is not None:
        return Check(
            "audit_chain",
            False,
            f"seq {mismatch}: actor, action or allowed differ from the record's hashed content",
        )
    return Check("audit_chain", True, f"{chain.checked} admin actions, chain intact")


def _columns_agree(row: Any) -> bool:
    """The audit row's queryable columns say what its hashed content says."""
    try:
        content = json.loads(row["content"])
    except ValueError:
        return False
    return bool(
        content.get("actor") == row["actor"]
        and content.get("action") == row["action"]
        and content.get("allowed") == row["allowed"]
    )


async def verify(settings: DatabaseSettings, progress: Progress | None = None) -> VerifyReport:
    report = VerifyReport()
    async with connection(settings) as conn:
        audit = PostgresLedgerAudit(conn)
        head = await log_head(conn)
        head_seq, head_hash = head["seq"], bytes(head["hash"])
        report.head_seq, report.head_hash = head_seq, head_hash.hex()

        chain = ChainChecker()
        fold = Fold()
        fold_error: FoldError | None = None
        rows = _RowDiff()
        last = 0
        while True:
            page = await events_page(conn, last, PAGE_EVENTS)
            if not page:
                break
            want_accounts: dict[Any, Any] = {}
            want_transfers: dict[Any, Any] = {}
            want_postings: dict[Any, Any] = {}
            for event in page:
                seq, content = event["seq"], event["content"]
                chain.feed(seq, content, bytes(event["hash"]))
                try:
                    doc = json.loads(content)
                    account, transfer, postings = expected_rows(seq, doc)
                except (ValueError, KeyError, TypeError):
                    rows.add(seq, f"event {seq} content is not a ledger event")
                    if fold_error is None:
                        fold_error = FoldError(seq, "content is not a ledger event")
                    continue
                if account is not None:
                    want_accounts[seq] = account
                if transfer is not None:
                    want_transfers[seq] = transfer
                for posting in postings:
                    want_postings[posting[:2]] = posting
                if fold_error is None:
                    try:
                        fold.apply(seq, content)
                    except FoldError as exc:
                        fold_error = exc
            lo, hi = page[0]["seq"], page[-1]["seq"]
            have = _actual_rows(*await audit.rows_between(lo, hi))
            rows.compare("account", want_accounts, have[0])
            rows.compare("transfer", want_transfers, have[1])
            rows.compare("posting", want_postings, have[2])
            last = hi
            if progress is not None:
                progress(last, head_seq)
        chain.finish(head_seq, head_hash)
        beyond = await audit.first_row_beyond(max(last, head_seq))
        if beyond is not None:
            rows.add(beyond, f"rows exist at seq {beyond}, which no event in the log covers")

        if chain.first_break is None:
            detail = f"{chain.checked} events, head {head_seq} {head_hash.hex()[:16]}…"
        else:
            detail = f"broken at seq {chain.first_break.seq}: {chain.first_break.reason}"
        report.checks.append(Check("hash_chain", chain.first_break is None, detail))
        report.checks.append(await _audit_chain(conn))

        if rows.first_seq is None:
            detail = f"every row matches its event ({chain.checked} events)"
        else:
            detail = (
                f"{rows.count} row(s) disagree with the log; first at seq {rows.first_seq}: "
                f"{rows.first_detail}"
            )
        report.checks.append(Check("rows_match_log", rows.first_seq is None, detail))

        detail = (
            f"{fold.last_seq} events fold into {len(fold.accounts)} accounts"
            if fold_error is None
            else f"broken at seq {fold_error.seq}: {fold_error.reason}"
        )
        report.checks.append(Check("log_replays", fold_error is None, detail))

        totals = await audit.trial_balance()
        off = [f"{r['currency']} {r['total']}" for r in totals if int(r["total"]) != 0]
        summary = ", ".join(f"{r['currency']} 0 over {r['postings']} postings" for r in totals)
        report.checks.append(
            Check(
                "trial_balance",
                not off,
                f"not zero: {', '.join(off)}" if off else (summary or "no postings yet"),
            )
        )

        cached = await audit.cached_balance_mismatches()
        running = await audit.running_balance_mismatches()
        problems = [
            f"account {r['id']} caches {r['balance_minor']}, its postings sum to "
            f"{r['from_postings']}"
            for r in cached
        ] + [
            f"posting {r['seq']}/{r['leg']} on {r['account_id']} says balance after "
            f"{r['balance_after_minor']}, running sum is {r['running']}"
            for r in running
        ]
        count = await audit.account_count()
        report.checks.append(
            Check(
                "cached_balances",
                not problems,
                "; ".join(problems[:5])
                if problems
                else f"{count} balances equal the sums of their postings",
            )
        )
    return report
