"""Every error the sidecar raises on purpose, each with a stable ``code``.

The same code is the API error, the log field and the metric label, so callers branch on the
code, never on message text. Expected results of a single command (insufficient funds, a
replayed key) are *outcomes* (see ``sidecar.domain.outcome``), not errors.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of the tree. ``retryable`` says whether the same request may succeed later."""

    code = "sidecar_error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class ConfigError(SidecarError):
    """A setting is missing, malformed or out of range; raised at start-up."""

    code = "config_invalid"


class MappingError(ConfigError):
    """The legacy-route mapping file cannot be used; raised at start-up, before any traffic."""

    code = "mapping_invalid"

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


# --- bad input: the command is refused and nothing changes -------------------------------


class InvalidCommand(SidecarError):
    """A command is malformed: it can never succeed as written."""

    code = "invalid_command"


class FlagRulesInvalid(InvalidCommand):
    """A change to the cutover flag's rules is malformed (a mode, a share, a cohort)."""

    code = "flag_rules_invalid"


class InvalidAmount(InvalidCommand):
    code = "invalid_amount"


class InvalidCurrency(InvalidCommand):
    code = "invalid_currency"


class InvalidIdempotencyKey(InvalidCommand):
    code = "invalid_idempotency_key"


class InvalidAccountId(InvalidCommand):
    code = "invalid_account_id"


class UnbalancedTransfer(InvalidCommand):
    code = "unbalanced_transfer"


class UnknownAccount(InvalidCommand):
    code = "unknown_account"


class CurrencyMismatch(InvalidCommand):
    code = "currency_mismatch"


class UnknownTransfer(InvalidCommand):
    code = "unknown_transfer"


class IdempotencyConflict(SidecarError):
    """The key was used before with a different payload; the earlier result stands."""

    code = "idempotency_conflict"


# --- the ledger could not act now ----------------------------------------------------------


class LedgerUnavailable(SidecarError):
    """PostgreSQL could not be reached or the connection broke mid-request."""

    code = "ledger_unavailable"
    retryable = True


class LedgerBusy(SidecarError):
    """Concurrent writers kept changing the same balances; the batch gave up after its retries."""

    code = "ledger_busy"
    retryable = True


class LedgerClosed(SidecarError):
    """The posting writer is stopping or stopped and takes no more commands."""

    code = "ledger_closed"
    retryable = True


class LedgerIntegrityError(SidecarError):
    """The database refused a write that the planner accepted: a bug or tampering, never input."""

    code = "ledger_integrity"


class AppendOnlyViolation(SidecarError):
    code = "append_only_violation"


class MigrationError(SidecarError):
    code = "migration_failed"


class DatabaseUnreachable(SidecarError):
    code = "database_unreachable"
    retryable = True


# --- signals from a store to the posting writer: replan and try again ------------------------


class PlanStale(SidecarError):
    """A balance the plan assumed changed under it (another writer committed first)."""

    code = "plan_stale"
    retryable = True

    def __init__(self, message: str, account_ids: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.account_ids = account_ids


class KeysTaken(SidecarError):
    """An idempotency key (or a reversal target) the plan thought new was decided meanwhile."""

    code = "keys_taken"
    retryable = True


class AccountsTaken(SidecarError):
    """An account the plan opens was opened meanwhile by another writer."""

    code = "accounts_taken"
    retryable = True


class ShadowMismatch(SidecarError):
    """Strict mode: the ledger and the legacy service disagreed. ``record`` is the comparison
    (a ``sidecar.domain.shadow.ComparisonRecord``), already stored."""

    code = "shadow_mismatch"

    def __init__(self, message: str, record: object) -> None:
        super().__init__(message)
        self.record = record
