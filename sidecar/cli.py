"""The ``ledger-sidecar`` command: parse, load settings once, call a service, set the exit code.

Exit codes: 0 success; 1 the check or action failed (for example ``ledger verify`` found a
problem); 2 bad usage or configuration; 3 the database could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from sidecar import __version__, config, runtime
from sidecar.admin.cli import AdminUnreachable
from sidecar.admin.cli import add_parsers as add_admin_parsers
from sidecar.admin.cli import add_top_level as add_release_commands
from sidecar.config import Settings
from sidecar.errors import ConfigError, DatabaseUnreachable, SidecarError
from sidecar.report import progress, table
from sidecar.telemetry.logs import configure_logging
from sidecar.telemetry.tracing import provider_from_environ, tracer_of

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


async def _db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.db.migrate import migrate

    report = await migrate(settings.database)
    for name in report.already:
        print(f"  already applied  {name}")
    for name in report.applied:
        print(f"  applied          {name}")
    print(f"schema {report.schema} is up to date ({len(report.applied)} applied now)")
    return 0


async def _db_ping(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.db.connect import connection

    async with connection(settings.database) as conn:
        version = await conn.fetchval("SHOW server_version")
    if not args.quiet:
        print(f"PostgreSQL {version} at {settings.database.url}")
    return 0


async def _ledger_verify(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.verify import verify

    report = await verify(settings.database, None if args.json else progress("events checked"))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        rows = [[c.name, "ok" if c.ok else "FAILED", c.detail] for c in report.checks]
        print(table(["check", "result", "detail"], rows))
        print(f"\nledger {settings.database.schema}: {'OK' if report.ok else 'FAILED'}")
    return 0 if report.ok else 1


async def _ledger_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.rebuild import rebuild

    report = await rebuild(
        settings.database,
        args.into,
        keep=args.keep,
        progress=None if args.json else progress("events replayed"),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.identical else 1
    print(
        table(
            ["", "live", "rebuilt"],
            [
                ["schema", report.live_schema, report.rebuilt_schema],
                ["head seq", report.live_head[0], report.rebuilt_head[0]],
                ["head hash", report.live_head[1][:16], report.rebuilt_head[1][:16]],
            ],
        )
    )
    print(
        f"\n{report.events:,} events, {report.accounts:,} accounts, "
        f"{report.events_per_s:,.0f} events/s"
    )
    if report.fold_error:
        print(f"the log does not replay: {report.fold_error}")
    for line in report.balance_differences:
        print(f"balance differs: {line}")
    print("identical" if report.identical else "DIFFERENT")
    return 0 if report.identical else 1


async def _ledger_balance(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.db.connect import create_pool
    from sidecar.db.ledger_store import PostgresLedgerStore

    pool = await create_pool(replace(settings.database, pool_connections_min=1))
    try:
        balance = await PostgresLedgerStore(pool).balance(args.account, args.at_seq)
    finally:
        await pool.close()
    if balance is None:
        print(
            f"account {args.account} does not exist"
            + (f" at seq {args.at_seq}" if args.at_seq is not None else ""),
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(
            json.dumps({"account": args.account, "at_seq": args.at_seq, "balance_minor": balance})
        )
    else:
        print(balance)
    return 0


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.demo.shadow_demo import run_shadow_demo

    demo_settings = replace(settings, database=replace(settings.database, schema=args.schema))
    return await run_shadow_demo(
        demo_settings,
        seconds=args.seconds,
        port=args.port,
        customers=args.customers,
        workers=args.workers,
        seed=args.seed,
        as_json=args.json,
        tracer=tracer_of(provider_from_environ(os.environ)),
    )


async def _demo_ledger(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.demo.ledger_demo import run_demo

    demo_settings = replace(settings, database=replace(settings.database, schema=args.schema))
    return await run_demo(demo_settings, seconds=args.seconds, customers=args.customers)


async def _demo_legacy(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from sidecar.demo.legacy import FaultRates, LegacyService

    rates = FaultRates(
        rounding=args.rounding,
        dropped=args.dropped,
        wrong_balance=args.wrong_balance,
        latency_spike=args.latency_spike,
        server_error=args.server_error,
    )
    service = LegacyService(rates, seed=args.seed)
    service.seed_accounts(args.customers)
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"demo legacy service on http://{args.host}:{args.port}", file=sys.stderr)
    await _until_signalled()
    await runner.cleanup()
    return 0


async def _demo_traffic(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.demo.traffic import run_traffic

    def tick(report: Any) -> None:
        print(f"  {report.requests:,} requests", file=sys.stderr, flush=True)

    refundable: asyncio.Event | None = None
    if args.refunds_on_signal:
        # refunds of payments from before the ledger's bootstrap cannot be shadowed: the
        # demo says when the bootstrap is done
        refundable = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, refundable.set)
    report = await run_traffic(
        args.target.rstrip("/"),
        (args.direct or args.target).rstrip("/"),
        [f"CUST-{i:05d}" for i in range(args.customers)],
        seconds=args.seconds,
        workers=args.workers,
        seed=args.seed,
        on_tick=tick,
        refundable=refundable,
    )
    print(json.dumps(report.summary(), indent=2))
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.bootstrap import bootstrap, record_snapshot
    from sidecar.db.comparison_store import PostgresComparisonStore
    from sidecar.db.connect import create_pool
    from sidecar.db.migrate import migrate
    from sidecar.db.mirror_store import PostgresMirrorLog
    from sidecar.mapping_file import load_route_table

    legacy_url = settings.proxy.legacy_url.rstrip("/")
    source = args.source or legacy_url + "/v1/accounts"
    await migrate(settings.database)
    pool = await create_pool(settings.database)
    try:
        stream = PostgresMirrorLog(pool)
        if args.snapshot:
            accounts = await record_snapshot(stream, source)
            print(f"snapshot of {accounts} accounts from {source} recorded")
            return 0
        if settings.proxy.mapping is None:
            raise ConfigError("proxy.mapping: bootstrap reads balances through the mapping")
        routes = load_route_table(settings.proxy.mapping)
        report = await bootstrap(
            stream,
            PostgresComparisonStore(pool),
            routes,
            legacy_url,
            source,
            progress=progress("balances read"),
        )
    finally:
        await pool.close()
    print(
        table(
            ["", "value"],
            [
                ["accounts listed", report.accounts],
                ["opened in the ledger", report.opened],
                ["balance reads", report.reads],
                ["read again (a movement overlapped)", report.reread],
                ["rounds", report.rounds],
            ],
        )
    )
    if report.not_opened:
        print(f"not opened after {report.rounds} rounds: {', '.join(report.not_opened[:20])}")
        return 1
    return 0


async def _divergences_list(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.db.comparison_store import PostgresComparisonStore
    from sidecar.db.connect import create_pool

    pool = await create_pool(settings.database)
    try:
        rows = await PostgresComparisonStore(pool).divergences(
            args.account, after_seq=args.after, limit=args.limit
        )
    finally:
        await pool.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    body = [
        [
            r["seq"],
            r["account_id"] or "-",
            r["route"],
            ",".join(r["kinds"]),
            "; ".join(
                f"{d['field']}: legacy {d['legacy']} / ledger {d['ledger']}"
                for d in r["differences"]
            ),
            ", ".join(f"{v} {k}" for k, v in r["at_risk"].items()) or "-",
        ]
        for r in rows
    ]
    print(table(["offset", "account", "route", "kind", "values", "at risk (minor)"], body))
    print(f"\n{len(rows)} divergences")
    return 0


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from sidecar.mapping_file import load_route_table
    from sidecar.stream_replay import first_seq_since, replay

    mapping = args.mapping or settings.proxy.mapping
    if mapping is None:
        raise ConfigError("proxy.mapping: a replay applies the stream through a mapping file")
    routes = load_route_table(mapping)
    logging.getLogger("sidecar.applier").setLevel(logging.ERROR)  # the report says it all
    from_seq = args.from_seq
    if args.since is not None:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise ConfigError(f"--since: not an ISO time: {args.since!r}") from None
        if since.tzinfo is None:
            raise ConfigError("--since: give a time zone, e.g. 2026-11-26T10:00:00+00:00")
        from_seq = await first_seq_since(settings, since)
    report = await replay(
        settings,
        routes,
        from_seq=from_seq,
        into=args.into,
        keep=args.keep,
        progress=progress("stream replayed") if args.progress or not args.json else None,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    kinds = sorted(set(report.before) | set(report.after))
    print(
        table(
            ["divergence kind", "live", "replayed", "change"],
            [
                [k, report.before[k], report.after[k], report.after[k] - report.before[k]]
                for k in kinds
            ]
            or [["(none)", 0, 0, 0]],
        )
    )
    print(
        f"\nstream offsets {report.from_seq + 1}..{report.head} replayed into "
        f"{report.replay_schema} in {report.seconds:.1f} s; {len(report.changed)} requests "
        "compare differently now"
    )
    for change in report.changed[:10]:
        print(
            f"  offset {change['seq']}  {change['route']}: {change['before']} -> {change['after']}"
        )
    return 0


async def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.db.connect import create_pool
    from sidecar.db.migrate import migrate
    from sidecar.mapping_file import load_route_table
    from sidecar.reconcile import reconcile

    mapping = args.mapping or settings.proxy.mapping
    if mapping is None:
        raise ConfigError("proxy.mapping: reconcile reads balances through the mapping")
    legacy_url = settings.proxy.legacy_url.rstrip("/")
    await migrate(settings.database)  # the sweep is recorded (reconcile_runs, migration 0008)
    pool = await create_pool(settings.database)
    try:
        report = await reconcile(
            pool,
            load_route_table(mapping),
            legacy_url,
            args.listing or legacy_url + "/v1/accounts",
            partitions=settings.proxy.partitions,
            concurrency=args.concurrency,
            progress=None if args.json else progress("accounts reconciled"),
        )
    finally:
        await pool.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.clean else 1
    rows = [
        [
            d.account_id,
            d.currency or "-",
            "-" if d.legacy_minor is None else d.legacy_minor,
            "-" if d.ledger_minor is None else d.ledger_minor,
            "-" if d.difference_minor is None else d.difference_minor,
            d.first_split_offset if d.first_split_offset is not None else "not seen",
        ]
        for d in report.drifted
    ]
    if rows:
        print(table(["account", "cur", "legacy", "ledger", "ledger - legacy", "split at"], rows))
        print()
    print(
        f"{report.accounts} accounts: {report.matched} agree, {len(report.drifted)} drifted, "
        f"{len(report.unreadable)} unreadable (minor units)"
    )
    return 0 if report.clean else 1


async def _stream_status(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.db.connect import create_pool
    from sidecar.db.migrate import migrate
    from sidecar.stream_status import stream_status

    await migrate(settings.database)  # a schema from before the counts table gets it (empty)
    pool = await create_pool(settings.database)
    try:
        status = await stream_status(pool, settings.proxy.partitions)
    finally:
        await pool.close()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(table(["", "count"], [[k, v] for k, v in status["counts"].items()]))
    print()
    print(table(["consumer", "offset", "behind head"], status["consumers"]))
    gaps = status["gaps"]
    print(f"\ngaps (intents with no outcome, older than the in-doubt age): {len(gaps)}")
    for gap in gaps[:20]:
        print(f"  offset {gap['seq']}  {gap['route']}  request {gap['request_id']}")
    return 0


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.app import Sidecar

    proxy = settings.proxy
    if args.port is not None:
        proxy = replace(proxy, port=args.port)
    if args.mode is not None:
        proxy = replace(proxy, mode=args.mode)
    if args.mapping is not None:
        proxy = replace(proxy, mapping=args.mapping)
    if proxy.mode == "shadow" and proxy.mapping is None:
        raise ConfigError("proxy.mapping: shadow mode needs a mapping file (--mapping FILE)")
    # with a mapping the cutover flag may turn shadowing on at run time: the worker runs
    shadow = proxy.mapping is not None
    separate = shadow and not args.in_process
    metrics_host = settings.telemetry.applier_metrics_host
    tracing = provider_from_environ(os.environ)
    from sidecar.admin.replays import replay_runner

    replays = (
        replay_runner(args.config, settings.database.schema, str(proxy.mapping)) if shadow else None
    )
    sidecar = Sidecar(
        replace(settings, proxy=proxy),
        replays=replays,
        shadow_in_process=shadow and args.in_process,
        tracer=tracer_of(tracing),
        # the port is chosen at each start of the applier (_supervise), this is a first guess
        worker_metrics_url=f"http://{metrics_host}:0/metrics" if separate else None,
    )
    await sidecar.start()
    supervisor: asyncio.Task[None] | None = None
    children: list[asyncio.subprocess.Process] = []
    try:
        if separate:
            # the applier in its own process: its work never holds up a customer's answer
            command = [sys.executable, "-m", "sidecar.cli"]
            if args.config:
                command += ["--config", args.config]
            if args.schema_override:
                command += ["--schema", args.schema_override]
            command += ["apply", "--mapping", str(proxy.mapping)]
            env = {**os.environ, "LEGACY_URL": proxy.legacy_url}

            def start_at(port: int) -> None:  # where the next applier serves its /metrics
                if sidecar.worker_scrape is not None:
                    sidecar.worker_scrape.url = f"http://{metrics_host}:{port}/metrics"

            supervisor = asyncio.create_task(
                _supervise(command, env, children, metrics_host, start_at)
            )
        print(
            f"ledger-sidecar: {proxy.mode} mode on http://{proxy.host}:{sidecar.port} "
            f"in front of {proxy.legacy_url}"
            + (" (the shadow applier runs as its own process)" if supervisor else ""),
            file=sys.stderr,
        )
        await _until_signalled()
    finally:
        if supervisor is not None:
            supervisor.cancel()
        for child in children:
            if child.returncode is None:
                child.terminate()
                await child.wait()
        await sidecar.stop()
        if tracing is not None:
            tracing.shutdown()  # what is still batched is exported
    return 0


async def _supervise(
    command: list[str],
    env: dict[str, str],
    children: list[asyncio.subprocess.Process],
    metrics_host: str,
    started_at: Callable[[int], None],
) -> None:
    """Keep the applier process running: if it exits, say so and start it again (the proxy
    goes on serving customers meanwhile). Each start gets a free port for its /metrics, so a
    port taken meanwhile costs one restart, not every one."""
    pause = 1.0
    while True:
        port = _free_port(metrics_host)
        started_at(port)
        child = await asyncio.create_subprocess_exec(*command, "--metrics-port", str(port), env=env)
        children[:] = [child]
        code = await child.wait()
        print(
            f"ledger-sidecar: the shadow applier exited ({code}); starting it again in {pause} s",
            file=sys.stderr,
        )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 30.0)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


async def _apply(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.app import ShadowWorker
    from sidecar.telemetry.endpoint import serve_metrics

    proxy = settings.proxy
    if args.mapping is not None:
        proxy = replace(proxy, mapping=args.mapping)
    port = (
        settings.telemetry.applier_metrics_port if args.metrics_port is None else args.metrics_port
    )
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port: must be a port number from 0 to 65535, got {port}")
    tracing = provider_from_environ(os.environ)
    worker = ShadowWorker(replace(settings, proxy=proxy), tracer=tracer_of(tracing))
    # /metrics first: a port that cannot be bound stops the command before anything is applied
    try:
        metrics = await serve_metrics(worker.metrics, settings.telemetry.applier_metrics_host, port)
    except OSError as exc:
        raise ConfigError(
            f"telemetry.applier_metrics_port: cannot serve /metrics on {port}: {exc}"
        ) from exc
    try:
        await worker.start()
    except BaseException:
        await metrics.cleanup()
        raise
    assert worker.applier is not None
    signalled = asyncio.create_task(_until_signalled())
    failed = asyncio.create_task(worker.applier.wait())
    try:
        await asyncio.wait({signalled, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        failed.cancel()
        await metrics.cleanup()
        await worker.stop()
        if tracing is not None:
            tracing.shutdown()
    if failed.done() and not failed.cancelled() and failed.exception() is not None:
        # the applier stopped (strict mode, or a bug): say so and exit non-zero, so that the
        # process supervisor (or serve) sees it instead of an idle process
        print(f"ledger-sidecar apply: the applier stopped: {failed.exception()!r}", file=sys.stderr)
        return 1
    return 0


async def _slo(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from sidecar.db.connect import create_pool
    from sidecar.db.migrate import migrate
    from sidecar.db.slo_store import slo_sums
    from sidecar.slo_file import load_slo_file

    slos = load_slo_file(settings.telemetry.slo_file)
    days = args.window_days or slos.window_days
    await migrate(settings.database)
    pool = await create_pool(replace(settings.database, pool_connections_min=1))
    try:
        sums = await slo_sums(pool, datetime.now(UTC) - timedelta(days=days))
    finally:
        await pool.close()
    attained = slos.attainments(sums)
    rows: list[dict[str, Any]] = [
        {
            "slo": a.slo.name,
            "objective": a.slo.objective,
            "window_days": days,
            "good": a.good,
            "total": a.total,
            "attainment": a.ratio,
            "error_budget_remaining": a.budget_left,
            "met": a.met,
        }
        for a in attained
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.3f} %"

    print(
        table(
            ["SLO", "objective", "good / total", "attained", "budget left", "met"],
            [
                [
                    a.slo.name,
                    percent(a.slo.objective),
                    f"{a.good:,} / {a.total:,}",
                    percent(a.ratio),
                    percent(a.budget_left),
                    {True: "yes", False: "NO", None: "no events"}[a.met],
                ]
                for a in attained
            ],
        )
    )
    print(
        f"\nover the last {days} days, from the durable counts in schema {settings.database.schema}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger-sidecar",
        description="Shadow a legacy ledger with a double-entry ledger on PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config", help="TOML config file (default: $LEDGER_SIDECAR_CONFIG, else built-ins)"
    )
    parser.add_argument(
        "--schema", dest="schema_override", help="ledger schema (overrides database.schema)"
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    db = groups.add_parser("db", help="database set-up").add_subparsers(
        dest="command", required=True
    )
    p = db.add_parser("migrate", help="apply pending schema migrations (safe to repeat)")
    p.set_defaults(handler=_db_migrate)
    p = db.add_parser("ping", help="exit 0 if the database answers")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_db_ping)

    ledger = groups.add_parser("ledger", help="ledger checks and reads").add_subparsers(
        dest="command", required=True
    )
    p = ledger.add_parser("verify", help="check hash chain, rows, trial balance and balances")
    p.add_argument("--json", action="store_true", help='print {"ok", "checks": [...]}')
    p.set_defaults(handler=_ledger_verify)
    p = ledger.add_parser("rebuild", help="replay the event log into a fresh schema and compare")
    p.add_argument("--into", help="schema to rebuild into (default: <schema>_rebuild)")
    p.add_argument("--keep", action="store_true", help="keep the rebuilt schema afterwards")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_ledger_rebuild)
    p = ledger.add_parser("balance", help="an account's balance in minor units")
    p.add_argument("account")
    p.add_argument("--at-seq", type=int, help="balance as of this event-log seq")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_ledger_balance)

    p = groups.add_parser("serve", help="run the sidecar: the proxy (and capture, in shadow mode)")
    p.add_argument("--port", type=int, help="listen port (default: proxy.port)")
    p.add_argument("--mode", choices=["legacy", "shadow"], help="default: proxy.mode")
    p.add_argument("--mapping", help="legacy-route mapping file (default: proxy.mapping)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the shadow applier in this process instead of its own",
    )
    p.set_defaults(handler=_serve, service=True)

    p = groups.add_parser(
        "apply", help="run the shadow applier and in-doubt resolver alone (serve starts it)"
    )
    p.add_argument("--mapping", help="legacy-route mapping file (default: proxy.mapping)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics here (default: telemetry.applier_metrics_port)",
    )
    p.set_defaults(handler=_apply, service=True)

    p = groups.add_parser(
        "slo", help="SLO attainment and error budgets left, from the durable counts"
    )
    p.add_argument("--window-days", type=int, help="default: the SLO file's window")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_slo)

    p = groups.add_parser(
        "demo",
        help="shadow a faulty demo legacy service under traffic; ends with a verdict table",
    )
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--port", type=int, default=0, help="the sidecar's port (default: any)")
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--schema", default="shadow_demo")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(handler=_demo)
    demo = p.add_subparsers(dest="part", metavar="PART")
    q = demo.add_parser("ledger", help="a short self-checking ledger-core demo")
    q.add_argument("--seconds", type=float, default=5.0)
    q.add_argument("--customers", type=int, default=200)
    q.add_argument("--schema", default="ledger_demo")
    q.set_defaults(handler=_demo_ledger)
    q = demo.add_parser("legacy", help="run the demo legacy service alone")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=8081)
    q.add_argument("--customers", type=int, default=200)
    q.add_argument("--seed", type=int, default=7)
    for name in ("rounding", "dropped", "wrong-balance", "latency-spike", "server-error"):
        q.add_argument(f"--{name}", type=float, default=0.0, help="fault probability (0..1)")
    q.set_defaults(handler=_demo_legacy)
    q = demo.add_parser("traffic", help="run the traffic generator against a URL")
    q.add_argument("--target", default="http://127.0.0.1:8080", help="the sidecar's URL")
    q.add_argument("--direct", help="the legacy service's URL, for direct reads")
    q.add_argument("--seconds", type=float, default=30.0)
    q.add_argument("--customers", type=int, default=200)
    q.add_argument("--workers", type=int, default=8)
    q.add_argument("--seed", type=int, default=1)
    q.add_argument(
        "--refunds-on-signal",
        action="store_true",
        help="refund only payments made after SIGUSR1 (sent once the ledger is bootstrapped)",
    )
    q.set_defaults(handler=_demo_traffic)

    add_admin_parsers(groups)
    add_release_commands(groups)

    p = groups.add_parser(
        "bootstrap",
        help="open the legacy accounts in the ledger with their balances, under live traffic",
    )
    p.add_argument("--source", help="listing URL or JSON file (default: <legacy_url>/v1/accounts)")
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="record the file's balances as one snapshot (exact only if nothing moved)",
    )
    p.set_defaults(handler=_bootstrap)

    divergences = groups.add_parser("divergences", help="what the comparisons found")
    sub = divergences.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="stored divergences, oldest first")
    p.add_argument("--account", help="only this account's")
    p.add_argument("--after", type=int, default=0, help="only after this stream offset")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_divergences_list)

    p = groups.add_parser(
        "replay", help="rebuild a fresh ledger from the stream and compare again (before/after)"
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_seq", type=int, default=0, metavar="OFFSET")
    start.add_argument("--since", metavar="TIME", help="ISO time with zone")
    p.add_argument("--into", help="schema to replay into (default: <schema>_replay)")
    p.add_argument("--mapping", help="mapping file (default: proxy.mapping)")
    p.add_argument("--keep", action="store_true", help="keep the replayed schema")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--progress", action="store_true", help="report progress on standard error with --json too"
    )
    p.set_defaults(handler=_replay)

    p = groups.add_parser(
        "reconcile", help="every account's balance in both systems; drift and where it began"
    )
    p.add_argument(
        "--listing", help="legacy account listing URL (default: <legacy_url>/v1/accounts)"
    )
    p.add_argument("--mapping", help="mapping file (default: proxy.mapping)")
    p.add_argument("--concurrency", type=int, default=16, help="legacy reads at once")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_reconcile)

    stream = groups.add_parser("stream", help="the mirror stream")
    sub = stream.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="served, captured, applied, compared; gaps by offset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_stream_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args.config, os.environ)
        if args.schema_override:
            raw = {"schema": args.schema_override}
            checked = config.from_dict({"database": raw}).database.schema
            settings = replace(settings, database=replace(settings.database, schema=checked))
    except ConfigError as exc:
        print(f"ledger-sidecar: {exc.message}", file=sys.stderr)
        return 2
    # JSON lines: on standard output for the services (for a log shipper), on standard error
    # for the commands whose standard output is their report
    configure_logging(
        settings.log_level,
        sys.stdout if getattr(args, "service", False) else sys.stderr,
        sensitive=settings.telemetry.sensitive_fields,
    )
    handler: Handler = args.handler
    try:
        runtime.tune_gc()
        return runtime.run(handler(settings, args))
    except AdminUnreachable as exc:
        print(f"ledger-sidecar: {exc.message}", file=sys.stderr)
        print("  is `ledger-sidecar serve` running? see --url and [admin]", file=sys.stderr)
        return 3
    except DatabaseUnreachable as exc:
        print(f"ledger-sidecar: {exc.message}", file=sys.stderr)
        print(
            "  is PostgreSQL running? set DATABASE_URL, or run ./scripts/demo which starts one",
            file=sys.stderr,
        )
        return 3
    except ConfigError as exc:
        print(f"ledger-sidecar: [{exc.code}] {exc.message}", file=sys.stderr)
        return 2
    except SidecarError as exc:
        print(f"ledger-sidecar: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
