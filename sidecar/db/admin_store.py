"""The admin side's state in PostgreSQL: the cutover flag, API tokens, divergence triage and
the audit log (migration 0008_cutover).

Guarantees (tests/integration/test_admin_store.py):
- Every change writes exactly one audit record, by ``append_audit``, in the transaction of its
  effect: the effect and its record commit together or not at all.
- A change that is refused (bad rules, no such token or divergence) changes nothing; the
  caller records the refused attempt with ``record`` in a transaction of its own.
- Flag changes are serialised (the flag row is locked) and each makes the next version.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from sidecar.db.ledger_store import load_view, post_batch
from sidecar.domain.audit import AuditRecord, Role
from sidecar.domain.flags import FlagRules, Mode, rules_from
from sidecar.domain.ledger import Transfer, keys_needed, plan_batch
from sidecar.domain.outcome import TransferOutcome
from sidecar.errors import InvalidCommand, PlanStale, SidecarError

TOKEN_PREFIX = "lsk"
_ID_ALPHABET = string.ascii_lowercase + string.digits


class NotFound(InvalidCommand):
    code = "not_found"


class AdjustmentRefused(SidecarError):
    """The ledger would refuse the adjustment, or could not take it: nothing was written."""

    code = "adjustment_refused"


#: plans of one adjustment before giving up (each retry follows a concurrent commit)
ADJUST_ATTEMPTS = 5


class AdminExists(InvalidCommand):
    """The first admin token is made once; after that, an admin makes tokens (POST /tokens)."""

    code = "admin_exists"


#: serialises first-admin bootstraps (two at once must not both find no admin)
_BOOTSTRAP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('ledger_sidecar.admin_bootstrap'))"


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def secret_hash(secret: str) -> bytes:
    # the secret is 256 random bits: a fast hash is enough (no dictionary to guess from)
    return hashlib.sha256(secret.encode()).digest()


def split_token(presented: str) -> tuple[str, str] | None:
    """``lsk_<id>_<secret>`` into (id, secret), or None if it is not shaped so."""
    if not presented.isascii():  # a token is ASCII: anything else is not one of ours
        return None
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != 12:
        return None
    return parts[1], parts[2]


_FLAG = "SELECT version, default_mode, cohorts FROM flag_state"
_APPEND = "SELECT append_audit($1, $2, $3, $4)"
_HAS_ADMIN = "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL)"


class PostgresAdminStore:
    def __init__(self, pool: asyncpg.Pool, default_mode: Mode) -> None:
        self.pool = pool
        #: the flag's default until the first change (the configured proxy.mode)
        self.default_mode = default_mode

    # --- the flag ---------------------------------------------------------------------------

    def _rules(self, row: Any) -> FlagRules:
        cohorts = (
            orjson.loads(row["cohorts"]) if isinstance(row["cohorts"], str) else row["cohorts"]
        )
        return rules_from(row["default_mode"] or self.default_mode.value, cohorts, row["version"])

    async def flag_rules(self) -> FlagRules:
        async with self.pool.acquire() as conn:
            return self._rules(await conn.fetchrow(_FLAG))

    async def flag_version(self) -> int:
        async with self.pool.acquire() as conn:
            version: int = await conn.fetchval("SELECT version FROM flag_state")
            return version

    async def change_flag(
        self, change: Callable[[FlagRules], FlagRules], audit: AuditRecord
    ) -> tuple[FlagRules, FlagRules, int]:
        """Apply ``change`` to the current rules and record it: (before, after, audit seq).
        ``change`` raising (FlagRulesInvalid) changes nothing."""
        async with self.pool.acquire() as conn, conn.transaction():
            before = self._rules(await conn.fetchrow(_FLAG + " FOR UPDATE"))
            after = change(before)
            await conn.execute(
                "UPDATE flag_state SET version = $1, default_mode = $2, cohorts = $3::jsonb,"
                " changed_at = clock_timestamp()",
                after.version,
                after.default.value,
                orjson.dumps([c.document() for c in after.cohorts]).decode(),
            )
            record = replace(
                audit,
                before=before.document(),
                after=after.document(),
                produced={**(audit.produced or {}), "flag_version": after.version},
            )
            seq = await self._append(conn, record)
            return before, after, seq

    # --- the audit log ----------------------------------------------------------------------

    @staticmethod
    async def _append(conn: asyncpg.Connection, record: AuditRecord) -> int:
        seq: int = await conn.fetchval(
            _APPEND, record.actor, record.action, record.allowed, record.content()
        )
        return seq

    async def record(self, record: AuditRecord) -> int:
        """An audit record on its own (a refused attempt, a read that is audited)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._append(conn, record)

    async def audit_log(
        self, after_seq: int = 0, limit: int = 100, action: str | None = None
    ) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, recorded_at, content, hash FROM audit_log"
                " WHERE seq > $1 AND ($3::text IS NULL OR action = $3)"
                " ORDER BY seq LIMIT $2",
                after_seq,
                limit,
                action,
            )
        return [
            {
                "seq": r["seq"],
                "recorded_at": r["recorded_at"].isoformat(),
                **orjson.loads(r["content"]),
                "hash": bytes(r["hash"]).hex(),
            }
            for r in rows
        ]

    # --- tokens -----------------------------------------------------------------------------

    async def create_token(self, name: str, role: Role, audit: AuditRecord) -> tuple[Token, str]:
        """A new token and its one-time secret text (``lsk_<id>_<secret>``)."""
        return await self._create_token(name, role, audit, first_admin=False)

    async def create_first_admin(self, name: str, audit: AuditRecord) -> tuple[Token, str]:
        """The first admin token, only while no live admin token exists; checked and made in
        one transaction under a lock, so two bootstraps at once make one token."""
        return await self._create_token(name, Role.ADMIN, audit, first_admin=True)

    async def _create_token(
        self, name: str, role: Role, audit: AuditRecord, *, first_admin: bool
    ) -> tuple[Token, str]:
        token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        secret = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn, conn.transaction():
            if first_admin:
                await conn.execute(_BOOTSTRAP_LOCK)
                if await conn.fetchval(_HAS_ADMIN):
                    raise AdminExists(
                        "an admin token exists: ask its holder (POST /admin/v1/tokens)"
                    )
            row = await conn.fetchrow(
                "INSERT INTO api_tokens (id, name, role, secret_hash, created_by)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING *",
                token_id,
                name,
                role.value,
                secret_hash(secret),
                audit.actor,
            )
            token = _token(row)
            produced = {"token": token_id}
            recorded = replace(audit, target=token_id, after=token.document(), produced=produced)
            await self._append(conn, recorded)
        return token, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    async def revoke_token(self, token_id: str, audit: AuditRecord) -> Token:
        async with self.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(
                "SELECT * FROM api_tokens WHERE id = $1 FOR UPDATE", token_id
            )
            if before is None:
                raise NotFound(f"no token {token_id}")
            row = await conn.fetchrow(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, clock_timestamp())"
                " WHERE id = $1 RETURNING *",
                token_id,
            )
            token = _token(row)
            await self._append(
                conn,
                replace(
                    audit, target=token_id, before=_token(before).document(), after=token.document()
                ),
            )
        return token

    async def tokens(self) -> list[Token]:
        async with self.pool.acquire() as conn:
            return [
                _token(r) for r in await conn.fetch("SELECT * FROM api_tokens ORDER BY created_at")
            ]

    async def authenticate(self, presented: str) -> Token | None:
        """The live token ``presented`` is, or None (unknown, revoked, malformed)."""
        parts = split_token(presented)
        if parts is None:
            return None
        token_id, secret = parts
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM api_tokens WHERE id = $1", token_id)
        if row is None or row["revoked_at"] is not None:
            return None
        if not secrets.compare_digest(bytes(row["secret_hash"]), secret_hash(secret)):
            return None
        return _token(row)

    async def has_admin(self) -> bool:
        async with self.pool.acquire() as conn:
            found: bool = await conn.fetchval(_HAS_ADMIN)
            return found

    # --- manual adjustments -----------------------------------------------------------------

    async def adjust(self, transfer: Transfer, audit: AuditRecord) -> tuple[TransferOutcome, int]:
        """Post a compensating transfer through the ledger's own planning and commit, with its
        audit record in the same transaction: (its outcome, the audit record's seq).

        A transfer the ledger would refuse (funds, a closed account) is not written: refused.
        The same key again with the same legs changes nothing and says so (replayed). The
        shadow applier, which caches balances, finds its next plan on these accounts stale and
        reads them again (one retry, logged)."""
        accounts, keys = keys_needed([transfer])
        for _ in range(ADJUST_ATTEMPTS):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    plan = plan_batch(await load_view(conn, accounts, keys), [transfer])
                    (result,) = plan.results
                    if isinstance(result, SidecarError):
                        raise result
                    assert isinstance(result, TransferOutcome)
                    if not result.posted and not result.replayed:
                        why = result.rejection.value if result.rejection else "rejected"
                        raise AdjustmentRefused(f"the ledger refuses it: {why}; nothing written")
                    seq = result.seq
                    if plan.events:
                        ids = list(plan.balances)
                        first = await post_batch(
                            conn,
                            list(plan.events),
                            ids,
                            [plan.balances[i].before_minor for i in ids],
                            [plan.balances[i].after_minor for i in ids],
                        )
                        index = plan.event_of[0]
                        seq = first + index if index is not None else None
                    produced = {"ledger_seq": seq, "key": transfer.key, "replayed": result.replayed}
                    audit_seq = await self._append(conn, replace(audit, produced=produced))
                    return replace(result, seq=seq), audit_seq
            except PlanStale:
                continue  # the applier moved a balance first: plan again
        raise AdjustmentRefused(f"the accounts kept changing: tried {ADJUST_ATTEMPTS} times")

    # --- divergence triage ------------------------------------------------------------------

    async def triage(
        self, seq: int, state: str, note: str | None, audit: AuditRecord
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM comparisons WHERE seq = $1 AND outcome = 'mismatch')",
                seq,
            )
            if not exists:
                raise NotFound(f"no divergence at seq {seq}")
            before = await conn.fetchrow(
                "SELECT state, note, actor FROM divergence_triage WHERE seq = $1 FOR UPDATE", seq
            )
            await conn.execute(
                "INSERT INTO divergence_triage (seq, state, note, actor) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (seq) DO UPDATE SET state = $2, note = $3, actor = $4,"
                " changed_at = clock_timestamp()",
                seq,
                state,
                note,
                audit.actor,
            )
            after = {"state": state, "note": note, "actor": audit.actor}
            await self._append(
                conn,
                replace(
                    audit,
                    target=f"divergence/{seq}",
                    before=dict(before) if before is not None else {"state": "open"},
                    after=after,
                ),
            )
        return {"seq": seq, **after}

    async def triage_states(self, seqs: list[int]) -> dict[int, dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, state, note, actor, changed_at FROM divergence_triage"
                " WHERE seq = ANY($1)",
                seqs,
            )
        return {
            r["seq"]: {
                "state": r["state"],
                "note": r["note"],
                "actor": r["actor"],
                "changed_at": r["changed_at"].isoformat(),
            }
            for r in rows
        }


def _token(row: Any) -> Token:
    return Token(
        row["id"],
        row["name"],
        Role(row["role"]),
        row["created_at"],
        row["created_by"],
        row["revoked_at"],
    )


__all__ = [
    "AdjustmentRefused",
    "NotFound",
    "PostgresAdminStore",
    "Token",
    "secret_hash",
    "split_token",
]
