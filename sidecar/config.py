"""Settings: frozen dataclasses loaded once, from a TOML file and the environment, then passed down.

Precedence: built-in defaults < the config file (``--config`` or ``LEDGER_SIDECAR_CONFIG``) <
``DATABASE_URL``. A bad value fails at start-up naming the key, the rule and the value; an
unknown key is an error too, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sidecar.domain.readiness import Thresholds
from sidecar.errors import ConfigError

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Secret:
    """A value that never prints: ``repr`` and ``str`` show the URL with its password masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({str(self)!r})"

    def __str__(self) -> str:
        parts = urlsplit(self._value)
        if parts.password is None:
            return self._value
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DatabaseSettings:
    url: Secret = field(default_factory=lambda: Secret(DEFAULT_DATABASE_URL))
    #: the PostgreSQL schema that holds this ledger; several ledgers can share a database
    schema: str = "ledger"
    pool_connections_min: int = 1
    pool_connections_max: int = 8
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0


@dataclass(frozen=True)
class LedgerSettings:
    #: posting writers; each takes its own batches (accounts shared across them stay correct,
    #: guarded by the stale-balance check, but one partition keeps a hot account fastest)
    partitions: int = 1
    batch_commands_max: int = 500
    batch_linger_ms: float = 2.0
    #: batches of one writer in flight at once: the next batch is planned (on the state the
    #: previous one leaves) and sent while the previous one commits; 1 = one at a time
    pipeline_depth: int = 2
    queue_commands_max: int = 50_000
    stale_retries_max: int = 20
    account_cache_max: int = 200_000


@dataclass(frozen=True)
class CaptureSettings:
    #: "durable": the customer's answer waits (at most wait_ms_max) until the record is
    #: committed; "async": it never waits, and a crash can lose what was not yet written
    mode: str = "durable"
    wait_ms_max: float = 50.0
    queue_records_max: int = 10_000
    batch_records_max: int = 500
    #: 0: no waiting; what queued while the previous commit ran goes in the next (a commit
    #: here is a round trip plus an fsync, cheap next to holding every customer back)
    batch_linger_ms: float = 0.0
    append_attempts_max: int = 3


@dataclass(frozen=True)
class ProxySettings:
    #: where the legacy ledger service answers
    legacy_url: str = "http://127.0.0.1:8081"
    host: str = "127.0.0.1"
    port: int = 8080
    #: "legacy": pass-through only; "shadow": pass-through, mirrored into the new ledger
    mode: str = "legacy"
    #: the legacy-route mapping file (needed in shadow mode)
    mapping: str | None = None
    body_bytes_max: int = 1_048_576
    legacy_timeout_s: float = 10.0
    legacy_connections_max: int = 100
    #: partitions of the mirror stream (per-account order is kept within one)
    partitions: int = 8


@dataclass(frozen=True)
class ApplierSettings:
    #: stream events read, applied and compared as one group (one comparison commit)
    chunk_events_max: int = 1000
    #: how long the applier waits before looking again when the stream has nothing new
    idle_poll_ms: float = 50.0
    #: the least time between the starts of two groups while the applier keeps up: what
    #: arrives meanwhile goes into one group, one transaction (fewer, larger commits cost the
    #: database less per request; comparisons come this much later at most). A group that
    #: filled ``chunk_events_max`` (the applier is behind) is followed at once. 0: no wait.
    group_interval_ms: float = 100.0
    #: an intent older than this with no outcome is in doubt (the sidecar died in between)
    in_doubt_after_s: float = 30.0
    #: exchanges before the first bootstrap snapshot in the stream are skipped (they are in
    #: the snapshot); false only for a legacy service that starts empty
    require_bootstrap: bool = True
    #: raise on the first mismatch (a gate for users' CI, as Scientist's raise-on-mismatch)
    strict: bool = False


#: more tiers or watched accounts than this is a start-up error: each is a label value
ACCOUNT_TIERS_MAX = 8
WATCH_ACCOUNTS_MAX = 20
LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class TelemetrySettings:
    #: the ``account_tier`` label: tier -> account-id patterns (shell-style, ``VIP-*``); the
    #: first tier with a matching pattern wins, else ``default_account_tier``
    account_tiers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_account_tier: str = "standard"
    #: at most 20 accounts with latency of their own: label value (a name) -> account id;
    #: the id itself never becomes a label value
    watch_accounts: Mapping[str, str] = field(default_factory=dict)
    #: request and answer fields never written to logs, spans or divergence records
    sensitive_fields: tuple[str, ...] = ()
    #: where ``ledger-sidecar apply`` serves its own /metrics (0: a free port, which is what
    #: ``serve`` gives the applier it starts, then serves both on its own /metrics)
    applier_metrics_port: int = 9466
    applier_metrics_host: str = "127.0.0.1"
    #: the SLO file (default: the packaged sidecar/slo.toml), shared with the alert generator
    slo_file: str | None = None


@dataclass(frozen=True)
class AdminSettings:
    #: the admin API (/admin/v1, with its OpenAPI document) listens here, apart from the
    #: customer port: nothing under it is ever forwarded to the legacy service
    host: str = "127.0.0.1"
    port: int = 9467
    #: false: no admin API in this process (flags still follow the database)
    enabled: bool = True
    body_bytes_max: int = 65_536
    #: how often each sidecar instance looks for a new version of the cutover flag
    flag_poll_s: float = 1.0


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    applier: ApplierSettings = field(default_factory=ApplierSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    #: what the cutover readiness report asks for (sidecar.domain.readiness)
    readiness: Thresholds = field(default_factory=Thresholds)
    log_level: str = "INFO"


T = TypeVar("T")


def _positive_int(key: str, value: object, *, maximum: int = 10**9) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ConfigError(f"{key}: must be an integer from 1 to {maximum}, got {value!r}")
    return value


def _positive_float(key: str, value: object, *, maximum: float = 3600.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise ConfigError(f"{key}: must be a number above 0 and at most {maximum}, got {value!r}")
    return float(value)


def _non_negative_float(key: str, value: object, *, maximum: float = 3600.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= maximum:
        raise ConfigError(f"{key}: must be a number from 0 to {maximum}, got {value!r}")
    return float(value)


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    return value.strip()


def _http_url(key: str, value: object) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise ConfigError(f"{key}: must be an http:// or https:// URL, got {value!r}")
    if not urlsplit(value).netloc:
        raise ConfigError(f"{key}: has no host, got {value!r}")
    return value.rstrip("/")


def _schema(key: str, value: object) -> str:
    if not isinstance(value, str) or not SCHEMA_NAME.match(value):
        raise ConfigError(
            f"{key}: must be a lower-case SQL identifier (letters, digits, _), got {value!r}"
        )
    return value


def _url(key: str, value: object) -> Secret:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("postgresql", "postgres"):
        shown = str(Secret(value)) if isinstance(value, str) else repr(value)
        raise ConfigError(f"{key}: must be a postgresql:// URL, got {shown}")
    return Secret(value)


def _log_level(key: str, value: object) -> str:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    if not isinstance(value, str) or value.upper() not in levels:
        raise ConfigError(f"{key}: must be one of {', '.join(levels)}, got {value!r}")
    return value.upper()


_RULES: dict[str, dict[str, Callable[[str, object], Any]]] = {
    "database": {
        "url": _url,
        "schema": _schema,
        "pool_connections_min": _positive_int,
        "pool_connections_max": _positive_int,
        "connect_timeout_s": _positive_float,
        "statement_timeout_s": _positive_float,
    },
    "ledger": {
        "partitions": lambda k, v: _positive_int(k, v, maximum=64),
        "batch_commands_max": lambda k, v: _positive_int(k, v, maximum=10_000),
        "batch_linger_ms": lambda k, v: _non_negative_float(k, v, maximum=1000.0),
        "pipeline_depth": lambda k, v: _positive_int(k, v, maximum=8),
        "queue_commands_max": _positive_int,
        "stale_retries_max": lambda k, v: _positive_int(k, v, maximum=1000),
        "account_cache_max": _positive_int,
    },
    "proxy": {
        "legacy_url": lambda k, v: _http_url(k, v),
        "host": lambda k, v: _text(k, v),
        "port": lambda k, v: _positive_int(k, v, maximum=65535),
        "mode": lambda k, v: _choice(k, v, ("legacy", "shadow")),
        "mapping": lambda k, v: _text(k, v),
        "body_bytes_max": lambda k, v: _positive_int(k, v, maximum=64 * 1024 * 1024),
        "legacy_timeout_s": lambda k, v: _positive_float(k, v, maximum=600.0),
        "legacy_connections_max": lambda k, v: _positive_int(k, v, maximum=10_000),
        "partitions": lambda k, v: _positive_int(k, v, maximum=1024),
    },
    "capture": {
        "mode": lambda k, v: _choice(k, v, ("durable", "async")),
        "wait_ms_max": lambda k, v: _positive_float(k, v, maximum=10_000.0),
        "queue_records_max": _positive_int,
        "batch_records_max": lambda k, v: _positive_int(k, v, maximum=10_000),
        "batch_linger_ms": lambda k, v: _non_negative_float(k, v, maximum=1000.0),
        "append_attempts_max": lambda k, v: _positive_int(k, v, maximum=100),
    },
    "applier": {
        "chunk_events_max": lambda k, v: _positive_int(k, v, maximum=100_000),
        "idle_poll_ms": lambda k, v: _positive_float(k, v, maximum=60_000.0),
        "group_interval_ms": lambda k, v: _non_negative_float(k, v, maximum=60_000.0),
        "in_doubt_after_s": lambda k, v: _positive_float(k, v, maximum=86_400.0),
        "strict": lambda k, v: _boolean(k, v),
        "require_bootstrap": lambda k, v: _boolean(k, v),
    },
    "admin": {
        "host": lambda k, v: _text(k, v),
        "port": lambda k, v: _port(k, v),
        "enabled": lambda k, v: _boolean(k, v),
        "body_bytes_max": lambda k, v: _positive_int(k, v, maximum=16 * 1024 * 1024),
        "flag_poll_s": lambda k, v: _positive_float(k, v, maximum=60.0),
    },
    "readiness": {
        "window_hours": lambda k, v: _positive_float(k, v, maximum=24 * 90.0),
        "clean_comparisons_min": lambda k, v: _positive_int(k, v, maximum=10**9),
        "budget_left_min": lambda k, v: _non_negative_float(k, v, maximum=1.0),
        "shadow_lag_p99_s_max": lambda k, v: _positive_float(k, v, maximum=86_400.0),
        "in_doubt_max": lambda k, v: _count(k, v),
        "reconciliation_age_hours_max": lambda k, v: _positive_float(k, v, maximum=24 * 90.0),
        "shadow_hours_min": lambda k, v: _non_negative_float(k, v, maximum=24 * 365.0),
        "coverage_routes_exempt": lambda k, v: tuple(_route_names(k, v)),
    },
    "telemetry": {
        "account_tiers": lambda k, v: _account_tiers(k, v),
        "default_account_tier": lambda k, v: _label_value(k, v),
        "watch_accounts": lambda k, v: _watch_accounts(k, v),
        "sensitive_fields": lambda k, v: _names(k, v),
        "applier_metrics_port": lambda k, v: _port(k, v),
        "applier_metrics_host": lambda k, v: _text(k, v),
        "slo_file": lambda k, v: _text(k, v),
    },
}


def _label_value(key: str, value: object) -> str:
    if not isinstance(value, str) or not LABEL_VALUE.match(value):
        raise ConfigError(
            f"{key}: must be a short lower-case name (a-z, 0-9, _ and -, 1-40), got {value!r}"
        )
    return value


def _account_tiers(key: str, value: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table of tier = [account-id patterns], got {value!r}")
    if len(value) > ACCOUNT_TIERS_MAX:
        raise ConfigError(
            f"{key}: at most {ACCOUNT_TIERS_MAX} tiers (each is a label value), got {len(value)}"
        )
    tiers: dict[str, tuple[str, ...]] = {}
    for tier, patterns in value.items():
        name = _label_value(f"{key}.{tier}", tier)
        if not isinstance(patterns, list) or not all(
            isinstance(p, str) and p.strip() for p in patterns
        ):
            raise ConfigError(
                f"{key}.{tier}: must be a list of account-id patterns, got {patterns!r}"
            )
        tiers[name] = tuple(p.strip() for p in patterns)
    return tiers


def _watch_accounts(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f'{key}: must be a table of name = "account id", got {value!r}')
    if len(value) > WATCH_ACCOUNTS_MAX:
        raise ConfigError(
            f"{key}: at most {WATCH_ACCOUNTS_MAX} watched accounts (each gets its own series), "
            f"got {len(value)}"
        )
    watched = {
        _label_value(f"{key}.{name}", name): _text(f"{key}.{name}", account)
        for name, account in value.items()
    }
    if len(set(watched.values())) != len(watched):
        raise ConfigError(f"{key}: an account is watched under two names")
    return watched


def _names(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{key}: must be a list of field names, got {value!r}")
    return tuple(v.strip() for v in value)


def _port(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{key}: must be a port number from 0 to 65535, got {value!r}")
    return value


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**9:
        raise ConfigError(f"{key}: must be an integer from 0 to {10**9}, got {value!r}")
    return value


def _route_names(key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{key}: must be a list of route names, got {value!r}")
    return [v.strip() for v in value]


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _section(cls: type[T], name: str, raw: object) -> T:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{name}]: must be a table, got {raw!r}")
    rules = _RULES[name]
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown setting (known: {', '.join(sorted(known))})")
        values[key] = rules[key](f"{name}.{key}", value)
    return cls(**values)


def from_dict(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from a parsed config document (tests pass a dict) and the environment."""
    environ = environ or {}
    unknown = set(data) - {
        "database",
        "ledger",
        "capture",
        "proxy",
        "applier",
        "telemetry",
        "admin",
        "readiness",
        "log_level",
    }
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section or setting")
    database_raw = dict(data.get("database", {}))
    if environ.get("DATABASE_URL"):
        database_raw["url"] = environ["DATABASE_URL"]
    database = _section(DatabaseSettings, "database", database_raw)
    if database.pool_connections_min > database.pool_connections_max:
        raise ConfigError(
            "database.pool_connections_min: must not exceed pool_connections_max "
            f"({database.pool_connections_min} > {database.pool_connections_max})"
        )
    ledger = _section(LedgerSettings, "ledger", data.get("ledger", {}))
    capture = _section(CaptureSettings, "capture", data.get("capture", {}))
    proxy_raw = dict(data.get("proxy", {}))
    if environ.get("LEGACY_URL"):
        proxy_raw["legacy_url"] = environ["LEGACY_URL"]
    proxy = _section(ProxySettings, "proxy", proxy_raw)
    if proxy.mode == "shadow" and proxy.mapping is None:
        raise ConfigError("proxy.mapping: shadow mode needs a mapping file")
    applier = _section(ApplierSettings, "applier", data.get("applier", {}))
    if applier.in_doubt_after_s <= proxy.legacy_timeout_s:
        raise ConfigError(
            "applier.in_doubt_after_s: must exceed proxy.legacy_timeout_s, or a request still "
            f"in flight would be taken for lost ({applier.in_doubt_after_s} <= "
            f"{proxy.legacy_timeout_s})"
        )
    telemetry = _section(TelemetrySettings, "telemetry", data.get("telemetry", {}))
    if telemetry.default_account_tier in telemetry.account_tiers:
        raise ConfigError(
            f"telemetry.default_account_tier: {telemetry.default_account_tier!r} is also a "
            "configured tier; the default is for accounts no tier names"
        )
    admin = _section(AdminSettings, "admin", data.get("admin", {}))
    readiness = _section(Thresholds, "readiness", data.get("readiness", {}))
    log_level = _log_level("log_level", data.get("log_level", environ.get("LOG_LEVEL", "INFO")))
    return Settings(
        database=database,
        ledger=ledger,
        capture=capture,
        proxy=proxy,
        applier=applier,
        telemetry=telemetry,
        admin=admin,
        readiness=readiness,
        log_level=log_level,
    )


def load(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Read the config file (if any) and the environment; the only place settings come from."""
    path = path or environ.get("LEDGER_SIDECAR_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: not valid TOML: {exc}") from exc
        try:
            return from_dict(data, environ)
        except ConfigError as exc:
            raise ConfigError(f"config file {file}: {exc.message}") from exc
    return from_dict(data, environ)
