"""The ledger-sidecar command as an operator runs it: a real process, real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_schema_name

ROOT = Path(__file__).parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env or dict(os.environ),
        check=False,
    )


@pytest.fixture
def schema() -> Iterator[str]:
    name = fresh_schema_name()
    yield name
    cli("--schema", name, "ledger", "verify", "--json")  # keeps nothing; drop below
    import asyncio

    from sidecar import config
    from sidecar.db.migrate import drop_schema

    asyncio.run(drop_schema(config.load(None, os.environ).database, name))


def test_migrate_twice_then_verify_an_empty_ledger(schema: str) -> None:
    first = cli("--schema", schema, "db", "migrate")
    second = cli("--schema", schema, "db", "migrate")
    assert first.returncode == 0 and "applied          0001_ledger" in first.stdout
    assert second.returncode == 0 and "(0 applied now)" in second.stdout
    verified = cli("--schema", schema, "ledger", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True
    assert all({"name", "ok", "detail"} <= set(c) for c in report["checks"])


def test_demo_then_verify_rebuild_and_tamper(schema: str) -> None:
    demo = cli("demo", "ledger", "--seconds", "1", "--customers", "20", "--schema", schema)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "OK: the demo ledger" in demo.stdout
    rebuilt = cli("--schema", schema, "ledger", "rebuild", "--json")
    assert rebuilt.returncode == 0 and json.loads(rebuilt.stdout)["ok"] is True
    balance = cli("--schema", schema, "ledger", "balance", "merchant-hot", "--json")
    assert balance.returncode == 0 and json.loads(balance.stdout)["balance_minor"] > 0

    import asyncio

    import asyncpg

    async def tamper() -> None:
        conn = await asyncpg.connect(
            os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
            server_settings={"search_path": schema},
        )
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute("DELETE FROM events WHERE seq = 5")
        finally:
            await conn.close()

    asyncio.run(tamper())
    broken = cli("--schema", schema, "ledger", "verify", "--json")
    assert broken.returncode == 1
    chain = next(c for c in json.loads(broken.stdout)["checks"] if c["name"] == "hash_chain")
    assert not chain["ok"] and "seq 5" in chain["detail"]


def test_bad_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ledger]\nbatch_commands_max = -1\n")
    result = cli("--config", str(bad), "db", "ping")
    assert result.returncode == 2 and "ledger.batch_commands_max" in result.stderr


def test_an_unreachable_database_exits_3_and_says_what_to_do() -> None:
    env = dict(os.environ, DATABASE_URL="postgresql://postgres:secret@127.0.0.1:1/postgres")
    result = cli("db", "ping", env=env)
    assert result.returncode == 3
    assert "is PostgreSQL running" in result.stderr and "secret" not in result.stderr
