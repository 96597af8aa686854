"""Ledger benchmark: the batched posting path against a naive one-statement-per-transfer design.

Run: ``python bench/ledger.py --seconds 10 --json`` (``DATABASE_URL`` selects the server).

Everything runs in this one process, one phase after the other, each phase in a fresh schema
``bench_<pid>_<phase>`` migrated with the ledger's own migrations and dropped as soon as it is
done (so its tables are not vacuumed under the next phase):

- uniform:  ``Ledger.transfer`` between uniformly random customers, closed loop, many callers.
- rebuild:  ``sidecar.rebuild.rebuild`` of the uniform phase's ledger, events per second.
- hot:      the same as uniform, but every other transfer of each caller credits one hot account.
- baseline: one autocommit SQL statement per transfer (lock both rows in id order, check the
            floor, update both balances, insert one row into ``bench_transfers``), same
            callers, over a pool of ``--baseline-connections`` (16: the best of 8, 16, 32, 64
            here; with several sizes given, the best run counts).
            See ``BASELINE_SQL``.
- latency:  open loop at a fixed offered rate (one transfer launched every 1/rate s on schedule,
            whatever has completed), latency of each from submit to result.

Rates count decided transfers (posted + rejected) over the phase's wall time, including the
tail in which callers finish the transfer they started before the deadline. CPU per transfer
is this process's CPU time and that of every local ``postgres`` process over the phase.
Progress goes to stderr; the result goes to stdout as a table or, with ``--json``, as one JSON
object. The exit status is 0 whether or not the targets are met; 1 if transfers failed with
errors or the rebuild did not reproduce the ledger; 2 if the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import asyncpg
from sidecar import config
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.connect import connection, create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import drop_schema, migrate
from sidecar.domain.ledger import Account, NormalSide, Transfer
from sidecar.domain.money import Currency
from sidecar.errors import SidecarError
from sidecar.posting import Ledger, WriterStats
from sidecar.rebuild import rebuild
from sidecar.report import progress, table
from sidecar.runtime import tune_gc

EUR = Currency("EUR", 2)
CASH = "bench-cash"  # debit-normal, no floor: funds every customer
HOT = "bench-hot"  # credit-normal, floor 0: the hot payee
FUND_MINOR = 10_000_000  # 100,000.00 EUR per customer
AMOUNT_MIN_MINOR, AMOUNT_MAX_MINOR = 1, 1_000  # at most 10.00 EUR: nothing runs dry

#: in the order they run: the rebuild replays the uniform phase's ledger right after it
PHASES = ("uniform", "rebuild", "hot", "baseline", "latency")

TARGET_UNIFORM_OVER_BASELINE = 3.0
TARGET_HOT_OVER_UNIFORM = 0.8
TARGET_REBUILD_EVENTS_PER_S = 10_000.0
TARGET_P99_MS = 100.0

BASELINE_TABLE = """
CREATE TABLE bench_transfers (
    key            text PRIMARY KEY,
    debit_account  text NOT NULL,
    credit_account text NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
    status         text NOT NULL CHECK (status IN ('posted', 'rejected')),
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

#: One statement, one autocommit transaction, one WAL flush per transfer. $1 key, $2 debited
#: account, $3 credited account, $4 amount. Both rows are locked in id order (no deadlocks);
#: the new balances are computed from the locked rows by normal side, the transfer is posted
#: only if both accounts exist and neither crosses its floor, and either way one row records
#: the decision. The accounts table is the migrated ledger's (same constraints and triggers).
BASELINE_SQL = """
WITH locked AS MATERIALIZED (
    SELECT id, normal_side, overdraft_limit_minor, balance_minor
    FROM accounts
    WHERE id IN ($2::text, $3::text)
    ORDER BY id
    FOR UPDATE
), moved AS (
    SELECT id, overdraft_limit_minor,
           balance_minor
           + CASE WHEN id = $2 THEN $4::bigint ELSE -$4::bigint END
             * CASE normal_side WHEN 'debit' THEN 1 ELSE -1 END AS after
    FROM locked
), decision AS (
    SELECT count(*) = 2
           AND bool_and(overdraft_limit_minor IS NULL OR after >= -overdraft_limit_minor) AS ok
    FROM moved
), applied AS (
    UPDATE accounts a SET balance_minor = m.after
    FROM moved m, decision d
    WHERE d.ok AND a.id = m.id
    RETURNING a.id
)
INSERT INTO bench_transfers (key, debit_account, credit_account, amount_minor, status)
SELECT $1, $2, $3, $4, CASE WHEN d.ok THEN 'posted' ELSE 'rejected' END
FROM decision d
RETURNING status
"""

RUN_KEYS = ("connections", "transfers_per_s", "errors", "cpu_us_per_transfer")

BASELINE_DESCRIPTION = (
    "one autocommit statement per transfer over an asyncpg pool: lock the payer and payee "
    "rows of the migrated ledger's accounts table in id order (SELECT ... ORDER BY id FOR "
    "UPDATE), compute both new balances by normal side, UPDATE both only if neither crosses "
    "its floor, and INSERT one row (key, accounts, amount, posted|rejected) into a plain "
    "bench_transfers table with a primary key on key and no foreign keys; no event log, no "
    "postings, no hash chain"
)


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --- workload -------------------------------------------------------------------------------


@dataclass
class Workload:
    """Who pays whom: a uniformly random customer pays another one, or the hot account.

    With ``hot_share`` s, the n-th transfer of each caller credits the hot account when
    ``ceil((n + 1) s) > ceil(n s)``: the first one does, and every prefix has at least a share s.
    """

    customers: Sequence[str]
    hot_share: float = 0.0
    picked: int = 0
    picked_hot: int = 0

    def pick(self, rng: random.Random, n: int) -> tuple[str, str, int]:
        payer = rng.choice(self.customers)
        self.picked += 1
        if self.hot_share and math.ceil((n + 1) * self.hot_share) > math.ceil(n * self.hot_share):
            self.picked_hot += 1
            payee = HOT
        else:
            payee = payer
            while payee == payer:
                payee = rng.choice(self.customers)
        return payer, payee, rng.randint(AMOUNT_MIN_MINOR, AMOUNT_MAX_MINOR)

    @property
    def measured_hot_share(self) -> float:
        return self.picked_hot / self.picked if self.picked else 0.0


def customer_ids(count: int) -> list[str]:
    return [f"c{i:06d}" for i in range(count)]


async def open_and_fund(ledger: Ledger, customers: Sequence[str]) -> None:
    """Open the cash, hot and customer accounts and fund every customer from cash."""
    await ledger.open_account(Account(CASH, EUR, NormalSide.DEBIT, None))
    await ledger.open_account(Account(HOT, EUR, NormalSide.CREDIT, 0))
    await asyncio.gather(
        *(ledger.open_account(Account(c, EUR, NormalSide.CREDIT, 0)) for c in customers)
    )
    outcomes = await asyncio.gather(
        *(
            ledger.transfer(
                Transfer.between(
                    f"fund-{c}", debit=CASH, credit=c, amount_minor=FUND_MINOR, currency="EUR"
                )
            )
            for c in customers
        )
    )
    unfunded = [o.key for o in outcomes if not o.posted]
    if unfunded:
        raise RuntimeError(f"funding refused for {len(unfunded)} customers, e.g. {unfunded[0]}")


# --- measuring ------------------------------------------------------------------------------


def postgres_cpu_s() -> float | None:
    """CPU seconds used so far by every local ``postgres`` process (None if not visible)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    found = False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        if name.startswith("postgres") or name.startswith("postmaster"):
            fields = stat[stat.rfind(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            found = True
    return total / ticks if found else None


@dataclass
class CpuMeter:
    """CPU used by this process and by PostgreSQL between ``start`` and ``stop``."""

    client_s: float = 0.0
    postgres_s: float | None = None
    wall_s: float = 0.0
    _client0: float = field(default=0.0, repr=False)
    _pg0: float | None = field(default=None, repr=False)
    _wall0: float = field(default=0.0, repr=False)

    def start(self) -> CpuMeter:
        self._client0 = time.process_time()
        self._pg0 = postgres_cpu_s()
        self._wall0 = time.perf_counter()
        return self

    def stop(self) -> CpuMeter:
        self.client_s = time.process_time() - self._client0
        pg1 = postgres_cpu_s()
        self.postgres_s = None if pg1 is None or self._pg0 is None else pg1 - self._pg0
        self.wall_s = time.perf_counter() - self._wall0
        return self

    def per_transfer_us(self, transfers: int) -> dict[str, float | None]:
        if not transfers:
            return {"client": None, "postgres": None}
        return {
            "client": round(self.client_s / transfers * 1e6, 1),
            "postgres": None
            if self.postgres_s is None
            else round(self.postgres_s / transfers * 1e6, 1),
        }


@dataclass
class Counts:
    posted: int = 0
    rejected: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: CpuMeter = field(default_factory=CpuMeter)

    @property
    def decided(self) -> int:
        return self.posted + self.rejected

    @property
    def per_s(self) -> float:
        return self.decided / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """What every closed-loop phase reports about its transfers."""
        return {
            "transfers_per_s": round(self.per_s, 1),
            "posted": self.posted,
            "rejected": self.rejected,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "seconds": round(self.seconds, 3),
            "cpu_us_per_transfer": self.cpu.per_transfer_us(self.decided),
        }

    def record(self, status: str) -> None:
        if status == "posted":
            self.posted += 1
        elif status == "rejected":
            self.rejected += 1
        else:
            self.error(RuntimeError(f"unexpected status {status!r}"))

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(exc).__name__}: {exc}")


#: one transfer of one caller: (caller's rng, caller index, caller's n-th transfer) -> status
OneTransfer = Callable[[random.Random, int, int], Awaitable[str]]


async def _ticker(label: str, counts: Counts, start: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        elapsed = time.perf_counter() - start
        say(
            f"    [{label}] {elapsed:4.1f} s: {counts.decided:,} decided "
            f"({counts.decided / elapsed:,.0f}/s), {counts.rejected:,} rejected, "
            f"{counts.errors:,} errors"
        )


async def closed_loop(label: str, one: OneTransfer, *, callers: int, seconds: float) -> Counts:
    """``callers`` tasks each post one transfer after another until ``seconds`` have passed."""
    counts = Counts()
    start = time.perf_counter()
    deadline = start + seconds

    async def caller(index: int) -> None:
        rng = random.Random(index)
        n = 0
        while time.perf_counter() < deadline:
            try:
                status = await one(rng, index, n)
            except (SidecarError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                counts.error(exc)
            else:
                counts.record(status)
            n += 1

    ticker = asyncio.create_task(_ticker(label, counts, start))
    counts.cpu.start()
    try:
        await asyncio.gather(*(caller(i) for i in range(callers)))
    finally:
        ticker.cancel()
    counts.cpu.stop()
    counts.seconds = time.perf_counter() - start
    return counts


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def stats_delta(after: WriterStats, before: WriterStats) -> dict[str, float]:
    batches = after.batches - before.batches
    commands = after.commands - before.commands
    return {
        "batches": batches,
        "commands": commands,
        "events": after.events - before.events,
        "mean_batch": round(commands / batches, 1) if batches else 0.0,
        "largest_batch": after.largest_batch,
        "replans": after.replans - before.replans,
        "failed_batches": after.failed_batches - before.failed_batches,
    }


# --- phases ---------------------------------------------------------------------------------


@dataclass
class Bench:
    settings: Settings
    seconds: float
    callers: int
    accounts: int
    baseline_connections: tuple[int, ...]
    latency_rate: float
    hot_share: float
    prefix: str = field(default_factory=lambda: f"bench_{os.getpid()}")
    schemas: list[str] = field(default_factory=list)

    def database(self, phase: str) -> DatabaseSettings:
        return replace(self.settings.database, schema=f"{self.prefix}_{phase}")

    async def fresh_schema(self, phase: str) -> DatabaseSettings:
        db = self.database(phase)
        self.schemas.append(db.schema)
        await drop_schema(db, db.schema)
        await migrate(db)
        return db

    async def drop(self, *schemas: str) -> None:
        """Drop finished phases at once: their tables would otherwise be vacuumed and
        analysed in the background while later phases are being measured."""
        for schema in schemas:
            await drop_schema(self.settings.database, schema)
            if schema in self.schemas:
                self.schemas.remove(schema)

    async def drop_all(self) -> None:
        await self.drop(*list(self.schemas))

    @staticmethod
    async def settle(db: DatabaseSettings) -> bool:
        """Fresh statistics and a checkpoint before measuring; False if not allowed to."""
        async with connection(db) as conn:
            await conn.execute("ANALYZE accounts")
            try:
                await conn.execute("CHECKPOINT")
            except asyncpg.InsufficientPrivilegeError:
                return False
        return True

    @staticmethod
    async def assert_synchronous_commit(pool: asyncpg.Pool) -> str:
        value: str = await pool.fetchval("SHOW synchronous_commit")
        if value != "on":
            raise RuntimeError(f"synchronous_commit is {value!r} on the benchmark connections")
        return value

    @contextlib.asynccontextmanager
    async def funded_ledger(
        self, phase: str, workload: Workload
    ) -> AsyncIterator[tuple[Ledger, bool]]:
        """A fresh schema with every account opened and funded, settled; the ledger and
        whether the checkpoint before measuring was allowed."""
        db = await self.fresh_schema(phase)
        pool = await create_pool(db)
        try:
            await self.assert_synchronous_commit(pool)
            async with Ledger(PostgresLedgerStore(pool), self.settings.ledger) as ledger:
                say(f"==> {phase}: opening and funding {len(workload.customers):,} accounts")
                await open_and_fund(ledger, workload.customers)
                yield ledger, await self.settle(db)
        finally:
            await pool.close()

    async def ledger_closed_loop(self, phase: str, workload: Workload) -> dict[str, Any]:
        async with self.funded_ledger(phase, workload) as (ledger, checkpointed):
            before = replace(ledger.stats)

            async def one(rng: random.Random, caller: int, n: int) -> str:
                payer, payee, amount = workload.pick(rng, n)
                outcome = await ledger.transfer(
                    Transfer.between(
                        f"{phase}-{caller}-{n}",
                        debit=payer,
                        credit=payee,
                        amount_minor=amount,
                        currency="EUR",
                    )
                )
                return outcome.status.value

            say(f"==> {phase}: {self.seconds:g} s, {self.callers} callers")
            counts = await closed_loop(phase, one, callers=self.callers, seconds=self.seconds)
            writer = stats_delta(ledger.stats, before)
        return {
            "schema": self.database(phase).schema,
            **counts.summary(),
            "hot_share": round(workload.measured_hot_share, 4),
            "checkpoint_before": checkpointed,
            "writer": writer,
        }

    async def baseline(self, workload: Workload) -> dict[str, Any]:
        """The naive design at each pool size asked for; its best run is the baseline."""
        runs = []
        for connections in self.baseline_connections:
            runs.append(await self.baseline_run(Workload(workload.customers), connections))
            await self.drop(self.database(f"baseline{connections}").schema)
        best = max(runs, key=lambda r: float(r["transfers_per_s"]))
        return {**best, "runs": [{k: r[k] for k in RUN_KEYS} for r in runs]}

    async def baseline_run(self, workload: Workload, connections: int) -> dict[str, Any]:
        db = await self.fresh_schema(f"baseline{connections}")
        setup_pool = await create_pool(db)
        try:
            async with Ledger(PostgresLedgerStore(setup_pool), self.settings.ledger) as ledger:
                say(f"==> baseline: opening and funding {len(workload.customers):,} accounts")
                await open_and_fund(ledger, workload.customers)
            await setup_pool.execute(BASELINE_TABLE)
        finally:
            await setup_pool.close()
        checkpointed = await self.settle(db)
        pool = await create_pool(
            replace(
                db,
                pool_connections_min=connections,
                pool_connections_max=connections,
            )
        )
        try:
            await self.assert_synchronous_commit(pool)

            async def one(rng: random.Random, caller: int, n: int) -> str:
                payer, payee, amount = workload.pick(rng, n)
                status: str = await pool.fetchval(
                    BASELINE_SQL, f"baseline-{caller}-{n}", payer, payee, amount
                )
                return status

            say(
                f"==> baseline: {self.seconds:g} s, {self.callers} callers, "
                f"{connections} connections"
            )
            counts = await closed_loop("baseline", one, callers=self.callers, seconds=self.seconds)
            async with pool.acquire() as conn:
                drift = await conn.fetchval(
                    "SELECT sum(CASE normal_side WHEN 'debit' THEN -balance_minor "
                    "ELSE balance_minor END) FROM accounts"
                )
                recorded = await conn.fetchval("SELECT count(*) FROM bench_transfers")
        finally:
            await pool.close()
        if drift != 0 or recorded != counts.decided:
            raise RuntimeError(
                f"baseline broke its own books: balances sum to {drift}, "
                f"{recorded} rows for {counts.decided} decisions"
            )
        return {
            "schema": db.schema,
            **counts.summary(),
            "connections": connections,
            "checkpoint_before": checkpointed,
            "description": BASELINE_DESCRIPTION,
            "sql": " ".join(BASELINE_SQL.split()),
        }

    async def rebuild(self) -> dict[str, Any]:
        db = self.database("uniform")
        say(f"==> rebuild: replaying {db.schema} into {db.schema}_rebuild")
        report = await rebuild(db, progress=progress("    [rebuild] events replayed"))
        return {
            "source_schema": db.schema,
            "events": report.events,
            "accounts": report.accounts,
            "seconds": round(report.seconds, 3),
            "events_per_s": round(report.events_per_s, 1),
            "identical": report.identical,
            "fold_error": report.fold_error,
        }

    async def latency(self, workload: Workload) -> dict[str, Any]:
        async with self.funded_ledger("latency", workload) as (ledger, checkpointed):
            before = replace(ledger.stats)
            say(f"==> latency: {self.latency_rate:g} transfers/s offered for {self.seconds:g} s")
            result = await self.open_loop(ledger, workload)
            result["writer"] = stats_delta(ledger.stats, before)
            result["checkpoint_before"] = checkpointed
        result["schema"] = self.database("latency").schema
        return result

    async def open_loop(self, ledger: Ledger, workload: Workload) -> dict[str, Any]:
        """Launch one transfer every 1/rate s on schedule, whatever has completed."""
        total = int(self.latency_rate * self.seconds)
        interval = 1 / self.latency_rate
        counts = Counts()
        from_submit: list[float] = []
        from_schedule: list[float] = []
        launch_lag: list[float] = []
        rng = random.Random(1)
        tasks: set[asyncio.Task[None]] = set()

        async def one(n: int, scheduled: float) -> None:
            payer, payee, amount = workload.pick(rng, n)
            submitted = time.perf_counter()
            try:
                outcome = await ledger.transfer(
                    Transfer.between(
                        f"latency-{n}",
                        debit=payer,
                        credit=payee,
                        amount_minor=amount,
                        currency="EUR",
                    )
                )
            except SidecarError as exc:
                counts.error(exc)
                return
            done = time.perf_counter()
            counts.record(outcome.status.value)
            from_submit.append((done - submitted) * 1000)
            from_schedule.append((done - scheduled) * 1000)
            launch_lag.append((submitted - scheduled) * 1000)

        start = time.perf_counter() + 0.01
        ticker = asyncio.create_task(_ticker("latency", counts, start))
        try:
            for n in range(total):
                scheduled = start + n * interval
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(n, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            launched_s = time.perf_counter() - start
            await asyncio.gather(*tasks)
        finally:
            ticker.cancel()
        counts.seconds = time.perf_counter() - start
        from_submit.sort()
        from_schedule.sort()
        launch_lag.sort()
        return {
            "offered_per_s": self.latency_rate,
            "launched": total,
            "launched_per_s": round(total / launched_s, 1),
            "posted": counts.posted,
            "rejected": counts.rejected,
            "errors": counts.errors,
            "error_samples": counts.error_samples,
            "seconds": round(counts.seconds, 3),
            "p50_ms": round(percentile(from_submit, 50), 2),
            "p90_ms": round(percentile(from_submit, 90), 2),
            "p99_ms": round(percentile(from_submit, 99), 2),
            "max_ms": round(from_submit[-1], 2) if from_submit else math.nan,
            "p50_from_schedule_ms": round(percentile(from_schedule, 50), 2),
            "p99_from_schedule_ms": round(percentile(from_schedule, 99), 2),
            "launch_lag_p99_ms": round(percentile(launch_lag, 99), 2),
        }


# --- context and summary --------------------------------------------------------------------


async def server_context(db: DatabaseSettings) -> dict[str, str]:
    names = (
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
        "shared_buffers",
        "max_wal_size",
    )
    async with connection(db) as conn:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        return None
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def target(actual: float | None, goal: float, *, below: bool = False) -> dict[str, Any]:
    passed = None if actual is None else (actual < goal if below else actual >= goal)
    return {"target": f"{'<' if below else '>='} {goal:g}", "actual": actual, "pass": passed}


def summarise(
    bench: Bench, phases: dict[str, dict[str, Any]], server: dict[str, str]
) -> dict[str, Any]:
    def figure(phase: str, key: str) -> float | None:
        value = phases.get(phase, {}).get(key)
        return None if value is None else float(value)

    uniform = figure("uniform", "transfers_per_s")
    hot = figure("hot", "transfers_per_s")
    baseline = figure("baseline", "transfers_per_s")
    rebuild_rate = figure("rebuild", "events_per_s")
    p50 = figure("latency", "p50_ms")
    p99 = figure("latency", "p99_ms")
    uniform_over_baseline = ratio(uniform, baseline)
    hot_over_uniform = ratio(hot, uniform)
    rate = f"{bench.latency_rate:g}"
    return {
        "transfers_per_s_uniform": uniform,
        "transfers_per_s_hot": hot,
        "baseline_per_s": baseline,
        "rebuild_events_per_s": rebuild_rate,
        f"commit_latency_p50_ms_at_{rate}_per_s": p50,
        f"commit_latency_p99_ms_at_{rate}_per_s": p99,
        "uniform_over_baseline": uniform_over_baseline,
        "hot_over_uniform": hot_over_uniform,
        "targets": {
            "uniform_over_baseline": target(uniform_over_baseline, TARGET_UNIFORM_OVER_BASELINE),
            "hot_over_uniform": target(hot_over_uniform, TARGET_HOT_OVER_UNIFORM),
            "rebuild_events_per_s": target(rebuild_rate, TARGET_REBUILD_EVENTS_PER_S),
            f"commit_latency_p99_ms_at_{rate}_per_s": target(p99, TARGET_P99_MS, below=True),
        },
        "context": {
            "seconds": bench.seconds,
            "concurrency": bench.callers,
            "accounts": bench.accounts,
            "hot_share": bench.hot_share,
            "baseline_connections": bench.baseline_connections,
            "latency_offered_per_s": bench.latency_rate,
            "synchronous_commit": server["synchronous_commit"],
            "mean_batch_uniform": phases.get("uniform", {}).get("writer", {}).get("mean_batch"),
            "mean_batch_hot": phases.get("hot", {}).get("writer", {}).get("mean_batch"),
            "mean_batch_latency": phases.get("latency", {}).get("writer", {}).get("mean_batch"),
            "postgres_version": server["server_version"],
            "postgres": server,
            "cpu_count": os.cpu_count(),
            "memory_gib": memory_gib(),
            "python": platform.python_version(),
            "asyncpg": asyncpg.__version__,
            "ledger_settings": asdict(bench.settings.ledger),
            "ledger_pool_connections_max": bench.settings.database.pool_connections_max,
            "amount_minor_range": [AMOUNT_MIN_MINOR, AMOUNT_MAX_MINOR],
            "fund_minor": FUND_MINOR,
            "timer": "time.perf_counter",
        },
        "phases": phases,
    }


def render(result: dict[str, Any]) -> str:
    rate = result["context"]["latency_offered_per_s"]
    key = f"{rate:g}"

    def fmt(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    rows = [
        ["uniform transfers/s", fmt(result["transfers_per_s_uniform"])],
        ["hot transfers/s", fmt(result["transfers_per_s_hot"])],
        ["baseline transfers/s", fmt(result["baseline_per_s"])],
        ["uniform / baseline", fmt(result["uniform_over_baseline"], 2)],
        ["hot / uniform", fmt(result["hot_over_uniform"], 2)],
        ["rebuild events/s", fmt(result["rebuild_events_per_s"])],
        [f"p50 ms at {key}/s", fmt(result[f"commit_latency_p50_ms_at_{key}_per_s"], 2)],
        [f"p99 ms at {key}/s", fmt(result[f"commit_latency_p99_ms_at_{key}_per_s"], 2)],
        ["mean batch (uniform)", fmt(result["context"]["mean_batch_uniform"], 1)],
        ["mean batch (hot)", fmt(result["context"]["mean_batch_hot"], 1)],
    ]
    targets = [
        [
            name,
            t["target"],
            "-" if t["actual"] is None else t["actual"],
            {True: "pass", False: "FAIL", None: "-"}[t["pass"]],
        ]
        for name, t in result["targets"].items()
    ]
    ctx = result["context"]
    header = (
        f"{ctx['seconds']:g} s per phase, {ctx['concurrency']} callers, {ctx['accounts']:,} "
        f"accounts, synchronous_commit={ctx['synchronous_commit']}, PostgreSQL "
        f"{ctx['postgres_version']}, {ctx['cpu_count']} CPUs"
    )
    return "\n\n".join(
        [
            header,
            table(["figure", "value"], rows),
            table(["target", "goal", "actual", "result"], targets),
            f"baseline: {BASELINE_DESCRIPTION}",
        ]
    )


# --- entry point ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    settings = config.load(None, os.environ)
    bench = Bench(
        settings=settings,
        seconds=args.seconds,
        callers=args.concurrency,
        accounts=args.accounts,
        baseline_connections=tuple(int(c) for c in args.baseline_connections.split(",")),
        latency_rate=args.rate,
        hot_share=args.hot_share,
    )
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(wanted) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    if "rebuild" in wanted and "uniform" not in wanted:
        raise ValueError("the rebuild phase replays the uniform phase's ledger: run both")
    server = await server_context(settings.database)
    if server["synchronous_commit"] != "on":
        raise RuntimeError(f"synchronous_commit is {server['synchronous_commit']!r}, not on")
    customers = customer_ids(args.accounts)
    phases: dict[str, dict[str, Any]] = {}
    try:
        for phase in PHASES:
            if phase not in wanted:
                continue
            if phase == "uniform":
                phases[phase] = await bench.ledger_closed_loop(phase, Workload(customers))
                if "rebuild" not in wanted:
                    await bench.drop(bench.database("uniform").schema)
            elif phase == "rebuild":
                phases[phase] = await bench.rebuild()
                uniform = bench.database("uniform").schema
                await bench.drop(uniform, f"{uniform}_rebuild")
            elif phase == "hot":
                phases[phase] = await bench.ledger_closed_loop(
                    phase, Workload(customers, hot_share=args.hot_share)
                )
                await bench.drop(bench.database("hot").schema)
            elif phase == "baseline":
                phases[phase] = await bench.baseline(Workload(customers))
            else:
                phases[phase] = await bench.latency(Workload(customers))
    finally:
        await bench.drop_all()
    sound = all(p.get("errors", 0) == 0 for p in phases.values()) and phases.get("rebuild", {}).get(
        "identical", True
    )
    return summarise(bench, phases, server), sound


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--concurrency", type=int, default=1024, help="closed-loop callers")
    parser.add_argument("--accounts", type=int, default=10_000, help="customer accounts")
    parser.add_argument(
        "--baseline-connections",
        default="16",
        help="pool sizes to run the baseline with (comma-separated); the best run counts",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="offered load, transfers/s")
    parser.add_argument("--hot-share", type=float, default=0.5, help="share crediting HOT")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.accounts < 2 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive, --concurrency >= 1, --accounts >= 2")
    try:
        pools = [int(c) for c in args.baseline_connections.split(",")]
    except ValueError:
        pools = []
    if not pools or min(pools) < 1:
        parser.error("--baseline-connections must be positive integers separated by commas")
    if not 0.5 <= args.hot_share <= 1:
        parser.error("--hot-share must be between 0.5 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_gc()  # as the sidecar's own commands run; the baseline runs in this process too
    try:
        result, sound = asyncio.run(run(args))
    except (SidecarError, asyncpg.PostgresError, OSError, RuntimeError, ValueError) as exc:
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    if not sound:
        say("transfers failed with errors or the rebuild differed: see phases in the output")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
