"""PostgreSQL stopped under traffic: the customer path keeps answering, the shadow path counts
what it lost and, once PostgreSQL is back, resolves the requests left in doubt.

This test runs its own throwaway PostgreSQL cluster (initdb + pg_ctl from the machine's
PostgreSQL install), because it stops the server: the shared one stays untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from sidecar.config import DatabaseSettings, Secret, Settings
from sidecar.demo.shadow_demo import ShadowStack
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.verify import verify

from tests.integration.test_shadow import CUSTOMERS, shadow_settings, traffic


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


@dataclass
class PrivateCluster:
    data: Path
    port: int
    pg_ctl: str
    as_owner: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_owner, self.pg_ctl, "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")  # as abrupt as a crash


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("initdb and pg_ctl are needed to run a throwaway PostgreSQL")
    as_owner: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="ls-outage-"))
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    subprocess.run(
        [*as_owner, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PrivateCluster(data, port, pg_ctl, as_owner)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_postgres_stopped_under_traffic_costs_customers_nothing_and_loses_nothing_silently(
    settings: Settings, cluster: PrivateCluster
) -> None:
    db = DatabaseSettings(url=Secret(cluster.url), schema="ledger", connect_timeout_s=1.0)
    live = shadow_settings(replace(settings, database=db), db)
    live = replace(live, capture=replace(live.capture, append_attempts_max=2))
    async with ShadowStack(live, customers=CUSTOMERS) as stack:
        await stack.bootstrap()
        died = await die_between_intent_and_outcome(stack)
        load = asyncio.create_task(traffic(stack, 4.0, seed=21))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.stop)
        await asyncio.sleep(1.5)  # customers keep coming while the database is down
        await asyncio.to_thread(cluster.start)
        report = await load
        capture = stack.sidecar.proxy.capture  # type: ignore[union-attr]
        assert capture is not None
        await stack.settle(timeout_s=60)
        applier = stack.sidecar.applier
        assert applier is not None
        resolver = stack.sidecar.resolver
        assert resolver is not None
        stream = applier.stream
        head = await stream.head()
        in_doubt_left = await stream.in_doubt(head)
        found = await applier.comparisons.verdicts(list(died.values()))
        verdicts = {name: found[request_id][0] for name, request_id in died.items()}
        legacy_payments = sum(key.startswith("outage-") for key in stack.legacy.state.payments)
    # the customer path: every request answered by the legacy service, none by the sidecar
    assert report.errors == 0
    assert all(status < 500 for status in report.by_status), report.by_status
    # the shadow path: what could not be written is counted, by reason
    assert sum(capture.stats.dropped.values()) > 0, capture.stats
    assert set(capture.stats.dropped) <= {"store_error", "queue_full"}
    assert capture.stats.recorded == capture.stats.committed + sum(capture.stats.dropped.values())
    # and what was left in doubt has been resolved
    assert in_doubt_left == []
    assert applier.stats.retries > 0  # the applier waited the outage out
    assert (await verify(db)).ok
    # the two requests the sidecar "died" in the middle of were resolved, never replayed
    assert resolver.totals.resolved.get("looked_up", 0) >= 1
    assert resolver.totals.resolved.get("not_processed", 0) >= 1
    assert verdicts == {"processed": "match", "never_sent": "skipped"}
    assert legacy_payments == 1  # the lookup made no payment happen


async def die_between_intent_and_outcome(stack: ShadowStack) -> dict[str, str]:
    """What a sidecar that died after recording an intent leaves: one request that reached
    the legacy service, one that never did; neither has an outcome in the stream."""
    applier = stack.sidecar.applier
    assert applier is not None
    ids = {}
    for name, send in (("processed", True), ("never_sent", False)):
        key = f"outage-{name}"
        body = orjson.dumps(
            {
                "beneficiary": {"account_number": "CUST-00002"},
                "amount": {"value": "1.00", "currency": "EUR"},
            }
        )
        path = "/v1/accounts/CUST-00001/payments"
        ids[name] = f"died-{name}"
        await applier.stream.append(
            [
                MirrorRecord(
                    1,
                    RecordKind.INTENT,
                    ids[name],
                    {
                        "method": "POST",
                        "path": path,
                        "query": [],
                        "headers": [["Idempotency-Key", key], ["Content-Type", "application/json"]],
                        "body": body.decode(),
                    },
                    route="payment",
                )
            ]
        )
        if send:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    stack.legacy_url + path,
                    data=body,
                    headers={"Idempotency-Key": key, "Content-Type": "application/json"},
                ) as answer,
            ):
                assert answer.status == 201
    return ids
