"""Traces: one per customer request, exported over OTLP, configured only by OTEL_* variables.

The span tree of a mirrored request (tests/integration/test_tracing.py):

    {METHOD} {route template}      SERVER   the customer's request, in the proxy
    ├── capture intent             INTERNAL the intent's durable commit
    ├── legacy {METHOD}            CLIENT   the call to the legacy service (traceparent sent)
    ├── capture outcome            INTERNAL the outcome's durable commit
    ├── apply                      INTERNAL later, in the shadow worker: the ledger's side
    └── compare                    INTERNAL later: the two results compared

``apply`` and ``compare`` run in the shadow worker, often in another process, after the
customer was answered; they are children of the request's server span (its trace and span id
travel with the mirror record), so the whole story is one trace. Spans carry the route
template, method, status, operation and outcome: never amounts, bodies, SQL parameters or
account ids.

Configuration, read once by the command from its environment: ``OTEL_SDK_DISABLED=true`` turns
tracing off (no exporter, no noise); ``OTEL_SERVICE_NAME`` (default ``ledger-sidecar``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``/``_ARG`` as the SDK reads them;
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``); ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``grpc`` or ``http/protobuf``, the default) and the ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``.
Spans are exported over OTLP only when an endpoint is set: without one (and no sampler asked
for) spans record nothing, which costs a quarter as much, but still carry trace ids to the logs
and the legacy service, and nothing tries a collector that is not there. Under a server span
that records nothing the proxy starts no child spans at all (``child_span``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar import __version__
from sidecar.errors import ConfigError

SERVICE_NAME = "ledger-sidecar"
INSTRUMENTATION = "ledger_sidecar"
PROPAGATOR = TraceContextTextMapPropagator()


def provider_from_environ(environ: Mapping[str, str]) -> TracerProvider | None:
    """The process's tracer provider as the OTEL_* variables say; None when disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    given = dict(
        pair.split("=", 1)
        for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
        if "=" in pair
    )
    attributes = {
        **{k.strip(): v.strip() for k, v in given.items()},
        "service.name": environ.get("OTEL_SERVICE_NAME")
        or given.get("service.name", "").strip()
        or SERVICE_NAME,
        "service.version": __version__,
    }
    exporter = _exporter(environ)
    # nowhere to send spans and no sampler asked for: spans record nothing (a quarter of the
    # cost) but still carry trace ids, for the logs and the legacy service's traceparent
    sampler = (
        ParentBased(root=ALWAYS_OFF)  # a caller's sampled trace stays sampled downstream
        if exporter is None and not environ.get("OTEL_TRACES_SAMPLER")
        else None
    )
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _setting(environ: Mapping[str, str], *names: str, default: str) -> str:
    """The first of ``names`` set to something (an empty value counts as unset, as the
    OpenTelemetry specification says)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return default


def _exporter(environ: Mapping[str, str]) -> SpanExporter | None:
    kinds = [
        k.strip().lower()
        for k in _setting(environ, "OTEL_TRACES_EXPORTER", default="otlp").split(",")
        if k.strip()
    ]
    unknown = set(kinds) - {"otlp", "console", "none"}
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: otlp, console or none, got {sorted(unknown)[0]!r}"
        )
    if "console" in kinds:
        return ConsoleSpanExporter(out=sys.stderr)  # standard output is the JSON log lines
    if "otlp" not in kinds:
        return None
    if not _setting(
        environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", default=""
    ):
        return None
    protocol = _setting(
        environ,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        default="http/protobuf",
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            return GrpcExporter()
        if protocol in ("http/protobuf", "http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            return HttpExporter()
    except (ValueError, TypeError) as exc:  # a bad timeout, header or compression setting
        raise ConfigError(f"OTEL_EXPORTER_OTLP_*: the OTLP exporter refused them: {exc}") from exc
    raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf, got {protocol!r}")


def tracer_of(provider: trace.TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(INSTRUMENTATION, __version__)


def child_span(
    tracer: trace.Tracer, name: str, kind: SpanKind = SpanKind.INTERNAL
) -> AbstractContextManager[Span]:
    """A child of the current span; or, when the current span records nothing (no exporter,
    or a trace not sampled), that span itself. A child of a span that records nothing would
    record nothing either (the sampler is parent-based, or decides by the same trace id), so
    the customer path skips the sampler's and the context's work for it; the trace id, and
    the traceparent sent on, stay the parent's."""
    current = trace.get_current_span()
    if not current.is_recording():
        return nullcontext(current)
    return tracer.start_as_current_span(name, kind=kind)


def ids_of(span: Span) -> tuple[str | None, str | None]:
    """The span's trace and span id in hex, or None for a span that records nothing."""
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def remote_parent(
    trace_id: str | None, span_id: str | None, sampled: bool = True
) -> Context | None:
    """A context whose parent is the span a mirror record names (the request's server span)."""
    if not trace_id or not span_id:
        return None
    try:
        context = SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        )
    except ValueError:
        return None
    if not context.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(context))
