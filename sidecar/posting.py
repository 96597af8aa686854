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
from collections import Counter, OrderedDict
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
from sidecar.domain.mirror import Checkpoint
from sidecar.domain.outcome import AccountOutcome, TransferOutcome
from sidecar.errors import (
    AccountsTaken,
    KeysTaken,
    LedgerBusy,
    LedgerClosed,
    LedgerUnavailable,
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
    checkpoint: Checkpoint | None = None


def checkpoints_of(batch: Sequence[_Pending]) -> list[Checkpoint]:
    """The furthest checkpoint per consumer and partition among the batch's commands."""
    furthest: dict[tuple[str, int], Checkpoint] = {}
    for pending in batch:
        c = pending.checkpoint
        if c is not None:
            key = (c.consumer, c.partition)
            if key not in furthest or furthest[key].seq < c.seq:
                furthest[key] = c
    return list(furthest.values())


class _AccountCache:
    """Accounts and the balances this writer last committed, least recently used evicted first.

    A cached balance may be stale if another writer moved it; the store then refuses the plan
    and the entry is evicted, so the cache can only cost a retry, never correctness.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, AccountState] = OrderedDict()

    def get(self, account_id: str) -> AccountState | None:
        # every account a batch touches is put back after it commits, which is what keeps
        # it recent; refreshing on each read too cost more than it saved
        return self._items.get(account_id)

    def touch(self, account_id: str) -> None:
        self._items.move_to_end(account_id)

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


class _Hazards:
    """What the batches in flight may still decide: a later batch must not assume their outcome.

    Balances need no such care (a plan built on an in-flight batch's balances is refused as
    stale if that batch fails), but idempotency keys, reversal targets and newly opened
    accounts do: a command that names one of them waits for the batch in flight to settle.
    """

    def __init__(self) -> None:
        self._keys: Counter[str] = Counter()
        self._reversed: Counter[str] = Counter()
        self._opened: Counter[str] = Counter()

    def _names(self, command: Command) -> tuple[str | None, str | None, str | None]:
        if isinstance(command, OpenAccount):
            return None, None, command.account.id
        if isinstance(command, Reversal):
            return command.key, command.reverses, None
        return command.key, None, None

    def add(self, commands: Sequence[Command]) -> None:
        for command in commands:
            key, reversed_, opened = self._names(command)
            if key:
                self._keys[key] += 1
            if reversed_:
                self._reversed[reversed_] += 1
            if opened:
                self._opened[opened] += 1

    def remove(self, commands: Sequence[Command]) -> None:
        for command in commands:
            key, reversed_, opened = self._names(command)
            if key:
                self._keys[key] -= 1
                if not self._keys[key]:
                    del self._keys[key]
            if reversed_:
                self._reversed[reversed_] -= 1
                if not self._reversed[reversed_]:
                    del self._reversed[reversed_]
            if opened:
                self._opened[opened] -= 1
                if not self._opened[opened]:
                    del self._opened[opened]

    def blocks(self, command: Command) -> bool:
        if not (self._keys or self._opened):
            return False
        if isinstance(command, OpenAccount):
            return command.account.id in self._opened
        if command.key in self._keys:
            return True
        if isinstance(command, Reversal):
            return command.reverses in self._keys or command.reverses in self._reversed
        return any(leg.account_id in self._opened for leg in command.legs)


class PostingWriter:
    """One partition's writer. Owned by ``Ledger``, which starts and drains it.

    With ``pipeline_depth`` 2 the writer plans batch N+1 on the balances batch N leaves and
    sends it while N commits: Python's planning and PostgreSQL's writing overlap. The database
    commits them one at a time (``post_batch`` takes the log head first) and refuses N+1 as
    stale if N failed, or if N+1 got there first; N+1 is then decided again once every batch
    launched before it has settled, so commands are decided in the order they came.
    """

    def __init__(self, store: LedgerStore, settings: LedgerSettings, name: str = "p0") -> None:
        self.name = name
        self.stats = WriterStats()
        self._store = store
        self._settings = settings
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(settings.queue_commands_max)
        self._cache = _AccountCache(settings.account_cache_max)
        self._hazards = _Hazards()
        self._planning = asyncio.Lock()
        self._in_flight: dict[asyncio.Task[None], int] = {}  # commit task -> launch number
        self._launches = 0
        self._replanning = 0  # refused batches not yet decided again: nothing new launches
        self._replanned = asyncio.Event()
        self._gathering: list[_Pending] = []  # taken from the queue, not yet owned by a commit
        self._waiting: list[_Pending] = []  # taken from the queue, deferred behind a hazard
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
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        closed = LedgerClosed("the ledger stopped before posting")
        for held in (self._gathering, self._waiting):
            self._deliver_error(held, closed)
            self._done(held)
        self._gathering, self._waiting = [], []
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            self._deliver_error([pending], closed)
            self._queue.task_done()

    def submit(
        self, command: Command, checkpoint: Checkpoint | None = None
    ) -> asyncio.Future[Result]:
        if self._closing or self._task is None:
            raise LedgerClosed("the posting writer is not running")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(command, future, checkpoint))
        except asyncio.QueueFull:
            raise LedgerBusy(
                f"posting queue {self.name} is full ({self._settings.queue_commands_max})"
            ) from None
        return future

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch, self._waiting = self._waiting, []
            self._gathering = batch
            if not batch:
                batch.append(await self._queue.get())
            self._drain_into(batch)
            if len(batch) < self._settings.batch_commands_max and self._settings.batch_linger_ms:
                await asyncio.sleep(self._settings.batch_linger_ms / 1000)
                self._drain_into(batch)
            # the batch ends before the first command that must wait for one in flight: what
            # follows waits with it, so commands are still decided in the order they came
            cut = next(
                (i for i, p in enumerate(batch) if self._hazards.blocks(p.command)), len(batch)
            )
            ready, self._waiting = batch[:cut], batch[cut:]
            self._gathering = ready
            while ready and self._replanning:  # a refused batch goes first, decided afresh
                await self._replanned.wait()
            if ready:
                await self._launch(ready)
                self._gathering = []  # answered, or owned by its commit task
                while len(self._in_flight) >= self._settings.pipeline_depth:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            elif self._in_flight:  # everything waits behind a batch in flight: let one settle
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            else:  # pragma: no cover - hazards come only from batches in flight
                log.error("posting hazards without a batch in flight", extra={"event": "bug"})
                self._hazards = _Hazards()

    def _drain_into(self, batch: list[_Pending]) -> None:
        while len(batch) < self._settings.batch_commands_max:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _launch(self, batch: list[_Pending]) -> None:
        """Plan ``batch`` now and commit it in the background; its callers get their answers."""
        commands = [p.command for p in batch]
        try:
            async with self._planning:
                plan = await self._plan(commands, load_all_keys=False)
                if plan.is_empty:
                    self._settle(batch, plan, plan.results)
                    self._done(batch)
                    return
                self._remember(plan, commands)  # optimistic: the next plan builds on it
                self._hazards.add(commands)
        except SidecarError as exc:
            self._cache.clear()
            self.stats.failed_batches += 1
            self._deliver_error(batch, exc)
            self._done(batch)
            return
        except Exception as exc:  # never let the writer die with callers waiting
            log.exception("planning a batch failed unexpectedly", extra={"event": "batch_failed"})
            self._deliver_error(batch, LedgerBusy(f"batch failed: {exc!r}"))
            self._done(batch)
            return
        self._launches += 1
        task = asyncio.create_task(
            self._commit(batch, plan, self._launches), name=f"commit-{self.name}"
        )
        self._in_flight[task] = self._launches
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)

    async def _commit(self, batch: list[_Pending], plan: BatchPlan, number: int) -> None:
        commands = [p.command for p in batch]
        try:
            try:
                first_seq = await self._store.commit(plan, checkpoints_of(batch))
            except (PlanStale, KeysTaken, AccountsTaken) as exc:
                # refused, nothing written: forget what the plan assumed and decide again, after
                # every batch launched before this one, so that none is overtaken
                self._cache.evict(plan.balances)
                if isinstance(exc, PlanStale):
                    self._cache.evict(exc.account_ids)
                self.stats.replans += 1
                self._replanning += 1
                self._replanned.clear()
                try:
                    earlier = [t for t, n in self._in_flight.items() if n < number]
                    if earlier:
                        await asyncio.wait(earlier)
                    async with self._planning:
                        await self._process(
                            batch, load_all_keys=not isinstance(exc, PlanStale), attempt=1
                        )
                finally:
                    self._replanning -= 1
                    if not self._replanning:
                        self._replanned.set()
            except SidecarError as exc:
                # the outcome is unknown to us: forget balances and let callers retry by key
                self._cache.clear()
                self.stats.failed_batches += 1
                self._deliver_error(batch, exc)
            else:
                self._settle(batch, plan, plan.with_first_seq(first_seq))
        except asyncio.CancelledError:
            # stop() gave up waiting: the commit may or may not have happened
            self._deliver_error(
                batch,
                LedgerUnavailable(
                    "the ledger stopped while this batch was committing; its outcome is "
                    "unknown: retry with the same key to learn it"
                ),
            )
            raise
        except Exception as exc:  # never leave callers waiting
            log.exception("posting batch failed unexpectedly", extra={"event": "batch_failed"})
            self._deliver_error(batch, LedgerBusy(f"batch failed: {exc!r}"))
        finally:
            self._hazards.remove(commands)
            self._done(batch)

    async def _plan(self, commands: Sequence[Command], *, load_all_keys: bool) -> BatchPlan:
        view = await self._view(commands, load_all_keys)
        plan = plan_batch(view, commands)
        if not load_all_keys and any(isinstance(r, SidecarError) for r in plan.results):
            # An error may hide a replay or a conflict: the key was assumed new and not
            # loaded. Decide again knowing every key (costs a read, only on errors).
            view = await self._view(commands, load_all_keys=True)
            plan = plan_batch(view, commands)
        return plan

    async def _process(
        self, batch: list[_Pending], *, load_all_keys: bool = False, attempt: int = 0
    ) -> None:
        """Plan and commit ``batch`` one attempt after another until it is decided."""
        commands = [p.command for p in batch]
        while attempt <= self._settings.stale_retries_max:
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
            plan: BatchPlan | None = None
            try:
                plan = await self._plan(commands, load_all_keys=load_all_keys)
                if plan.is_empty:
                    results = plan.results
                else:
                    first_seq = await self._store.commit(plan, checkpoints_of(batch))
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
                self._cache.clear()
                self.stats.failed_batches += 1
                self._deliver_error(batch, exc)
                return
            else:
                self._settle(batch, plan, results)
                return
            self.stats.replans += 1
            attempt += 1
        self.stats.failed_batches += 1
        self._deliver_error(
            batch,
            LedgerBusy(
                f"balances kept changing under {self._settings.stale_retries_max} replans; retry"
            ),
        )

    def _settle(self, batch: list[_Pending], plan: BatchPlan, results: Sequence[Result]) -> None:
        self._deliver(batch, results)
        if plan.is_empty:
            return
        self.stats.batches += 1
        self.stats.commands += len(batch)
        self.stats.events += len(plan.events)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    def _done(self, batch: Sequence[_Pending]) -> None:
        for _ in batch:
            self._queue.task_done()

    async def _view(self, commands: Sequence[Command], load_all_keys: bool) -> LedgerView:
        account_ids, keys = keys_needed(commands)
        # Keys are assumed new (the common case) unless a commit said otherwise; reversal
        # targets are always loaded since the plan needs their postings.
        # (a reversal's own key too: reversing an already reversed transfer decides nothing
        # new, so nothing would reach the database to say that key belongs to another entry)
        wanted_keys = (
            keys
            if load_all_keys
            else {k for c in commands if isinstance(c, Reversal) for k in (c.reverses, c.key)}
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
        cache = self._cache
        for account_id, (before, after) in plan.balances.items():
            state = cache.get(account_id)
            if state is None:
                account = opened.get(account_id)
                if account is not None:
                    cache.put(AccountState(account, after))
            elif after != before or state.balance_minor != after:
                cache.put(AccountState(state.account, after))
            else:
                cache.touch(account_id)

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

    async def submit(self, command: Command, checkpoint: Checkpoint | None = None) -> Result:
        """Post one command and wait for its result; errors are raised, outcomes returned."""
        return await self._writer(command).submit(command, checkpoint)

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
