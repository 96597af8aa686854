"""Audit records and roles (sidecar/domain/audit.py)."""

from __future__ import annotations

import json

from sidecar.domain.audit import AuditRecord, Permission, Role, allows


def test_a_records_content_is_canonical_json_of_every_field() -> None:
    record = AuditRecord(
        "alice", "admin", "flag.set_default", True, "ledger-mode", "go", {"a": 1}, {"a": 2}
    )
    text = record.content()
    assert json.loads(text) == record.document()
    assert text == json.dumps(record.document(), sort_keys=True, separators=(",", ":"))


def test_roles_grant_the_least_each_needs() -> None:
    assert [p for p in Permission if allows(Role.VIEWER, p)] == [Permission.READ]
    assert allows(Role.OPERATOR, Permission.TRIAGE) and allows(Role.OPERATOR, Permission.ADJUST)
    assert not allows(Role.OPERATOR, Permission.CHANGE_MODE)
    assert allows(Role.RELEASE_MANAGER, Permission.CHANGE_MODE)
    assert not allows(Role.RELEASE_MANAGER, Permission.FORCE_FLIP)
    assert not allows(Role.RELEASE_MANAGER, Permission.MANAGE_TOKENS)
    assert not allows(Role.RELEASE_MANAGER, Permission.ADJUST)
    assert all(allows(Role.ADMIN, p) for p in Permission)
