"""Opening connections and pools for one ledger schema, and turning driver errors into ours.

This package is the only place that imports asyncpg. Errors are translated by class and
SQLSTATE, never by message text.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from sidecar.config import DatabaseSettings
from sidecar.errors import (
    AccountsTaken,
    AppendOnlyViolation,
    DatabaseUnreachable,
    KeysTaken,
    LedgerIntegrityError,
    LedgerUnavailable,
    PlanStale,
    SidecarError,
)

#: SQLSTATEs raised on purpose by our SQL (see migrations/0001_ledger.sql)
APPEND_ONLY = "LS001"
STALE_BALANCES = "LS409"
PLAN_DISAGREES = "LS500"


def server_settings(settings: DatabaseSettings) -> dict[str, str]:
    return {
        "search_path": settings.schema,
        "statement_timeout": str(int(settings.statement_timeout_s * 1000)),
        "application_name": "ledger-sidecar",
    }


async def connect(settings: DatabaseSettings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(
            settings.url.reveal(),
            timeout=settings.connect_timeout_s,
            server_settings=server_settings(settings),
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnreachable(f"cannot connect to {settings.url}: {exc}") from exc


async def create_pool(settings: DatabaseSettings) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            settings.url.reveal(),
            min_size=settings.pool_connections_min,
            max_size=settings.pool_connections_max,
            timeout=settings.connect_timeout_s,
            server_settings=server_settings(settings),
            reset=_keep_session,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnreachable(f"cannot connect to {settings.url}: {exc}") from exc
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's default reset round trip
    (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, advisory unlock): no code of ours changes
    session state on a pooled connection (no SET, LISTEN, cursor or advisory lock; the
    migration lock takes its own connection). asyncpg still rolls back an open transaction
    before calling this. The saved round trip is on every pooled call, capture's group commit
    on the customer path among them."""


@contextlib.asynccontextmanager
async def connection(settings: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(settings)
    try:
        yield conn
    finally:
        await conn.close(timeout=settings.connect_timeout_s)


DRIVER_ERRORS = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError)


@contextlib.asynccontextmanager
async def pooled(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection from ``pool``; driver errors leave as the SidecarError they mean."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def translate(exc: BaseException) -> SidecarError:
    """Map a driver error to the SidecarError it means; unknown errors become integrity errors."""
    if isinstance(exc, SidecarError):
        return exc
    if isinstance(exc, asyncpg.UniqueViolationError):
        constraint = exc.constraint_name or ""
        if constraint.startswith("accounts"):
            return AccountsTaken(f"account opened concurrently ({constraint})")
        if constraint.startswith("transfers"):
            return KeysTaken(f"key decided concurrently ({constraint})")
        return LedgerIntegrityError(f"database refused the write ({constraint}): {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None)
        detail: Any = getattr(exc, "detail", None) or ""
        if state == STALE_BALANCES:
            ids = frozenset(x.strip() for x in str(detail).split(",") if x.strip())
            return PlanStale("balances changed since the batch was planned", ids)
        if state == APPEND_ONLY:
            return AppendOnlyViolation(str(exc))
        if isinstance(exc, asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
            return LedgerUnavailable(f"database connection failed: {exc}")
        if isinstance(
            exc,
            asyncpg.exceptions.CannotConnectNowError
            | asyncpg.exceptions.AdminShutdownError
            | asyncpg.exceptions.QueryCanceledError,
        ):
            return LedgerUnavailable(f"database unavailable: {exc}")
        return LedgerIntegrityError(f"database refused the write ({state}): {exc} {detail}")
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return LedgerUnavailable(f"database connection failed: {exc}")
    return LedgerIntegrityError(f"unexpected database error: {exc!r}")
