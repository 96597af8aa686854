"""Logs: one JSON object per line, keys stable and documented (docs/observability.md).

Every line has ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``event``,
``service`` and ``version``, and ``trace_id``/``span_id`` when a span is current or the line is
about a traced request. The events with their own keys:

- ``request_completed`` (logger ``sidecar.requests``), exactly one per customer request:
  operation, outcome, mode, method, route, status, account_id, account_tier, latency_seconds,
  legacy_latency_seconds, ledger_latency_seconds (null while the ledger is not on the path);
- ``divergence``, one per mismatched comparison: operation, route, account_id,
  divergence_kind, stream_offset, differences (each field's two values: amounts, statuses,
  currencies; a sensitive field's values redacted), trace_id;
- ``capture_dropped``, ``in_doubt``, the lifecycle events ``started`` and ``stopped``, and the
  rest: see the document.

Guarantees (tests/integration/test_logs.py): a key named in ``telemetry.sensitive_fields``
never appears in a line, and a sensitive field's values never appear in a divergence line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from sidecar import __version__
from sidecar.telemetry.tracing import SERVICE_NAME, ids_of

REQUESTS_LOGGER = "sidecar.requests"


class SidecarJsonFormatter(JsonFormatter):
    def __init__(self, service: str, sensitive: Iterable[str] = ()) -> None:
        super().__init__("%(message)s", json_ensure_ascii=False)
        self._service = service
        self._sensitive = frozenset(sensitive)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)
        log_data.setdefault("event", "log")
        log_data["service"] = self._service
        log_data["version"] = __version__
        if not log_data.get("trace_id"):
            trace_id, span_id = ids_of(trace.get_current_span())
            if trace_id is not None:
                log_data["trace_id"], log_data["span_id"] = trace_id, span_id
        for key in self._sensitive & log_data.keys():
            del log_data[key]


def configure_logging(
    level: str,
    stream: TextIO | None = None,
    service: str = SERVICE_NAME,
    sensitive: Iterable[str] = (),
) -> logging.Handler:
    """Send every log record to ``stream`` (standard output) as one JSON line; replaces the
    root logger's handlers, so calling it twice is harmless."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(SidecarJsonFormatter(service, sensitive))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
