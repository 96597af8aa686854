"""The audit trail of admin actions: what one record says, and who may do what.

Every admin action, allowed or refused, is one record: actor, role, action, target, reason,
the state before and after, the trace id, and what it produced (a flag version, a ledger
event). Records are chained like the ledger's event log (``sidecar.domain.chain``) by the
database function ``append_audit``, in the transaction of the action's effect.

Guarantees (tests/unit/test_audit.py):
- A record's content is canonical JSON of its fields: one text for one meaning, so its hash
  is reproducible by ``ledger verify``.
- Roles grant the least each needs: a viewer reads; an operator also triages divergences,
  starts replays and makes manual adjustments; a release manager also changes modes and flips;
  only an admin manages tokens or forces a flip past a failing readiness check.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sidecar.domain.chain import canonical


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    RELEASE_MANAGER = "release_manager"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"
    TRIAGE = "triage"
    REPLAY = "replay"
    ADJUST = "adjust"
    CHANGE_MODE = "change_mode"
    FORCE_FLIP = "force_flip"
    MANAGE_TOKENS = "manage_tokens"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset(
        {Permission.READ, Permission.TRIAGE, Permission.REPLAY, Permission.ADJUST}
    ),
    Role.RELEASE_MANAGER: frozenset({Permission.READ, Permission.CHANGE_MODE}),
    Role.ADMIN: frozenset(Permission),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in GRANTS[role]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One admin action as the audit log keeps it."""

    actor: str  # the token's name (or "bootstrap", "anonymous")
    role: str | None
    action: str  # e.g. "flag.set_default", "divergence.resolve", "token.create"
    allowed: bool
    target: str | None = None
    reason: str | None = None
    before: Any = None
    after: Any = None
    trace_id: str | None = None
    #: what the action made: {"flag_version": 7}, {"ledger_seq": 1234}, {"token": "ab12..."}
    produced: Any = None
    #: for a refused attempt: the error code and message
    refusal: dict[str, Any] | None = None
    #: for a flip: the readiness evidence at that moment
    evidence: Any = None

    def document(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "allowed": self.allowed,
            "target": self.target,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
            "trace_id": self.trace_id,
            "produced": self.produced,
            "refusal": self.refusal,
            "evidence": self.evidence,
        }

    def content(self) -> str:
        return canonical(self.document())


__all__ = ["GRANTS", "AuditRecord", "Permission", "Role", "allows"]
