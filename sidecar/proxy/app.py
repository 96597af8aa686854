"""The customer path: an HTTP proxy in front of the legacy service, mirroring mapped requests.

Every request goes to the legacy service and its answer comes back unchanged. In ``shadow``
mode a request on a mapped route is also captured: its intent before it is forwarded and its
outcome after, both in the mirror stream, so the applier can replay it into the new ledger.

Guarantees (tests/integration/test_proxy.py):
- The client gets the legacy service's status, end-to-end headers and body bytes unchanged,
  for every route, mapped or not, errors included; hop-by-hop headers (RFC 9110 §7.6.1: those
  of ``Connection`` and the ones it names) are not passed on in either direction.
- The customer path never fails because of the shadow path: capture is bounded and never
  raises (``sidecar.capture``); a request body over ``body_bytes_max`` is a JSON 413, an
  unreachable legacy service a JSON 502, a slow one a JSON 504, each with a stable ``code``.
- Unmapped routes pass through untouched, are never captured, and are counted.
- ``/_sidecar/health`` answers while the process runs; ``/_sidecar/ready`` only once capture
  (in shadow mode) is running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from sidecar.capture import Capture
from sidecar.config import ProxySettings
from sidecar.domain.flags import FLAG_KEY, LEDGER_ANSWERS, Evaluation, Mode, Reason
from sidecar.domain.mapping import MISSING, MatchedRoute, Origin, RouteTable, extract
from sidecar.domain.mirror import MirrorRecord, RecordKind, partition_of
from sidecar.domain.translate import Exchange
from sidecar.errors import IdempotencyConflict, InvalidCommand, SidecarError
from sidecar.proxy.ledger_answer import LedgerAnswerer
from sidecar.telemetry.metrics import UNMAPPED, ProxyMetrics, outcome_of_status
from sidecar.telemetry.tracing import PROPAGATOR, child_span, ids_of

#: RFC 9110 §7.6.1 and RFC 9112: meaningful for one connection only
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: recomputed by the HTTP library for the body it sends
FRAMING = frozenset({"content-length", "host"})
SIDECAR_PREFIX = "/_sidecar/"
#: one ``request_completed`` line per customer request (sidecar.telemetry.logs)
requests_log = logging.getLogger("sidecar.requests")
log = logging.getLogger(__name__)
PARTITION_FIELDS = ("debit", "account", "reverses", "key")
#: the fields that name the account a request is about (its tier, its log lines)
ACCOUNT_FIELDS = ("debit", "account")


@dataclass
class ProxyStats:
    requests: int = 0
    mapped: int = 0
    unmapped: int = 0
    #: answered (counted with errors and slow, so their ratios are never ahead of it)
    completed: int = 0
    #: answered with a server error, a timeout or an unreachable legacy (availability SLO)
    errors: int = 0
    #: answered slower than the latency SLO's threshold
    slow: int = 0
    legacy_errors: Counter[str] = field(default_factory=Counter)


PROXY_STATS = web.AppKey("proxy_stats", ProxyStats)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers a proxy passes on: all but hop-by-hop ones and those ``Connection`` names."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in FRAMING:
            continue
        out.add(name, value)
    return out


def header_pairs(headers: CIMultiDict[str]) -> list[list[str]]:
    """Headers as [name, value] pairs: order and repeated names kept, plain JSON."""
    return [[str(name), value] for name, value in headers.items()]


def problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def body_for_stream(body: bytes, encoding: str | None = None) -> dict[str, Any]:
    """The body as the mirror stream keeps it: text if it is UTF-8, decoded first if it came
    gzip- or deflate-compressed (the bytes on the wire are untouched), base64 otherwise."""
    coding = (encoding or "").strip().lower()
    if coding in ("gzip", "x-gzip", "deflate"):
        try:
            wbits = zlib.MAX_WBITS | 32 if coding != "deflate" else zlib.MAX_WBITS
            body = zlib.decompress(body, wbits)
        except zlib.error:
            try:
                body = zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate
            except zlib.error:
                return {"body_base64": base64.b64encode(body).decode("ascii"), "encoding": coding}
    elif coding and coding != "identity":
        return {"body_base64": base64.b64encode(body).decode("ascii"), "encoding": coding}
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else MISSING
    except orjson.JSONDecodeError:
        return MISSING


_UNPARSED = object()


class _Fields:
    """A mapped request's fields, its JSON body parsed at most once and only if needed."""

    def __init__(self, matched: MatchedRoute, body: bytes, headers: Mapping[str, str]) -> None:
        self.matched = matched
        self._body = body
        self._headers = headers
        self._json: Any = _UNPARSED
        self._account: Any = _UNPARSED

    @property
    def account(self) -> str | None:
        """The (paying) account the request names, read once: its mode, tier and log line."""
        if self._account is _UNPARSED:
            self._account = self.first(ACCOUNT_FIELDS)
        account: str | None = self._account
        return account

    def first(self, names: tuple[str, ...]) -> str | None:
        for name in names:
            source = self.matched.route.fields.get(name)
            if source is None:
                continue
            if source.origin is Origin.REQUEST and self._json is _UNPARSED:
                self._json = _json(self._body)
            value = extract(
                source,
                request=MISSING if self._json is _UNPARSED else self._json,
                path_params=self.matched.path_params,
                headers=self._headers,
            )
            if value is not MISSING and value is not None:
                return str(value)
        return None

    def partition_key(self) -> str:
        """The account (or other key) whose order the stream must keep."""
        key = self.first(PARTITION_FIELDS)
        return key if key is not None else self.matched.route.name


@dataclass(slots=True)
class _Mirrored:
    """A request being captured: where its records go and until when the customer may wait
    (intent and outcome share one budget)."""

    capture: Capture
    route: str
    request_id: str
    partition: int
    deadline: float
    tracer: trace.Tracer
    trace_id: str | None = None

    async def record(self, kind: RecordKind, content: dict[str, Any]) -> None:
        remaining = self.deadline - asyncio.get_running_loop().time()
        record = MirrorRecord(
            self.partition, kind, self.request_id, content, self.route, self.trace_id
        )
        with child_span(self.tracer, f"capture {kind.value}") as span:
            ok = await self.capture.record(record, wait_s=remaining)
            if self.capture.durable:  # not committed in time: written late, or dropped
                result = "committed" if ok else "not_committed_in_time"
            else:
                result = "queued" if ok else "dropped"
            span.set_attribute("ledger_sidecar.capture.result", result)


class Proxy:
    def __init__(
        self,
        settings: ProxySettings,
        session: aiohttp.ClientSession,
        routes: RouteTable | None = None,
        capture: Capture | None = None,
        metrics: ProxyMetrics | None = None,
        tracer: trace.Tracer | None = None,
        latency_slo_s: float = 0.25,
        mode_of: Callable[[str | None], Evaluation] | None = None,
        answerer: LedgerAnswerer | None = None,
    ) -> None:
        #: the ledger answering (ledger-primary, ledger-only); None: legacy always answers
        self.answerer = answerer
        if settings.mode == "shadow" and (routes is None or capture is None):
            raise ValueError("shadow mode needs a route table and a capture")
        self.settings = settings
        #: the cutover flag: which mode an account is in (default: the configured mode)
        self.mode_of = mode_of or _configured(Mode(settings.mode))
        self.session = session
        self.routes = routes
        self.capture = capture
        self.metrics = metrics
        self.tracer = tracer or trace.NoOpTracer()
        self.latency_slo_s = latency_slo_s
        self.stats = ProxyStats()
        self.timeout = aiohttp.ClientTimeout(total=settings.legacy_timeout_s)

    def app(self, own: Mapping[str, Handler] | None = None) -> web.Application:
        """The proxy's application; ``own`` adds GET paths the sidecar answers itself (its
        /metrics), which are then never forwarded."""
        application = web.Application(client_max_size=self.settings.body_bytes_max)
        application[PROXY_STATS] = self.stats
        application.router.add_get(SIDECAR_PREFIX + "health", self.health)
        application.router.add_get(SIDECAR_PREFIX + "ready", self.ready)
        for path, handler in (own or {}).items():
            application.router.add_get(path, handler)
        application.router.add_route("*", "/{tail:.*}", self.forward)
        return application

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "mode": self.mode_of(None).variant.value})

    async def ready(self, request: web.Request) -> web.Response:
        capturing = self.capture is None or self.capture.running
        body = {"ready": capturing, "mode": self.mode_of(None).variant.value}
        return web.json_response(body, status=200 if capturing else 503)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        matched = self.routes.match(request.method, request.path) if self.routes else None
        route = matched.route.path if matched is not None else None
        with self.tracer.start_as_current_span(
            f"{request.method} {route}" if route else request.method,
            context=PROPAGATOR.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route or ""},
        ) as span:
            return await self._forward(request, matched, span)

    async def _forward(
        self, request: web.Request, matched: MatchedRoute | None, span: trace.Span
    ) -> web.StreamResponse:
        # durations by the performance counter: uvloop's loop.time() is libuv's cached
        # millisecond clock, which would round every latency to whole milliseconds
        started = time.perf_counter()
        self.stats.requests += 1
        view: _Fields | None = None
        evaluation: Evaluation | None = None
        operation = matched.route.operation.value if matched is not None else UNMAPPED
        trace_id, span_id = ids_of(span)
        sampled = span.get_span_context().trace_flags.sampled
        outcome = "success"
        status = 0
        legacy_seconds: float | None = None
        ledger_seconds: float | None = None
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                outcome = "request_too_large"
                if matched is not None:  # path and headers still name the account
                    view = _Fields(matched, b"", request.headers)
                return problem(
                    413,
                    "request_too_large",
                    f"request bodies are limited to {self.settings.body_bytes_max} bytes",
                )
            if matched is not None:
                view = _Fields(matched, body, request.headers)
            # the request's mode: its (paying) account's, by the cutover flag
            evaluation = self._mode(view.account if view is not None else None)
            mode = evaluation.variant
            forwarded = end_to_end(request.headers)
            if mode in LEDGER_ANSWERS and view is not None and self.answerer is not None:
                ledger_started = time.perf_counter()
                ids = (trace_id, span_id, sampled)
                answered = await self._ledger_answer(request, forwarded, body, view, mode, ids)
                if answered is not None:  # else the ledger could not decide: legacy answers
                    ledger_seconds = time.perf_counter() - ledger_started
                    if self.metrics is not None:
                        self.metrics.upstream_duration.labels(
                            "ledger", operation, "success"
                        ).observe(ledger_seconds)
                    status = answered.status
                    outcome = outcome_of_status(status)
                    return answered
            # recorded before it is forwarded (every mode but legacy; a request the ledger could
            # not decide goes to the legacy service as in shadow mode)
            mirrored = await self._mirror_intent(
                request,
                forwarded,
                body,
                view,
                trace_id,
                span_id,
                sampled,
                Mode.LEGACY if mode is Mode.LEGACY else Mode.SHADOW,
            )
            legacy_started = time.perf_counter()
            try:
                with child_span(self.tracer, f"legacy {request.method}", SpanKind.CLIENT) as client:
                    PROPAGATOR.inject(forwarded)  # the legacy service joins the trace
                    async with self.session.request(
                        request.method,
                        self.settings.legacy_url + request.rel_url.raw_path_qs,
                        headers=forwarded,
                        data=body if body else None,
                        allow_redirects=False,
                        timeout=self.timeout,
                    ) as upstream:
                        answer = await upstream.read()
                        status, headers = upstream.status, end_to_end(upstream.headers)
                        length = upstream.headers.get("Content-Length")
                    client.set_attribute("http.response.status_code", status)
            except TimeoutError:
                outcome = "legacy_timeout"
                legacy_seconds = time.perf_counter() - legacy_started
                self._legacy_call(operation, "timeout", legacy_seconds, trace_id)
                return await self._legacy_failed(
                    mirrored, 504, "legacy_timeout", "the legacy service did not answer in time"
                )
            except aiohttp.ClientError as exc:
                outcome = "legacy_unreachable"
                legacy_seconds = time.perf_counter() - legacy_started
                self._legacy_call(operation, "unreachable", legacy_seconds, trace_id)
                return await self._legacy_failed(
                    mirrored,
                    502,
                    "legacy_unreachable",
                    f"the legacy service cannot be reached: {exc}",
                )
            outcome = outcome_of_status(status)
            legacy_seconds = time.perf_counter() - legacy_started
            self._legacy_call(operation, outcome, legacy_seconds, trace_id)
            response = web.Response(status=status, headers=headers, body=answer)
            if "Content-Type" not in headers:
                del response.headers["Content-Type"]  # none was sent: invent none
            if request.method == "HEAD" and length is not None:
                response.headers["Content-Length"] = length
            if mirrored is not None:  # only captured requests pay for decoding the answer
                await mirrored.record(
                    RecordKind.OUTCOME,
                    {
                        "status": status,
                        "headers": header_pairs(headers),
                        **body_for_stream(answer, headers.get("Content-Encoding")),
                    },
                )
            return response
        except BaseException:
            outcome = "server_error"  # aiohttp answers 500 (or the request was cancelled)
            raise
        finally:
            span.set_attribute("ledger_sidecar.operation", operation)
            span.set_attribute("ledger_sidecar.outcome", outcome)
            if status:
                span.set_attribute("http.response.status_code", status)
            if outcome not in ("success", "client_error"):
                span.set_status(trace.StatusCode.ERROR, outcome)
            seconds = time.perf_counter() - started
            self.stats.completed += 1
            if outcome in ("server_error", "legacy_timeout", "legacy_unreachable"):
                self.stats.errors += 1
            if seconds > self.latency_slo_s:
                self.stats.slow += 1
            account = view.account if view is not None else None
            if evaluation is None:
                evaluation = self._mode(account)
            answered_in = evaluation.variant.value
            if ledger_seconds is None and evaluation.variant in LEDGER_ANSWERS:
                answered_in = Mode.SHADOW.value  # the ledger could not decide: legacy answered
            tier = None
            if self.metrics is not None:
                tier = self.metrics.request(
                    operation, outcome, account, seconds, trace_id, answered_in
                )
            if requests_log.isEnabledFor(logging.INFO):
                requests_log.info(
                    "request completed",
                    extra={
                        "event": "request_completed",
                        "operation": operation,
                        "outcome": outcome,
                        "mode": answered_in,
                        "flag_reason": evaluation.reason.value,
                        "cohort": evaluation.cohort,
                        "method": request.method,
                        "route": matched.route.path if matched is not None else None,
                        "status": status or None,
                        "account_id": account,
                        "account_tier": tier,
                        "latency_seconds": round(seconds, 6),
                        "legacy_latency_seconds": (
                            round(legacy_seconds, 6) if legacy_seconds is not None else None
                        ),
                        "ledger_latency_seconds": (
                            round(ledger_seconds, 6) if ledger_seconds is not None else None
                        ),
                        "trace_id": trace_id,
                        "span_id": span_id,
                    },
                )

    async def _ledger_answer(
        self,
        request: web.Request,
        forwarded: CIMultiDict[str],
        body: bytes,
        view: _Fields,
        mode: Mode,
        ids: tuple[str | None, str | None, bool],
    ) -> web.Response | None:
        """The ledger's answer in the legacy API's shape, or None when the ledger cannot decide
        (the legacy service answers then, as in shadow mode). In ledger-primary the legacy
        service gets the request later, from the stream (sidecar.legacy_delivery)."""
        assert self.answerer is not None
        route = view.matched.route
        if route.answer is None:
            return None
        exchange = Exchange(
            method=request.method,
            path=request.path,
            request=_json_or_missing(body),
            headers={k: v for k, v in request.headers.items()},
            query={k: v for k, v in request.query.items()},
        )
        with child_span(self.tracer, f"ledger {route.operation.value}"):
            decided = await self.answerer.decide(view.matched, exchange)
        if isinstance(decided, SidecarError) and mode is not Mode.LEDGER_ONLY:
            return None  # ledger-primary: the legacy service answers, as in shadow mode
        # recorded once the ledger has decided, so that every request marked as answered by
        # the ledger was: legacy delivery sends it at once, in order per account
        trace_id, span_id, sampled = ids
        mirrored = await self._mirror_intent(
            request, forwarded, body, view, trace_id, span_id, sampled, mode
        )
        if isinstance(decided, SidecarError):
            if mirrored is not None:
                await mirrored.record(RecordKind.OUTCOME, {"ledger_only": True})
            if isinstance(decided, IdempotencyConflict):
                status = 409
            else:
                status = 422 if isinstance(decided, InvalidCommand) else 503
            return problem(status, decided.code, decided.message)
        status, answer = decided
        if mirrored is not None and mode is Mode.LEDGER_ONLY:
            await mirrored.record(RecordKind.OUTCOME, {"ledger_only": True})
        # ledger-primary: the legacy service gets it from the stream, in order per account
        # (sidecar.legacy_delivery); its answer is the outcome the applier compares
        try:
            return web.json_response(answer, status=status)
        except (TypeError, ValueError):  # the ledger has decided: the answer is owed as it is
            text = json.dumps(answer, default=str)
            return web.Response(text=text, status=status, content_type="application/json")

    def _mode(self, account: str | None) -> Evaluation:
        """The flag's verdict for ``account``; never fails the customer (a failed evaluation
        is the configured mode, reason ERROR)."""
        try:
            return self.mode_of(account)
        except Exception:
            log.exception("flag evaluation failed", extra={"event": "flag_watch"})
            return Evaluation(FLAG_KEY, Mode(self.settings.mode), Reason.ERROR)

    def _legacy_call(
        self, operation: str, outcome: str, seconds: float, trace_id: str | None
    ) -> None:
        if self.metrics is not None:
            self.metrics.legacy_call(operation, outcome, seconds, trace_id)

    async def _mirror_intent(
        self,
        request: web.Request,
        forwarded: CIMultiDict[str],
        body: bytes,
        view: _Fields | None,
        trace_id: str | None,
        span_id: str | None,
        sampled: bool = False,
        mode: Mode = Mode.SHADOW,
    ) -> _Mirrored | None:
        """Record a mapped request before it is forwarded or decided (every mode but legacy);
        count the rest."""
        if mode is Mode.LEGACY or self.capture is None:
            return None
        if view is None:
            self.stats.unmapped += 1
            return None
        self.stats.mapped += 1
        mirrored = _Mirrored(
            self.capture,
            view.matched.route.name,
            uuid.uuid4().hex,
            partition_of(view.partition_key(), self.settings.partitions),
            asyncio.get_running_loop().time() + self.capture.wait_s_max,
            self.tracer,
            trace_id,
        )
        await mirrored.record(
            RecordKind.INTENT,
            {
                # the request's server span: the shadow worker's spans join its trace
                **({"span_id": span_id, "sampled": sampled} if span_id else {}),
                # the ledger decides it first: its command is built from the request alone
                **({"answered_by": mode.value} if mode in LEDGER_ANSWERS else {}),
                "method": request.method,
                "path": request.path,
                "query": [[k, v] for k, v in request.query.items()],
                "headers": header_pairs(forwarded),
                **body_for_stream(body, request.headers.get("Content-Encoding")),
            },
        )
        return mirrored

    async def _legacy_failed(
        self, mirrored: _Mirrored | None, status: int, code: str, message: str
    ) -> web.Response:
        self.stats.legacy_errors[code] += 1
        if mirrored is not None:
            await mirrored.record(RecordKind.OUTCOME, {"error": code})
        return problem(status, code, message)


def _json_or_missing(body: bytes) -> Any:
    """A request body as JSON with exact decimals (as the applier reads it), or MISSING."""
    if not body:
        return MISSING
    try:
        return json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return MISSING


def _configured(mode: Mode) -> Callable[[str | None], Evaluation]:
    """Every account in one mode (no flag in the database: a proxy built on its own)."""
    evaluation = Evaluation(FLAG_KEY, mode, Reason.DEFAULT)
    return lambda account: evaluation


async def serve(proxy: Proxy, host: str, port: int) -> web.AppRunner:
    """Start serving ``proxy`` (keep-alive on); the caller owns the returned runner."""
    runner = web.AppRunner(proxy.app(), access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def legacy_session(settings: ProxySettings) -> aiohttp.ClientSession:
    """A keep-alive connection pool towards the legacy service."""
    connector = aiohttp.TCPConnector(limit=settings.legacy_connections_max, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # send what the client sent, nothing the HTTP library would add on its own
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )


__all__ = [
    "Proxy",
    "ProxyStats",
    "body_for_stream",
    "end_to_end",
    "header_pairs",
    "legacy_session",
    "serve",
]
