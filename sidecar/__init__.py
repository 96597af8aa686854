"""ledger-sidecar: shadow a legacy ledger with a double-entry ledger on PostgreSQL."""

__version__ = "0.1.0"
