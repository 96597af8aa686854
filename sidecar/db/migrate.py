"""Schema migrations: numbered SQL files applied in order, each once, recorded with a checksum.

Guarantees (tests/integration/test_migrate.py):
- Running ``migrate`` twice applies nothing the second time.
- Running it from several processes at once applies each file exactly once (an advisory lock
  per schema serialises migrators; the losers find the work done).
- A file changed after it was applied, or a database newer than the code, stops the migrator
  with a clear error instead of guessing.
- Each file runs in its own transaction. Nothing switches the append-only triggers off for
  it: a migration that must rewrite history says so with ``ALTER TABLE ... DISABLE TRIGGER``,
  which only the tables' owner may run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from sidecar.config import DatabaseSettings
from sidecar.db.connect import connection
from sidecar.errors import MigrationError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    schema: str
    applied: tuple[str, ...]
    already: tuple[str, ...]


def discover() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("sidecar.db").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def migrate(settings: DatabaseSettings) -> MigrationReport:
    """Bring ``settings.schema`` up to date. Safe to run twice and concurrently."""
    migrations = discover()
    schema = quote_ident(settings.schema)
    async with connection(settings) as conn:
        await conn.execute(
            "SELECT pg_advisory_lock(hashtext('ledger_sidecar.migrate:' || $1))", settings.schema
        )
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                        version    integer PRIMARY KEY,
                        name       text NOT NULL,
                        checksum   text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch(
                # schema is a validated identifier, quoted; values are parameters
                f"SELECT version, name, checksum FROM {schema}.schema_migrations "  # noqa: S608
                "ORDER BY version"
            )
            applied = {r["version"]: r for r in rows}
            known = {m.version for m in migrations}
            newer = sorted(set(applied) - known)
            if newer:
                raise MigrationError(
                    f"schema {settings.schema} has migrations {newer} this version does not "
                    "know: the database is newer than the code"
                )
            done: list[str] = []
            ran: list[str] = []
            for m in migrations:
                label = f"{m.version:04d}_{m.name}"
                if m.version in applied:
                    if applied[m.version]["checksum"] != m.checksum:
                        raise MigrationError(
                            f"migration {label} changed after it was applied to "
                            f"{settings.schema}; add a new migration instead"
                        )
                    done.append(label)
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {schema}")
                    try:
                        await conn.execute(m.sql)
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(f"migration {label} failed: {exc}") from exc
                    await conn.execute(
                        f"INSERT INTO {schema}.schema_migrations (version, name, checksum) "  # noqa: S608
                        "VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                ran.append(label)
            return MigrationReport(settings.schema, tuple(ran), tuple(done))
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtext('ledger_sidecar.migrate:' || $1))",
                settings.schema,
            )


async def drop_schema(settings: DatabaseSettings, schema: str) -> None:
    """Remove a whole ledger schema (tests, rebuild scratch space). Never the configured one."""
    async with connection(settings) as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
