"""The shadow applier: mirror stream -> ledger commands -> comparisons, one group at a time.

The applier reads the stream in seq order (so in order on every partition), pairs each
request's intent with its outcome, turns the exchange into a ledger command through the route
mapping, posts it through the ledger core, and compares the two systems' results. Exchanges
are applied in the order their legacy answers were recorded, the best witness of the order the
legacy service took; overlapping ones on one account may be taken in another order
(``domain.shadow.serialise``).

Guarantees (tests/integration/test_applier.py, test_shadow.py, test_stream_replay.py):
- A group is planned once (the ledger core's ``plan_batch``) and committed in one transaction:
  its ledger writes with the ``ledger`` consumer's offsets, its balance reads, its comparisons
  with the ``compare`` consumer's offsets. A failure anywhere writes nothing and the group is
  read again; after a crash the applier resumes after the last committed group. Nothing is
  lost, nothing applied twice.
- An exchange is applied only once every request that overlapped it has been answered (or has
  stayed unanswered past 4x ``in_doubt_after_s``), so live and replayed runs group and order
  the same exchanges the same way.
- An outcome whose intent is not in the stream (capture dropped it), or whose request cannot
  be turned into a ledger command, is recorded as ``skipped`` with the reason: counted, not lost.
- A balance read is compared with the ledger's balance at the same stream position: after
  every exchange applied before it, before any applied after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from sidecar.config import ApplierSettings
from sidecar.db.comparison_store import BalanceReader, PostgresComparisonStore
from sidecar.domain.bootstrap import (
    BOOTSTRAP_ROUTE,
    migration_account,
    opening_commands,
    opening_for,
    plan_accounts,
    stand_in,
)
from sidecar.domain.comparison import (
    Comparison,
    Difference,
    DivergenceKind,
    Outcome,
    SideStatus,
    compare,
    legacy_decimal,
    redacted,
)
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
    keys_needed,
    plan_batch,
)
from sidecar.domain.mapping import (
    MISSING,
    CompareKind,
    CompareRule,
    MatchedRoute,
    Operation,
    RouteTable,
)
from sidecar.domain.mirror import Checkpoint, MirrorEvent, RecordKind
from sidecar.domain.outcome import AccountOutcome, TransferOutcome
from sidecar.domain.shadow import (
    ComparisonRecord,
    Overlap,
    Pending,
    Span,
    body_of,
    debit_account,
    effects,
    exchange_of,
    explained_by_order,
    ledger_result,
    legacy_result,
    order_dependent,
    serialise,
)
from sidecar.domain.translate import (
    BalanceRead,
    Exchange,
    LedgerRequest,
    legacy_side,
    rejection_outcome,
    to_ledger,
)
from sidecar.errors import (
    InvalidAmount,
    InvalidCommand,
    ShadowMismatch,
    SidecarError,
)
from sidecar.mapping_file import resolve_hook
from sidecar.ports import LedgerStore, MirrorLog
from sidecar.telemetry.metrics import ShadowMetrics
from sidecar.telemetry.tracing import remote_parent

#: a route hook: (the exchange, its path parameters) -> field values the file cannot say
Hook = Callable[[Exchange, Mapping[str, str]], Mapping[str, Any]]

log = logging.getLogger(__name__)

LEDGER_CONSUMER = "ledger"
COMPARE_CONSUMER = "compare"
#: overlapping exchanges remembered per account, to explain differences by order
RECENT_PER_ACCOUNT = 32
#: transfer keys whose accounts are remembered, for the reversals that name them
KEYS_REMEMBERED_MAX = 100_000
ANY_ACCOUNT = "*"  # a reversal touches its target's accounts, unknown until it is decided
PENDING_INTENTS_MAX = 100_000
READ_EVENTS_MAX = 200_000
ACCOUNT_CACHE_MAX = 200_000
HOLD_IN_DOUBT_FACTOR = 4
#: events before the resume point read again to remember recent movements per account
WARM_EVENTS = 4000
DEFAULT_RULES = {"rejection": CompareRule(CompareKind.EXACT)}


#: the outcome seq of an exchange not answered yet: after everything
UNANSWERED = 2**62


@dataclass
class ApplierStats:
    groups: int = 0
    compared: int = 0
    retries: int = 0


@dataclass(slots=True)
class _Item:
    """One exchange of the group being applied."""

    intent: MirrorEvent | None
    outcome: MirrorEvent
    matched: MatchedRoute | None = None
    exchange: Exchange | None = None
    request: LedgerRequest | None = None
    legacy_status: SideStatus = SideStatus.ERROR
    legacy_code: str | None = None
    skip: str | None = None
    bootstrap: str | None = None  # "plan", "read" or "snapshot" for a bootstrap exchange
    plan: dict[str, Account] = field(default_factory=dict)  # a plan's accounts
    opening: list[Command] = field(default_factory=list)  # what a bootstrap exchange opens
    command: Command | None = None  # what is posted: the request, or its stand-in
    result: Result | int | None = None
    record: ComparisonRecord | None = None

    @property
    def answered_in_place(self) -> bool:
        """Whether its outcome record's place in the stream is when legacy answered (not an
        answer learned late, in doubt, nor a listing whose instant is unknown)."""
        return not (
            self.intent is not None
            and (
                "in_doubt" in self.outcome.record.content
                or self.intent.record.content.get("bootstrap") == "plan"
            )
        )

    @property
    def span(self) -> Span:
        start = self.intent.seq if self.intent is not None else self.outcome.seq
        if not self.answered_in_place:
            # an answer learned late (in doubt), or a listing whose instant is unknown within
            # its span: placed right after its intent, before anything that overlapped it,
            # whose outcome is then read against it
            return Span(start, start + 1)
        return Span(start, self.outcome.seq)

    @property
    def request_id(self) -> str:
        return self.outcome.record.request_id


class Applier:
    def __init__(
        self,
        stream: MirrorLog,
        store: LedgerStore,
        comparisons: PostgresComparisonStore,
        routes: RouteTable,
        settings: ApplierSettings,
        partitions: int,
        metrics: ShadowMetrics | None = None,
        tracer: trace.Tracer | None = None,
        sensitive_fields: Iterable[str] = (),
    ) -> None:
        self.stream = stream
        #: fields whose values never reach a stored comparison or a log line
        self.sensitive = frozenset(sensitive_fields)
        self.metrics = metrics
        self.tracer = tracer or trace.NoOpTracer()
        self.store = store
        self.comparisons = comparisons
        self.routes = routes
        #: each route's hook (what its mapping file cannot say), resolved once
        self.hooks: dict[str, Hook] = {
            r.name: resolve_hook(r.hook, routes.source, f"route {r.name!r} hook")
            for r in routes.routes
            if r.hook is not None
        }
        self.settings = settings
        self.partitions = partitions
        self.stats = ApplierStats()
        self._cursor = 0
        self._done: dict[int, int] = {}  # partition -> compared up to (from the offsets)
        self._pending: OrderedDict[str, MirrorEvent] = OrderedDict()  # intents awaiting outcome
        self._held: dict[str, MirrorEvent] = {}  # intents of answered exchanges held back
        self._read_to_end = True  # the last read reached the stream's head
        #: account -> (span, overlap) of recently applied exchanges
        self._recent: dict[str, deque[tuple[Span, Overlap]]] = {}
        self._touched: dict[str, deque[Span]] = {}  # account -> spans of requests moving it
        #: transfer key -> its accounts, for the transfers seen lately: a reversal's
        #: comparison names them even when the ledger never posted what it reverses
        self._accounts_by_key: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        #: account -> the latest outcome seq its bounded windows forgot
        self._forgotten: dict[str, int] = {}
        self._seen: dict[str, float] = {}  # pending intent -> when first seen unanswered
        self._limit = settings.chunk_events_max
        self._ledger_position = 0  # the ledger seq the last compared group left
        self._accounts: dict[str, AccountState] = {}  # as the last committed plans left them
        #: replaying a recorded stream up to this seq (None: following a live one), and the
        #: requests of that stream with no answer in it
        self.replaying_to: int | None = None
        self.never_answered: frozenset[str] = frozenset()
        self._bootstrapped = not settings.require_bootstrap
        self._planned: dict[str, Account] = {}  # accounts a bootstrap plan named
        self._awaiting: dict[str, Account] = {}  # of those, not yet opened at their read
        #: the database's clock minus this host's (the stream's times are the database's),
        #: kept by the health sampler, so the shadow lag is not skewed by the two clocks
        self.clock_offset_s = 0.0
        self._group_seconds = 0.0  # the last group's transaction
        self._group_ns = (0, 0)  # its start and end, for spans (ns since the epoch)
        self._compare_ns = (0, 0)
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._ready = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self._resume()
        self._started = True
        self._task = asyncio.create_task(self._run(), name="shadow-applier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ShadowMismatch):
                await self._task  # a strict-mode stop was raised to catch_up already
            self._task = None
        self._started = False

    async def wait(self) -> None:
        """Until the applier's loop ends, which it only does by failing: raises why."""
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def cursor(self) -> int:
        return self._cursor

    async def _resume(self) -> None:
        """Start after the last committed group: in-memory state is rebuilt from the stream."""
        # the offsets live beside the comparisons they commit with (a replay reads one
        # schema's stream into another's ledger)
        self._done = {
            p: await self.comparisons.offset(COMPARE_CONSUMER, p) for p in range(self.partitions)
        }
        self._cursor = min(self._done.values(), default=0)
        self._accounts.clear()  # anything may have happened meanwhile: read the ledger again
        self._pending.clear()
        self._held = {}
        self._seen.clear()
        self._limit = self.settings.chunk_events_max
        self._ledger_position = (await self.store.head()).seq
        await self._restore_bootstrap()
        await self._warm()

    async def _restore_bootstrap(self) -> None:
        """The bootstrap state as of the resume point: from the recorded comparisons, which
        commit with the offset (the ledger may hold a little more, replayed by key)."""
        state = await self.comparisons.bootstrap_state()
        if state.plan_request_id is None:
            self._bootstrapped = not self.settings.require_bootstrap or state.snapshot
            return
        self._bootstrapped = True
        found = await self.stream.outcomes([state.plan_request_id])
        outcome = found.get(state.plan_request_id)
        if outcome is None:  # pragma: no cover - a recorded plan is in the stream
            return
        self._planned = plan_accounts(body_of(outcome.record.content), self.routes.currencies)
        # a group's ledger writes commit with its comparisons: the ledger is the state as of
        # the resume point, so what it holds is open
        held = set((await self.store.load(self._planned, ())).accounts)
        self._awaiting = {k: v for k, v in self._planned.items() if k not in held}

    async def _warm(self) -> None:
        """Remember the movements just before the resume point, as if never stopped: they
        explain differences by order for the exchanges right after it."""
        self._recent.clear()
        self._touched.clear()
        start = max(0, self._cursor - WARM_EVENTS)
        # what ended before the events read again is forgotten, for every account
        self._forgotten = {ANY_ACCOUNT: start}
        events = await self.stream.read(start, self._cursor - start)
        intents = {e.record.request_id: e for e in events if e.record.kind is RecordKind.INTENT}
        for event in events:
            if event.record.kind is not RecordKind.OUTCOME or event.record.route == BOOTSTRAP_ROUTE:
                continue
            item = _Item(intents.get(event.record.request_id), event)
            if item.intent is None:
                continue
            item.exchange = exchange_of(item.intent.record, event.record)
            matched = self.routes.match(item.exchange.method, item.exchange.path)
            if matched is None:
                continue
            try:
                request = to_ledger(matched, item.exchange, self.routes.currencies)
            except InvalidCommand:
                continue
            self._touch(item.span, request)
            if legacy_side(matched.route, item.exchange)[0] is not SideStatus.ACCEPTED:
                continue
            for account, effect in effects(request).items():
                # whether the ledger made it is not known here: an explanation stays possible
                self._keep(
                    self._recent, account, (item.span, Overlap(effect, legacy_accepted=True))
                )

    async def _run(self) -> None:
        idle = self.settings.idle_poll_ms / 1000
        interval = self.settings.group_interval_ms / 1000
        loop = asyncio.get_running_loop()
        backoff = idle
        resume = False
        while True:
            try:
                if resume:  # start again from what was committed, as after a restart
                    await self._resume()
                    resume = False
                started = loop.time()
                applied = await self.apply_once()
            except ShadowMismatch:
                raise
            except SidecarError as exc:
                self.stats.retries += 1
                log.warning(
                    "shadow applier: group not applied, reading it again",
                    extra={"event": "applier_retry", "code": exc.code, "error": exc.message},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                resume = True
                continue
            backoff = idle
            if applied == 0:
                await asyncio.sleep(idle)
            elif self._read_to_end:  # keeping up: let the next group gather
                await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def catch_up(self, head: int | None = None, timeout_s: float = 60.0) -> None:
        """Apply until the cursor reaches ``head`` (the stream's head now, if None)."""
        target = await self.stream.head() if head is None else head
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._task is not None and self._task.done():
                self._task.result()  # raises what stopped it (a strict-mode mismatch)
                raise RuntimeError("the shadow applier has stopped")
            if self._cursor >= target:
                return
            if self._task is not None:
                await asyncio.sleep(0.01)
            else:
                await self.apply_once()
            if loop.time() > deadline:
                waiting = next(iter(self._pending.values()), None)
                raise TimeoutError(
                    f"the applier is at {self._cursor}, behind {target}; oldest unanswered "
                    f"intent: {waiting.seq if waiting else None}; reading {self._limit} events"
                )

    # --- one group -----------------------------------------------------------------------

    async def apply_once(self) -> int:
        """Read, apply, compare and record one group; returns how many events it consumed."""
        while True:
            limit = self._limit
            if self.replaying_to is not None:  # a recorded stream: nothing past its head
                limit = min(limit, self.replaying_to - self._cursor)
                if limit <= 0:
                    return 0
            events = await self.stream.read(self._cursor, limit)
            # the read reached the stream's head: the applier keeps up (not: it consumed less
            # than it read, which exchanges still in flight cause when it is behind too)
            self._read_to_end = len(events) < limit
            if not events:
                return 0
            items = await self._pair(events)
            # An exchange is applied only once every exchange that overlapped it is answered,
            # so that serialise() sees them together; the rest waits for the next group.
            cutoff = self._cutoff(events[-1].seq)
            held = [i for i in items if i.outcome.seq >= cutoff]
            # held exchanges are read again next time; until then they count, with the
            # unanswered ones, as not applied yet (whatever the window: live and replay agree)
            self._held = {i.request_id: i.intent for i in held if i.intent is not None}
            if held:
                items = [i for i in items if i.outcome.seq < cutoff]
            if not held or cutoff - 1 > self._cursor:
                break
            if len(events) < limit or self._limit >= READ_EVENTS_MAX:
                return 0  # the answer is not in the stream yet: wait for it
            self._limit = min(self._limit * 2, READ_EVENTS_MAX)  # it is further on: read more
        self._limit = self.settings.chunk_events_max
        items.sort(key=lambda i: i.span.outcome_seq)
        for item in items:
            self._understand(item)
        pendings = [Pending(i.span, i.legacy_status, i.request) for i in items]
        ordered = [items[i] for i in serialise(pendings)]
        last = min(events[-1].seq, cutoff - 1)
        records = await self._apply(ordered, last)
        self._cursor = last
        for p in range(self.partitions):
            self._done[p] = max(self._done.get(p, 0), last)
        self._remember(ordered)
        self._note(records, {i.request_id: i.outcome.recorded_at for i in ordered})
        self._trace(records, ordered)
        if self.settings.strict:
            for record in records:
                if record.comparison.outcome is Outcome.MISMATCH:
                    raise ShadowMismatch(
                        f"request {record.request_id} ({record.route}): "
                        f"{', '.join(sorted(k.value for k in record.comparison.kinds))}",
                        record,
                    )
        return sum(1 for e in events if e.seq <= last)

    def _cutoff(self, last_seq: int) -> int:
        """The first seq not yet safe to apply: the oldest intent still unanswered (one
        unanswered for longer than the in-doubt age no longer holds anything back)."""
        now = asyncio.get_running_loop().time()
        # the in-doubt resolver answers after in_doubt_after_s; past a few times that, with
        # no resolver running, the applier goes on without the answer
        patience = HOLD_IN_DOUBT_FACTOR * self.settings.in_doubt_after_s
        cutoff = last_seq + 1
        for request_id, intent in self._pending.items():
            if self.replaying_to is not None:
                # a recorded stream: hold for every answer it holds, for none it lacks
                if request_id not in self.never_answered:
                    cutoff = min(cutoff, intent.seq)
                    break
                continue
            if now - self._seen.get(request_id, now) < patience:
                cutoff = min(cutoff, intent.seq)
                break  # the dict keeps stream order: the first one is the oldest
        return cutoff

    async def _pair(self, events: Sequence[MirrorEvent]) -> list[_Item]:
        items: list[_Item] = []
        for event in events:
            record = event.record
            if record.kind is RecordKind.INTENT:
                self._pending[record.request_id] = event
                self._seen.setdefault(record.request_id, asyncio.get_running_loop().time())
                if len(self._pending) > PENDING_INTENTS_MAX:
                    gone, _ = self._pending.popitem(last=False)  # fetched again if needed
                    self._seen.pop(gone, None)
                continue
            if event.seq <= self._done.get(record.partition, 0):
                self._pending.pop(record.request_id, None)  # compared before a restart
                self._seen.pop(record.request_id, None)
                continue
            self._seen.pop(record.request_id, None)
            intent = self._pending.pop(record.request_id, None)
            if intent is None:
                intent = self._held.pop(record.request_id, None)
            items.append(_Item(intent, event))
        missing = [i.request_id for i in items if i.intent is None]
        if missing:
            found = await self.stream.intents(missing)
            for item in items:
                if item.intent is None:
                    item.intent = found.get(item.request_id)
        return items

    def _understand(self, item: _Item) -> None:
        """What the exchange was and what the legacy service did, and its ledger command."""
        if item.intent is None:
            item.skip = "the request's intent was not captured"
            return
        item.exchange = exchange_of(item.intent.record, item.outcome.record)
        resolution = item.outcome.record.content.get("in_doubt")
        if resolution in ("read", "not_processed", "unresolvable"):
            item.skip = f"in doubt, resolved: {resolution}"
            return
        if item.outcome.record.content.get("ledger_only"):
            item.skip = "ledger-only: the legacy service was not asked"
            return
        if item.outcome.record.route == BOOTSTRAP_ROUTE:
            self._understand_bootstrap(item)
            return
        if not self._bootstrapped:
            item.skip = "before the bootstrap snapshot: the snapshot holds its effect"
            return
        matched = self.routes.match(item.exchange.method, item.exchange.path)
        if matched is None or matched.route.name != item.outcome.record.route:
            item.skip = (
                f"no route of the mapping matches {item.exchange.method} {item.exchange.path}"
            )
            return
        item.matched = matched
        if _answered(item) and matched.route.operation is Operation.BALANCE:
            # the customer got the ledger's balance; legacy read it later, when delivered, so
            # the two reads see different moments: reconciliation compares balances instead
            item.skip = "a balance read the ledger answered: legacy read it later"
            return
        legacy_status, code = legacy_side(matched.route, item.exchange)
        item.legacy_status, item.legacy_code = legacy_status, code
        undelivered = item.outcome.record.content.get("error") == "legacy_undelivered"
        if legacy_status is SideStatus.ERROR and not undelivered:
            return  # nothing to apply: the legacy service did not decide (undelivered: the
            # ledger did; its result is compared with nothing, a monetary divergence)
        # a request the ledger answered first (ledger-primary) was posted from the request
        # alone: built the same way, its replay is the same command (no idempotency conflict)
        exchange = replace(item.exchange, answer=MISSING) if _answered(item) else item.exchange
        try:
            item.request = to_ledger(
                matched,
                exchange,
                self.routes.currencies,
                self._computed(matched, exchange),
            )
        except InvalidCommand as exc:
            if legacy_status is SideStatus.ACCEPTED:
                item.skip = f"accepted by legacy, but not a ledger command: {exc.message}"
            else:
                item.skip = f"refused by legacy and not a ledger command: {exc.message}"

    def _understand_bootstrap(self, item: _Item) -> None:
        assert item.exchange is not None
        assert item.intent is not None
        kind = item.intent.record.content.get("bootstrap", "snapshot")
        item.bootstrap = str(kind)
        item.legacy_status = SideStatus.ACCEPTED
        try:
            if kind == "plan":
                item.plan = plan_accounts(item.exchange.answer, self.routes.currencies)
                self._bootstrapped = True
            elif kind == "read":
                matched = self.routes.match(item.exchange.method, item.exchange.path)
                if matched is None or item.exchange.status != 200:
                    item.skip = f"bootstrap read failed (status {item.exchange.status})"
                    return
                item.matched = matched
                item.request = to_ledger(matched, item.exchange, self.routes.currencies)
            else:
                if item.exchange.status != 200:
                    item.skip = f"the bootstrap snapshot failed (status {item.exchange.status})"
                    return
                item.opening = opening_commands(item.exchange.answer, self.routes.currencies)
                self._bootstrapped = True
        except InvalidCommand as exc:
            item.skip = f"bootstrap {kind}: {exc.message}"

    def _stand_in(self, ordered: Sequence[_Item], existing: set[str]) -> None:
        """Decide, in order, what each exchange posts while accounts await their bootstrap
        read: opening commands at a clean read, the migration account standing in for an
        account not yet opened, nothing for a movement the snapshot already holds."""
        for index, item in enumerate(ordered):
            if item.skip is not None:
                continue
            if item.bootstrap == "plan":
                currencies = {a.currency.code: a.currency for a in item.plan.values()}
                item.opening = [
                    OpenAccount(migration_account(currencies[code])) for code in sorted(currencies)
                ]
                # an account the ledger holds already (a bootstrap run again, or opened
                # through the legacy API) is not opened again
                fresh = {
                    k: v
                    for k, v in item.plan.items()
                    if k not in existing and (k not in self._planned or k in self._awaiting)
                }
                self._planned.update(item.plan)
                self._awaiting.update(fresh)
                continue
            if item.bootstrap == "read":
                assert isinstance(item.request, BalanceRead)
                account = item.request.account_id
                if account not in self._awaiting:
                    item.bootstrap = None  # opened already: an ordinary balance comparison
                    continue
                if self._moved_during(item, ordered, index, account):
                    item.skip = f"bootstrap read of {account} overlapped a movement: re-read"
                    continue
                balance = self._read_balance(item)
                if balance is None:
                    item.skip = f"bootstrap read of {account}: no readable balance"
                    continue
                item.opening = opening_for(self._awaiting.pop(account), balance)
                continue
            request = item.request
            if request is None or item.bootstrap is not None:
                continue
            touched = _accounts_of(request)
            if not touched & self._awaiting.keys():
                item.command = request if not isinstance(request, BalanceRead) else None
                continue
            if not isinstance(request, Transfer) or item.legacy_status is not SideStatus.ACCEPTED:
                item.skip = "touches an account awaiting its bootstrap read"
                continue
            stood_in = stand_in(request, self._awaiting)
            if stood_in is None:
                item.skip = "every account it moves awaits its bootstrap read, which holds it"
                continue
            item.command = stood_in

    def _moved_during(
        self, read: _Item, ordered: Sequence[_Item], index: int, account: str
    ) -> bool:
        """Whether money may have moved on ``account`` while it was being read: then the read
        may or may not hold that movement, and is not used."""
        span = read.span
        # what was asked, not what was decided: the same answer live and in a replay,
        # whichever group each exchange fell in
        for other in ordered:
            if other is read or not other.span.overlaps(span) or other.request is None:
                continue
            if isinstance(other.request, Reversal) or account in effects(other.request):
                return True
        for key in (account, ANY_ACCOUNT):
            if any(s.overlaps(span) for s in self._touched.get(key, ())):
                return True
        for intent in self._unapplied():
            if intent.seq >= span.outcome_seq:
                break
            request = self._translate_intent(intent)
            if isinstance(request, Reversal) or account in effects(request):
                return True
        return False

    def _unapplied(self) -> list[MirrorEvent]:
        """Intents read but not applied yet (unanswered, or answered and held), in seq order."""
        return sorted([*self._pending.values(), *self._held.values()], key=lambda e: e.seq)

    def _read_balance(self, item: _Item) -> int | None:
        assert item.matched is not None
        assert item.exchange is not None
        route = item.matched.route
        side = legacy_result(route, item.exchange, item.matched.path_params, None)
        value = side.fields.get("balance")
        currency = self.routes.currencies.get(side.currency or "", None)
        if value is None or currency is None:
            return None
        try:
            exact = legacy_decimal(value, route.amount_format, currency).scaleb(currency)
        except InvalidAmount:
            return None
        return int(exact) if exact == exact.to_integral_value() else None

    async def _apply(self, ordered: Sequence[_Item], last: int) -> list[ComparisonRecord]:
        """Decide the group's commands in one plan, then in one transaction: write them with
        the ``ledger`` offsets, read balances where the stream position says, compare, and
        store the comparisons with the ``compare`` offsets. A failure writes nothing."""
        planned = [i.plan for i in ordered if i.bootstrap == "plan"]
        existing: set[str] = set()
        if planned:
            names = {name for plan in planned for name in plan}
            existing = set((await self.store.load(names, ())).accounts)
        self._stand_in(ordered, existing)
        commands: list[Command] = []
        owners: list[_Item] = []
        # transfers the ledger answered itself (ledger-primary) are not applied again: what it
        # did under their key is looked up (posted, refused, or nothing, when it refused them
        # as unknown), so a retry answered from the kept answer can never post them late
        looked_up: list[_Item] = []
        for item in ordered:
            if item.skip is not None:
                continue
            if _answered(item) and isinstance(item.command, Transfer | Reversal):
                looked_up.append(item)
                continue
            for command in item.opening or ([item.command] if item.command else []):
                commands.append(command)
                owners.append(item)
        account_ids, keys = keys_needed(commands)
        keys = keys | {
            i.command.key for i in looked_up if isinstance(i.command, Transfer | Reversal)
        }
        # in shadow mode the applier is the ledger's only writer: the balances its last plans
        # left are current (a stale one makes post_batch refuse the plan; the group is then
        # read again with the cache cleared). The accounts of requests the ledger answered
        # itself (ledger-primary) were moved by the sidecar meanwhile: read them again
        for item in looked_up:
            assert item.command is not None
            for account in keys_needed([item.command])[0]:
                self._accounts.pop(account, None)
        cached = {a: self._accounts[a] for a in account_ids if a in self._accounts}
        view = await self.store.load(account_ids - cached.keys(), keys)
        plan = plan_batch(
            LedgerView(accounts={**cached, **view.accounts}, transfers=view.transfers), commands
        )
        ledger_at = [Checkpoint(LEDGER_CONSUMER, p, last) for p in range(self.partitions)]
        compare_at = [Checkpoint(COMPARE_CONSUMER, p, last) for p in range(self.partitions)]

        for item in looked_up:
            asked = item.command
            assert isinstance(asked, Transfer | Reversal)
            record = view.transfers.get(asked.key)
            item.result = record.outcome(replayed=True) if record is not None else NotPosted(asked)

        async def finish(first_seq: int | None, ledger: BalanceReader) -> list[ComparisonRecord]:
            results = plan.results if first_seq is None else plan.with_first_seq(first_seq)
            decided: dict[int, list[Result]] = {}
            for item, result in zip(owners, results, strict=True):
                decided.setdefault(id(item), []).append(result)
            for item in ordered:
                outcomes = decided.get(id(item))
                if outcomes is None:
                    continue
                if item.opening:  # an error if any, else the opening transfer's outcome
                    item.result = next(
                        (r for r in outcomes if isinstance(r, SidecarError)), outcomes[-1]
                    )
                else:
                    item.result = outcomes[0]
            # each read sees the ledger as every exchange applied before it left it
            running = self._ledger_position
            for item in ordered:
                if (
                    isinstance(item.request, BalanceRead)
                    and item.skip is None
                    and (item.bootstrap is None)
                ):
                    item.result = await ledger.balance(item.request.account_id, running)
                seq = _place_of(item.result)
                if seq is not None:
                    running = max(running, seq)
            compare_started = time.time_ns()
            self._compare(ordered)
            self._compare_ns = (compare_started, time.time_ns())
            return [i.record for i in ordered if i.record is not None]

        started = time.perf_counter()
        started_ns = time.time_ns()
        records = await self.comparisons.apply_group(
            plan if not plan.is_empty else None, ledger_at, finish, compare_at
        )
        self._group_seconds = time.perf_counter() - started
        self._group_ns = (started_ns, time.time_ns())
        if self.metrics is not None:
            self.metrics.commit_duration.observe(self._group_seconds)
            self.metrics.batch_commands.observe(len(commands))
        for item in ordered:
            seq = _place_of(item.result)
            if seq is not None:
                self._ledger_position = max(self._ledger_position, seq)
        self._cache_balances(plan, commands, {**cached, **view.accounts})
        return records

    def _cache_balances(
        self, plan: BatchPlan, commands: Sequence[Command], known: Mapping[str, AccountState]
    ) -> None:
        """Keep the accounts the committed plan consulted, at the balances it left."""
        if len(self._accounts) > ACCOUNT_CACHE_MAX:
            self._accounts.clear()
        opened = {c.account.id: c.account for c in commands if isinstance(c, OpenAccount)}
        for account_id, change in plan.balances.items():
            state = known.get(account_id)
            account = state.account if state is not None else opened.get(account_id)
            if account is not None:
                self._accounts[account_id] = AccountState(account, change.after_minor)

    def _compare(self, ordered: Sequence[_Item]) -> None:
        for index, item in enumerate(ordered):
            item.record = self._comparison(item, ordered, index)

    def _comparison(self, item: _Item, ordered: Sequence[_Item], index: int) -> ComparisonRecord:
        route = item.matched.route if item.matched is not None else None
        account = _account_of(item)
        if item.bootstrap is not None and item.skip is None:
            opened = [c.account.id for c in item.opening if isinstance(c, OpenAccount)]
            comparison = (
                Comparison(Outcome.LEDGER_ERROR, detail=f"bootstrap: {item.result.message}")
                if isinstance(item.result, SidecarError)
                else Comparison(
                    Outcome.MATCH, detail=f"bootstrap: opened {', '.join(opened)}"[:500]
                )
            )
        elif item.skip is not None or route is None or item.exchange is None:
            comparison = Comparison(Outcome.SKIPPED, detail=item.skip)
        else:
            legacy = legacy_result(
                route,
                item.exchange,
                item.matched.path_params if item.matched else {},
                rejection_outcome(route, item.legacy_code),
            )
            undelivered = item.outcome.record.content.get("error") == "legacy_undelivered"
            if item.legacy_status is SideStatus.ERROR and undelivered and _moved(item.result):
                # the ledger answered and moved money; the legacy service never took it
                missing = Difference("status", DivergenceKind.MISSING_IN_LEGACY, None, "accepted")
                comparison = Comparison(
                    Outcome.MISMATCH,
                    (missing,),
                    detail="answered by the ledger; never delivered to the legacy service",
                )
            elif item.legacy_status is SideStatus.ERROR:
                comparison = Comparison(Outcome.LEGACY_ERROR, detail=legacy.error)
            else:
                ledger = ledger_result(item.request, item.result, item.legacy_status)  # type: ignore[arg-type]
                refusal = ledger.fields.get("rejection")
                # compare only what the legacy side can say: a field the route does not map
                # (or a rejection reason the mapping does not know) is not a difference
                said = {k for k in ledger.fields if k in legacy.fields or k in route.result}
                said |= {k for k in ledger.fields if k in route.fields and k != "rejection"}
                if said != set(ledger.fields):
                    ledger = replace(
                        ledger, fields={k: v for k, v in ledger.fields.items() if k in said}
                    )
                comparison = compare(
                    {**DEFAULT_RULES, **route.compare},
                    legacy,
                    ledger,
                    amount_format=route.amount_format,
                    exponents=self.routes.currencies,
                )
                if comparison.outcome is Outcome.MISMATCH and account is not None:
                    before, after, complete = self._overlapping(item, ordered, index, account)
                    if explained_by_order(comparison, before, after, complete):
                        comparison = order_dependent(comparison)
                if comparison.outcome is Outcome.MISMATCH and refusal is not None:
                    comparison = replace(comparison, detail=f"the ledger refused: {refusal}")
        return ComparisonRecord(
            request_id=item.request_id,
            seq=item.outcome.seq,
            intent_seq=item.span.intent_seq,
            partition=item.outcome.record.partition,
            route=item.outcome.record.route or "",
            operation=(
                f"bootstrap_{item.bootstrap}"
                if item.bootstrap is not None
                else route.operation.value
                if route
                else "unknown"
            ),
            comparison=redacted(comparison, self.sensitive) if self.sensitive else comparison,
            account_id=account,
            ledger_seq=_seq_of(item.result),
            trace_id=item.outcome.record.trace_id
            or (item.intent.record.trace_id if item.intent else None),
            accounts=self._named_accounts(item, ordered),
        )

    def _named_accounts(self, item: _Item, ordered: Sequence[_Item]) -> tuple[str, ...]:
        """The accounts a comparison is listed under: those its request and postings name
        and, for a reversal, those of the transfer it reverses when that was seen lately (a
        refund of a payment the ledger refused posts nothing, yet it is about those accounts,
        and ``divergences list --account`` must find it)."""
        accounts = set(_all_accounts(item))
        request = item.request
        if isinstance(request, Reversal):
            accounts.update(self._reversed_accounts(request, ordered))
        return tuple(sorted(accounts))

    def _overlapping(
        self, item: _Item, ordered: Sequence[_Item], index: int, account: str
    ) -> tuple[list[Overlap], list[Overlap], bool]:
        """Exchanges overlapping ``item`` that moved ``account``: those the ledger applied
        before it and those it applies after (or whose answer is still to come), each with
        its effect, what it asked, legacy's answer where known, and whether nothing else moved
        the account while the two were in flight; and whether the two lists hold every
        movement of the account that overlapped ``item`` (none unknown, no reversal)."""
        span = item.span
        before = [(s, o) for s, o in self._recent.get(account, ()) if s.overlaps(span)]
        after: list[tuple[Span, Overlap]] = []
        movers = [*self._touched.get(account, ()), *self._touched.get(ANY_ACCOUNT, ())]
        # whether every movement overlapping ``item`` is known, with its effect: not if one
        # is a reversal or could not be read as a command, nor if a window forgot some
        complete = self._windows_hold(account, span)
        for other_index, other in enumerate(ordered):
            if other is item:
                continue
            if isinstance(other.request, Reversal) or effects(other.request).get(account):
                movers.append(other.span)
            if not other.span.overlaps(span):
                continue
            if self._may_move_unseen(other.request, account, ordered):
                complete = False
            overlap = _overlap_of(other, account, _applied_effect(other).get(account, 0))
            (before if other_index < index else after).append((other.span, overlap))
        for intent in reversed(self._unapplied()):
            if intent.seq >= span.outcome_seq:
                continue
            if intent.seq < span.intent_seq - 10 * self.settings.chunk_events_max:
                complete = False  # older requests still unanswered: not looked at
                break
            request = self._translate_intent(intent)
            if self._may_move_unseen(request, account, ordered):
                complete = False
            effect = effects(request).get(account, 0)
            if effect:
                pending = Span(intent.seq, UNANSWERED)
                movers.append(pending)
                after.append((pending, Overlap(effect)))  # not answered yet

        def alone(other: Span) -> bool:
            window = Span(
                min(span.intent_seq, other.intent_seq), max(span.outcome_seq, other.outcome_seq)
            )
            return not any(m not in (span, other) and m.overlaps(window) for m in movers)

        def seen_from_item(pairs: list[tuple[Span, Overlap]]) -> list[Overlap]:
            # settled: answered before ``item`` was (unless when is not known: None)
            return [
                replace(
                    o,
                    alone=alone(s),
                    settled=o.settled is not None and s.outcome_seq < span.outcome_seq,
                )
                for s, o in pairs
            ]

        listed = {span, *(s for s, _ in before), *(s for s, _ in after)}
        complete = complete and not any(m.overlaps(span) and m not in listed for m in movers)
        return seen_from_item(before), seen_from_item(after), complete

    def _windows_hold(self, account: str, span: Span) -> bool:
        """Whether the bounded windows of movements remembered for ``account`` (and of
        reversals) still hold everything that overlapped ``span``: nothing they forgot (or a
        restart left unread) ended after ``span`` began."""
        return all(self._forgotten.get(key, 0) <= span.intent_seq for key in (account, ANY_ACCOUNT))

    def _may_move_unseen(
        self, request: LedgerRequest | None, account: str, ordered: Sequence[_Item]
    ) -> bool:
        """Whether ``request`` may move ``account`` by an amount orders are not weighed with:
        a request not read as a command, or a reversal of a transfer on the account (or of
        one not seen lately, whose accounts are unknown)."""
        if request is None:
            return True
        if not isinstance(request, Reversal):
            return False
        return account in self._reversed_accounts(request, ordered, (account,))

    def _reversed_accounts(
        self, reversal: Reversal, ordered: Sequence[_Item], unknown: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        """The accounts of the transfer ``reversal`` reverses, from this group or the ones
        seen lately; ``unknown`` if it was not seen."""
        known = self._accounts_by_key.get(reversal.reverses)
        if known is not None:  # seen in an earlier group: its first use
            return known
        for other in ordered:
            if isinstance(other.request, Transfer) and other.request.key == reversal.reverses:
                return tuple(sorted(_accounts_of(other.request)))
        return unknown

    def _touch(self, span: Span, request: LedgerRequest | None) -> None:
        """Remember that ``request`` asked to move money on its accounts during ``span``."""
        if isinstance(request, Transfer) and request.key not in self._accounts_by_key:
            # the key's first use: a later one with other legs is refused (a conflict)
            self._accounts_by_key[request.key] = tuple(sorted(_accounts_of(request)))
            if len(self._accounts_by_key) > KEYS_REMEMBERED_MAX:
                self._accounts_by_key.popitem(last=False)
        if isinstance(request, Reversal):
            # its accounts are its target's, when that was seen lately
            touched: Iterable[str] = self._accounts_by_key.get(request.reverses, (ANY_ACCOUNT,))
        else:
            touched = effects(request)
        for account in touched:
            self._keep(self._touched, account, span)

    def _keep(self, windows: dict[str, deque[Any]], account: str, entry: Any) -> None:
        """Append ``entry`` (a span, or a span and its overlap) to ``account``'s bounded
        window, remembering the latest outcome the window forgot (``_windows_hold``)."""
        window = windows.get(account)
        if window is None:
            window = windows[account] = deque(maxlen=RECENT_PER_ACCOUNT)
        if len(window) == window.maxlen:
            oldest = window[0]
            forgotten = (oldest[0] if isinstance(oldest, tuple) else oldest).outcome_seq
            self._forgotten[account] = max(self._forgotten.get(account, 0), forgotten)
        window.append(entry)

    def _translate_intent(self, intent: MirrorEvent) -> LedgerRequest | None:
        exchange = exchange_of(intent.record, None)
        matched = self.routes.match(exchange.method, exchange.path)
        if matched is None:
            return None
        try:
            return to_ledger(
                matched, exchange, self.routes.currencies, self._computed(matched, exchange)
            )
        except InvalidCommand:
            return None

    def _computed(self, matched: MatchedRoute, exchange: Exchange) -> dict[str, Any] | None:
        """The route hook's field values for this exchange; a hook that fails makes the
        exchange not a ledger command (skipped with the reason), never stops the applier."""
        hook = self.hooks.get(matched.route.name)
        if hook is None:
            return None
        try:
            return dict(hook(exchange, matched.path_params))
        except Exception as exc:  # user code: whatever it raises is a reason to skip
            raise InvalidCommand(f"route {matched.route.name!r}: its hook failed: {exc!r}") from exc

    def _remember(self, ordered: Sequence[_Item]) -> None:
        for item in ordered:
            self._touch(item.span, item.request)
        for item in ordered:
            applied = _applied_effect(item)
            # what the ledger refused too: legacy may have taken it (an order's explanation
            # counts what each side could have held)
            for account in effects(item.request):
                effect = applied.get(account, 0)
                if not effect and item.legacy_status is SideStatus.REJECTED:
                    continue  # neither side moved it: nothing to explain with
                self._keep(self._recent, account, (item.span, _overlap_of(item, account, effect)))
        if len(self._recent) > PENDING_INTENTS_MAX:
            latest = max(s.outcome_seq for w in self._recent.values() for s, _ in w)
            self._forgotten[ANY_ACCOUNT] = max(self._forgotten.get(ANY_ACCOUNT, 0), latest)
            self._recent.clear()

    def _note(
        self, records: Sequence[ComparisonRecord], answered: Mapping[str, float | None]
    ) -> None:
        """Count the group, observe its metrics and log each divergence (the stored record is
        the source of truth; ``ComparisonStore.counts`` has the totals by outcome and kind)."""
        self.stats.groups += 1
        self.stats.compared += len(records)
        now = time.time() + self.clock_offset_s
        for record in records:
            outcome = record.comparison.outcome
            if self.metrics is not None:
                at = answered.get(record.request_id)
                self.metrics.compared(
                    record.operation,
                    outcome.value,
                    (k.value for k in record.comparison.kinds),
                    None if at is None else now - at,
                    record.trace_id,
                )
                self.metrics.ledger_call(
                    record.operation,
                    "error" if outcome is Outcome.LEDGER_ERROR else "success",
                    self._group_seconds,
                )
            if outcome is Outcome.MISMATCH:
                log.warning(
                    "divergence",
                    extra={
                        "event": "divergence",
                        "operation": record.operation,
                        "route": record.route,
                        "account_id": record.account_id,
                        "divergence_kind": ",".join(
                            sorted(k.value for k in record.comparison.kinds)
                        ),
                        "stream_offset": record.seq,
                        "differences": record.document()["differences"],
                        "trace_id": record.trace_id,
                    },
                )

    def _trace(self, records: Sequence[ComparisonRecord], ordered: Sequence[_Item]) -> None:
        """Each compared request's ``apply`` and ``compare`` spans, children of its server
        span (whose ids its intent carries): its trace tells the whole story."""
        parents = {
            i.request_id: (
                i.intent.record.content.get("span_id"),
                i.intent.record.content.get("sampled", True) is True,
            )
            for i in ordered
            if i.intent is not None
        }
        for record in records:
            span_id, sampled = parents.get(record.request_id, (None, False))
            parent = remote_parent(record.trace_id, span_id, sampled)
            if parent is None:
                continue
            attributes: dict[str, AttributeValue] = {
                "ledger_sidecar.operation": record.operation,
                "ledger_sidecar.route": record.route,
                "ledger_sidecar.stream_offset": record.seq,
            }
            apply = self.tracer.start_span(
                "apply", parent, attributes=attributes, start_time=self._group_ns[0]
            )
            apply.end(end_time=self._group_ns[1])
            compare = self.tracer.start_span(
                "compare",
                parent,
                attributes={
                    **attributes,
                    "ledger_sidecar.comparison.outcome": record.comparison.outcome.value,
                    "ledger_sidecar.divergence.kinds": sorted(
                        k.value for k in record.comparison.kinds
                    ),
                },
                start_time=self._compare_ns[0],
            )
            compare.end(end_time=self._compare_ns[1])


def _seq_of(result: Result | int | None) -> int | None:
    """The seq of the ledger event this result decided now (None for a replay)."""
    if isinstance(result, TransferOutcome) and result.replayed:
        return None
    return _place_of(result)


class NotPosted(SidecarError):
    """A transfer the ledger answered itself and refused before recording it (an unknown
    account, an unknown payment to refund): nothing is under its key."""

    def __init__(self, command: Transfer | Reversal) -> None:
        super().__init__(f"the ledger posted nothing under {command.key}")
        self.code = "unknown_transfer" if isinstance(command, Reversal) else "unknown_account"


def _answered(item: _Item) -> bool:
    """Whether the ledger answered this request itself and the legacy service got it later
    (ledger-primary, delivered from the stream). A request the ledger could not decide was
    answered by the legacy service at once, as in shadow mode: not this."""
    return (
        item.intent is not None
        and item.intent.record.content.get("answered_by") is not None
        and bool(item.outcome.record.content.get("delivered"))
    )


def _moved(result: object) -> bool:
    """Whether the ledger's result moved or made something (a posted transfer, a new account)."""
    if isinstance(result, TransferOutcome):
        return result.posted  # replayed too: the ledger answered it, and posted it then
    return isinstance(result, AccountOutcome)


def _place_of(result: Result | int | None) -> int | None:
    """The ledger seq that decided a result, a replay's included."""
    if isinstance(result, TransferOutcome | AccountOutcome):
        return result.seq
    return None


def _applied_effect(item: _Item) -> dict[str, int]:
    if isinstance(item.result, TransferOutcome) and item.result.posted:
        return effects(item.request)
    return {}


def _overlap_of(item: _Item, account: str, effect: int) -> Overlap:
    """``item`` as an overlap on ``account``: what the ledger applied (``effect``) and what it
    asked, legacy's answer, and whether when legacy answered is known (in doubt: not)."""
    return Overlap(
        effect,
        item.legacy_status is SideStatus.ACCEPTED,
        requested=effects(item.request).get(account, 0),
        settled=False if item.answered_in_place else None,
    )


def _accounts_of(request: LedgerRequest) -> set[str]:
    if isinstance(request, Transfer):
        return {leg.account_id for leg in request.legs}
    if isinstance(request, BalanceRead):
        return {request.account_id}
    if isinstance(request, OpenAccount):
        return {request.account.id}
    return set()


def _all_accounts(item: _Item) -> tuple[str, ...]:
    touched = set(_accounts_of(item.request)) if item.request is not None else set()
    if isinstance(item.result, TransferOutcome):
        touched |= {p.account_id for p in item.result.postings}
    return tuple(sorted(touched))


def _account_of(item: _Item) -> str | None:
    request = item.request
    if isinstance(request, BalanceRead):
        return request.account_id
    debit = debit_account(request)
    if debit is not None:
        return debit
    if isinstance(item.result, TransferOutcome) and item.result.postings:
        # a reversal: the account it takes money from
        return next((p.account_id for p in item.result.postings if p.amount_minor > 0), None)
    if isinstance(item.result, AccountOutcome):
        return item.result.account_id
    if request is not None and hasattr(request, "account"):
        return str(request.account.id)
    return None


__all__ = ["COMPARE_CONSUMER", "LEDGER_CONSUMER", "Applier", "ApplierStats", "DivergenceKind"]
