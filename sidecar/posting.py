"""The posting path: one writer per partition turns queued commands into committed batches.

A writer takes what is queued (up to ``batch_commands_max``, waiting ``batch_linger_ms`` once
for more), plans the whole batch in memory with ``domain.ledger.plan_batch`` and commits it in
one round trip. Callers await their own result. A hot account costs no more than a cold one:
its postings in a batch are netted into one balance update.

Guarantees (tests/integration/test_posting.py, tests/integration/test_bank.py):
- Every submitted command gets exactly one answer: its outcome, or a SidecarError.
- One bad command never aborts its batch: it gets its own error, the others commit.
- A plan made from stale balances (another writer, another process) is never committed: the
  store refuses it, the writer reloads those accounts and replans, a bounded number of times.
- A key decided meanwhile by someone else is replayed, not decided twice.
- On an ambiguous failure (the connection broke during commit) the caller gets a retryable
  error and the writer forgets what it cached; retrying the same key returns what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.config import LedgerSettings
from sidecar.domain.ledger import (
    Account,
    AccountState,
    BatchPlan,
    Command,
    LedgerView,
    OpenAccount,
    Result,
    Reversal,
    Transfer,
    TransferRecord,
    keys_needed,
    plan_batch,
)
from sidecar.domain.outcome import AccountOutcome, TransferOutcome
from sidecar.errors import (
    AccountsTaken,
    KeysTaken,
    LedgerBusy,
    LedgerClosed,
    PlanStale,
    SidecarError,
)
from sidecar.ports import LedgerStore

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    batches: int = 0
    commands: int = 0
    events: int = 0
    replans: int = 0
    failed_batches: int = 0
    largest_batch: int = 0


@dataclass(slots=True)
class _Pending:
    command: Command
    future: asyncio.Future[Result]


class _AccountCache:
    """Accounts and the balances this writer last committed, least recently used evicted first.

    A cached balance may be stale if another writer moved it; the store then refuses the plan
    and the entry is evicted, so the cache can only cost a retry, never correctness.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, AccountState] = OrderedDict()

    def get(self, account_id: str) -> AccountState | None:
        state = self._items.get(account_id)
        if state is not None:
            self._items.move_to_end(account_id)
        return state

    def put(self, state: AccountState) -> None:
        self._items[state.account.id] = state
        self._items.move_to_end(state.account.id)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def evict(self, account_ids: object) -> None:
        for account_id in account_ids:  # type: ignore[attr-defined]
            self._items.pop(account_id, None)

    def clear(self) -> None:
        self._items.clear()


class PostingWriter:
    """One partition's writer. Owned by ``Ledger``, which starts and drains it."""

    def __init__(self, store: LedgerStore, settings: LedgerSettings, name: str = "p0") -> None:
        self.name = name
        self.stats = WriterStats()
        self._store = store
        self._settings = settings
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(settings.queue_commands_max)
        self._cache = _AccountCache(settings.account_cache_max)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"posting-writer-{self.name}")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Take no new commands, finish the queued ones within ``timeout_s``, then cancel."""
        self._closing = True
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(LedgerClosed("the ledger stopped before posting"))
            self._queue.task_done()

    def submit(self, command: Command) -> asyncio.Future[Result]:
        if self._closing or self._task is None:
            raise LedgerClosed("the posting writer is not running")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(command, future))
        except asyncio.QueueFull:
            raise LedgerBusy(
                f"posting queue {self.name} is full ({self._settings.queue_commands_max})"
            ) from None
        return future

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._drain_into(batch)
            if len(batch) < self._settings.batch_commands_max and self._settings.batch_linger_ms:
                await asyncio.sleep(self._settings.batch_linger_ms / 1000)
                self._drain_into(batch)
            try:
                await self._process(batch)
            except Exception as exc:  # never let the writer die with callers waiting
                log.exception("posting batch failed unexpectedly", extra={"event": "batch_failed"})
                self._deliver_error(batch, LedgerBusy(f"batch failed: {exc!r}"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _drain_into(self, batch: list[_Pending]) -> None:
        while len(batch) < self._settings.batch_commands_max:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _process(self, batch: list[_Pending]) -> None:
        commands = [p.command for p in batch]
        load_all_keys = False
        for attempt in range(self._settings.stale_retries_max + 1):
            plan: BatchPlan | None = None
            try:
                view = await self._view(commands, load_all_keys)
                plan = plan_batch(view, commands)
                if not load_all_keys and any(isinstance(r, SidecarError) for r in plan.results):
                    # An error may hide a replay or a conflict: the key was assumed new and
                    # not loaded. Decide again knowing every key (costs a read, only on errors).
                    load_all_keys = True
                    view = await self._view(commands, load_all_keys)
                    plan = plan_batch(view, commands)
                if plan.is_empty:
                    results = plan.results
                else:
                    first_seq = await self._store.commit(plan)
                    results = plan.with_first_seq(first_seq)
                    self._remember(plan, commands)
            except PlanStale as exc:
                self._cache.evict(exc.account_ids or (plan.balances if plan else ()))
            except KeysTaken:
                load_all_keys = True
            except AccountsTaken:
                self._cache.evict(plan.opened if plan else ())
                load_all_keys = True
            except SidecarError as exc:
                # unreachable database, or a write the database refused: the outcome of the
                # commit is unknown to us, so forget balances and let callers retry by key
                self._cache.clear()
                self.stats.failed_batches += 1
                self._deliver_error(batch, exc)
                return
            else:
                self._deliver(batch, results)
                self.stats.batches += 1
                self.stats.commands += len(batch)
                self.stats.events += len(plan.events)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                return
            self.stats.replans += 1
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        self.stats.failed_batches += 1
        self._deliver_error(
            batch,
            LedgerBusy(
                f"balances kept changing under {self._settings.stale_retries_max} replans; retry"
            ),
        )

    async def _view(self, commands: Sequence[Command], load_all_keys: bool) -> LedgerView:
        account_ids, keys = keys_needed(commands)
        # Keys are assumed new (the common case) unless a commit said otherwise; reversal
        # targets are always loaded since the plan needs their postings.
        wanted_keys = (
            keys if load_all_keys else {c.reverses for c in commands if isinstance(c, Reversal)}
        )
        accounts: dict[str, AccountState] = {}
        missing: set[str] = set()
        for account_id in account_ids:
            state = self._cache.get(account_id)
            if state is None:
                missing.add(account_id)
            else:
                accounts[account_id] = state
        transfers: dict[str, TransferRecord] = {}
        if missing or wanted_keys:
            loaded = await self._store.load(missing, wanted_keys)
            for state in loaded.accounts.values():
                self._cache.put(state)
            accounts.update(loaded.accounts)
            transfers.update(loaded.transfers)
        return LedgerView(accounts=accounts, transfers=transfers)

    def _remember(self, plan: BatchPlan, commands: Sequence[Command]) -> None:
        opened: dict[str, Account] = {
            c.account.id: c.account for c in commands if isinstance(c, OpenAccount)
        }
        for account_id, change in plan.balances.items():
            state = self._cache.get(account_id)
            account = state.account if state is not None else opened.get(account_id)
            if account is not None:
                self._cache.put(AccountState(account, change.after_minor))

    @staticmethod
    def _deliver(batch: Sequence[_Pending], results: Sequence[Result]) -> None:
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, SidecarError):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    @staticmethod
    def _deliver_error(batch: Sequence[_Pending], error: SidecarError) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)


def route_key(command: Command) -> str:
    """Commands on the same first account go to the same partition, in submission order."""
    if isinstance(command, OpenAccount):
        return command.account.id
    if isinstance(command, Transfer):
        return command.legs[0].account_id
    return command.reverses


class Ledger:
    """The ledger's service surface: open accounts, post transfers and reversals, read balances."""

    def __init__(self, store: LedgerStore, settings: LedgerSettings) -> None:
        self.store = store
        self.writers = [PostingWriter(store, settings, f"p{i}") for i in range(settings.partitions)]

    async def start(self) -> None:
        for writer in self.writers:
            writer.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        await asyncio.gather(*(w.stop(timeout_s) for w in self.writers))

    async def __aenter__(self) -> Ledger:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _writer(self, command: Command) -> PostingWriter:
        if len(self.writers) == 1:
            return self.writers[0]
        return self.writers[zlib.crc32(route_key(command).encode()) % len(self.writers)]

    async def submit(self, command: Command) -> Result:
        """Post one command and wait for its result; errors are raised, outcomes returned."""
        return await self._writer(command).submit(command)

    async def open_account(self, account: Account) -> AccountOutcome:
        result = await self.submit(OpenAccount(account))
        assert isinstance(result, AccountOutcome)
        return result

    async def transfer(self, transfer: Transfer) -> TransferOutcome:
        result = await self.submit(transfer)
        assert isinstance(result, TransferOutcome)
        return result

    async def reverse(self, reversal: Reversal) -> TransferOutcome:
        result = await self.submit(reversal)
        assert isinstance(result, TransferOutcome)
        return result

    async def balance(self, account_id: str, at_seq: int | None = None) -> int | None:
        return await self.store.balance(account_id, at_seq)

    @property
    def stats(self) -> WriterStats:
        total = WriterStats()
        for w in self.writers:
            s = w.stats
            total.batches += s.batches
            total.commands += s.commands
            total.events += s.events
            total.replans += s.replans
            total.failed_batches += s.failed_batches
            total.largest_batch = max(total.largest_batch, s.largest_batch)
        return total
