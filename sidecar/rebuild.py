"""``ledger rebuild``: replay the event log into a fresh schema and compare with the live ledger.

The live log is read in pages and folded (``domain.replay.Fold`` checks every event against
the state before it); each page is written to the fresh schema through the same ``post_batch``
the posting path uses, so the rebuilt log recomputes every hash itself.

Guarantees (tests/integration/test_rebuild.py):
- A sound ledger rebuilds to identical balances for every account and the identical chain
  head (seq and hash), and doing it again gives the same answer.
- A log that does not replay (an event contradicting the ones before it) fails the rebuild,
  naming the event's seq.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.config import DatabaseSettings
from sidecar.db.connect import connection
from sidecar.db.ledger_audit import PostgresLedgerAudit, events_page, log_head
from sidecar.db.ledger_store import post_batch
from sidecar.db.migrate import drop_schema, migrate
from sidecar.domain.replay import Fold, FoldError
from sidecar.errors import SidecarError

PAGE_EVENTS = 5000

Progress = Callable[[int, int], None]


@dataclass
class RebuildReport:
    live_schema: str
    rebuilt_schema: str
    events: int = 0
    accounts: int = 0
    seconds: float = 0.0
    live_head: tuple[int, str] = (0, "")
    rebuilt_head: tuple[int, str] = (0, "")
    balance_differences: list[str] = field(default_factory=list)
    fold_error: str | None = None

    @property
    def identical(self) -> bool:
        return (
            self.fold_error is None
            and not self.balance_differences
            and self.live_head == self.rebuilt_head
        )

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.identical,
            "live_schema": self.live_schema,
            "rebuilt_schema": self.rebuilt_schema,
            "events": self.events,
            "accounts": self.accounts,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "live_head": {"seq": self.live_head[0], "hash": self.live_head[1]},
            "rebuilt_head": {"seq": self.rebuilt_head[0], "hash": self.rebuilt_head[1]},
            "balance_differences": self.balance_differences,
            "fold_error": self.fold_error,
        }


async def rebuild(
    settings: DatabaseSettings,
    target_schema: str | None = None,
    *,
    keep: bool = False,
    progress: Progress | None = None,
) -> RebuildReport:
    live = settings.schema
    target = target_schema or f"{live}_rebuild"
    if target == live:
        raise ValueError("the rebuild schema must differ from the live one")
    report = RebuildReport(live, target)
    target_settings = replace(settings, schema=target)
    await drop_schema(settings, target)
    await migrate(target_settings)
    started = time.perf_counter()
    try:
        async with connection(settings) as src, connection(target_settings) as dst:
            head = await log_head(src)
            report.live_head = (head["seq"], bytes(head["hash"]).hex())
            fold = Fold()
            last = 0
            while True:
                page = await events_page(src, last, PAGE_EVENTS)
                if not page:
                    break
                before = {a: s.balance_minor for a, s in fold.accounts.items()}
                touched: set[str] = set()
                try:
                    for event in page:
                        doc = fold.apply(event["seq"], event["content"])
                        if doc["type"] == "account_opened":
                            touched.add(doc["account"])
                        for posting in doc.get("postings", ()):
                            touched.add(posting["account"])
                except FoldError as exc:
                    report.fold_error = str(exc)
                    break
                ids = sorted(touched)
                try:
                    await post_batch(
                        dst,
                        [e["content"] for e in page],
                        ids,
                        [before.get(i, 0) for i in ids],
                        [fold.accounts[i].balance_minor for i in ids],
                    )
                except SidecarError as exc:
                    report.fold_error = (
                        f"events {page[0]['seq']}..{page[-1]['seq']} refused on rebuild: {exc}"
                    )
                    break
                last = page[-1]["seq"]
                report.events += len(page)
                if progress is not None:
                    progress(last, head["seq"])
            report.seconds = time.perf_counter() - started
            rebuilt_head = await log_head(dst)
            report.rebuilt_head = (rebuilt_head["seq"], bytes(rebuilt_head["hash"]).hex())
            audit = PostgresLedgerAudit(src)
            report.accounts = await audit.account_count()
            for row in await audit.compare_balances(live, target):
                report.balance_differences.append(
                    f"{row['id']}: live {row['live']}, rebuilt {row['rebuilt']}"
                )
            folded = {a: s.balance_minor for a, s in fold.accounts.items()}
            if report.fold_error is None and folded != await audit.balances():
                report.balance_differences.append("folded balances differ from the live ones")
    finally:
        if not keep:
            await drop_schema(settings, target)
    return report
