"""Shared fixtures: settings from the environment, and a fresh ledger schema per test.

Integration tests never share state: each gets its own PostgreSQL schema, migrated from
scratch and dropped afterwards, so they can run in any order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest
from sidecar import config
from sidecar.config import DatabaseSettings, Settings
from sidecar.db.connect import create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import drop_schema, migrate
from sidecar.posting import Ledger


@pytest.fixture(scope="session")
def settings() -> Settings:
    loaded = config.load(None, os.environ)
    # any free port for the admin API: tests run several sidecars
    return replace(loaded, admin=replace(loaded.admin, port=0))


def fresh_schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[DatabaseSettings]:
    """A migrated, empty ledger schema of its own, dropped after the test."""
    database = replace(settings.database, schema=fresh_schema_name())
    await migrate(database)
    try:
        yield database
    finally:
        await drop_schema(database, database.schema)


@pytest.fixture
async def pool(db: DatabaseSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(replace(db, pool_connections_max=6))
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def conn(db: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    """A raw superuser connection to the test schema, for inspecting and tampering."""
    connection = await asyncpg.connect(db.url.reveal(), server_settings={"search_path": db.schema})
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def ledger(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Ledger]:
    async with Ledger(PostgresLedgerStore(pool), settings.ledger) as running:
        yield running
