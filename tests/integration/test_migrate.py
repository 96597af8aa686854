"""Migrations apply once, in order, even when several migrators race."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.migrate import discover, drop_schema, migrate
from sidecar.errors import MigrationError

from tests.conftest import fresh_schema_name


async def test_running_migrate_twice_applies_nothing_the_second_time(db: DatabaseSettings) -> None:
    again = await migrate(db)
    assert again.applied == ()
    assert len(again.already) == len(discover())


async def test_concurrent_migrators_apply_each_file_exactly_once(settings: Settings) -> None:
    database = replace(settings.database, schema=fresh_schema_name())
    try:
        reports = await asyncio.gather(*(migrate(database) for _ in range(6)))
        assert sum(len(r.applied) for r in reports) == len(discover())
        conn = await asyncpg.connect(database.url.reveal())
        try:
            count = await conn.fetchval(
                f'SELECT count(*) FROM "{database.schema}".schema_migrations'
            )
        finally:
            await conn.close()
        assert count == len(discover())
    finally:
        await drop_schema(database, database.schema)


async def test_a_migration_changed_after_it_was_applied_stops_the_migrator(
    db: DatabaseSettings, conn: asyncpg.Connection
) -> None:
    await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(db)


async def test_a_database_newer_than_the_code_stops_the_migrator(
    db: DatabaseSettings, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
    )
    with pytest.raises(MigrationError, match="newer than the code"):
        await migrate(db)
