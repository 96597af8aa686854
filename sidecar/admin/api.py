"""The admin API (``/admin/v1``): modes and cohorts of the cutover flag, divergence triage,
API tokens and the audit log, on a port of its own.

Guarantees (tests/integration/test_admin_api.py, tests/e2e/test_admin_cli.py):
- Every request is checked against the served OpenAPI document (``sidecar.admin.openapi``)
  before anything runs: wrong types, unknown fields, missing reasons, out-of-range numbers and
  oversized bodies get a clear 4xx (``{"error": {"code", "message"}}``) and change nothing.
  A schema-driven fuzzer finds no 5xx.
- A missing, unknown or revoked token gets 401; a token whose role lacks the permission gets
  403. Neither changes anything; both are recorded in the audit log as refused attempts, as
  is every refused change (bad rules, unknown target, a body too large). Anonymous refusals
  are recorded up to 60 a minute; the rest are counted into the next one recorded.
- Every change writes exactly one audit record (actor, role, action, target, reason, before,
  after, trace id, what it produced) in the transaction of its effect.
- A mode this sidecar cannot serve (no mapping for shadow; no ``[route.answer]`` in every
  route for ledger-primary and ledger-only) is refused with 409 ``mode_unavailable``; a mode
  where the ledger answers is reached only by a flip, which asks readiness first (409
  ``flip_required`` when set directly).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator, ValidationError, validators
from opentelemetry import trace

from sidecar.admin.openapi import DOCUMENT, PREFIX, operations
from sidecar.admin.replays import ReplayRunner, ReplayRunning
from sidecar.db.admin_store import AdjustmentRefused, NotFound, PostgresAdminStore, Token
from sidecar.db.comparison_store import PostgresComparisonStore
from sidecar.domain.audit import AuditRecord, Permission, Role, allows
from sidecar.domain.flags import LEDGER_ANSWERS, FlagRules, Mode, parse_cohort
from sidecar.domain.ledger import Transfer
from sidecar.domain.money import Amount, Currency
from sidecar.domain.readiness import Report, Verdict
from sidecar.errors import FlagRulesInvalid, InvalidCommand, SidecarError
from sidecar.flag_watch import FlagWatcher
from sidecar.telemetry.tracing import ids_of

log = logging.getLogger(__name__)


class Unauthenticated(SidecarError):
    code = "unauthenticated"


class Forbidden(SidecarError):
    code = "forbidden"


class BadRequest(InvalidCommand):
    code = "invalid_request"


class ModeUnavailable(SidecarError):
    code = "mode_unavailable"


class RequestTooLarge(InvalidCommand):
    code = "request_too_large"


class FlipRequired(SidecarError):
    """Modes where the ledger answers are reached through the flip and its readiness gate."""

    code = "flip_required"


class NotReady(SidecarError):
    """A forward flip refused: the readiness verdict is not GO."""

    code = "not_ready"

    def __init__(self, report: Report) -> None:
        super().__init__(f"readiness is {report.verdict.value}: {report.reason}")
        self.report = report


#: modes where the ledger answers customers: stepping into one needs a GO
GATED = LEDGER_ANSWERS


#: anonymous refusals recorded per minute; beyond that they are counted into the next record
#: (anyone can knock without a token: the append-only log must not grow at their pace)
ANONYMOUS_RECORDS_PER_MINUTE = 60


def _whole_pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """``pattern``, with ``$`` meaning the end of the string (Python's ``re`` also lets it
    match before a final newline, which would let ``"name\n"`` through)."""
    if not isinstance(instance, str):
        return
    if re.search(pattern, instance) is None or (pattern.endswith("$") and instance.endswith("\n")):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


#: JSON Schema 2020-12 as the OpenAPI document says it, with whole-string patterns
Checker: Any = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _whole_pattern}
)


#: one error -> HTTP status table; anything else is a 500 with code internal_error
STATUS: tuple[tuple[type[SidecarError], int], ...] = (
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (ModeUnavailable, 409),
    (NotReady, 409),
    (FlipRequired, 409),
    (ReplayRunning, 409),
    (RequestTooLarge, 413),
    (FlagRulesInvalid, 422),
    (AdjustmentRefused, 422),
    (InvalidCommand, 400),
)

Handler = Callable[["Call"], Awaitable[tuple[int, Any]]]


def problem(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="ledger-sidecar"'} if status == 401 else None
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


@dataclass
class Call:
    """One admin request, checked: who, what, with which inputs."""

    request: web.Request
    token: Token
    action: str
    body: dict[str, Any]
    query: dict[str, Any]
    path: dict[str, Any]
    trace_id: str | None

    def audit(self, target: str | None = None, reason: str | None = None) -> AuditRecord:
        return AuditRecord(
            actor=self.token.name,
            role=self.token.role.value,
            action=self.action,
            allowed=True,
            target=target,
            reason=reason or self.body.get("reason") or self.query.get("reason"),
            trace_id=self.trace_id,
        )


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    action: str
    permission: Permission
    body: Any  # a Checker, or None
    parameters: tuple[dict[str, Any], ...]
    handler: Handler


class AdminApi:
    def __init__(
        self,
        store: PostgresAdminStore,
        comparisons: PostgresComparisonStore,
        flags: FlagWatcher,
        available: frozenset[Mode],
        tracer: trace.Tracer | None = None,
        body_bytes_max: int = 65_536,
        readiness: Callable[[str | None], Awaitable[Report]] | None = None,
        replays: ReplayRunner | None = None,
        currencies: Mapping[str, int] | None = None,
        on_readiness: Callable[[Report], None] | None = None,
    ) -> None:
        #: told of every readiness report computed (the cutover dashboard's gauges)
        self.on_readiness = on_readiness
        #: currency -> minor-unit exponent, for adjustments' decimal amounts
        self.currencies = dict(currencies or {})
        #: replays run as child processes (None: this sidecar cannot start any)
        self.replays = replays
        #: the readiness report of a scope (None: everyone; else a cohort's name)
        self.readiness = readiness
        self.store = store
        self.comparisons = comparisons
        self.flags = flags
        self.available = available
        self.tracer = tracer or trace.NoOpTracer()
        self.body_bytes_max = body_bytes_max
        self._anonymous = _Budget(ANONYMOUS_RECORDS_PER_MINUTE, 60.0)
        self._anonymous_suppressed = 0
        handlers: dict[str, tuple[str, Handler]] = {
            "whoami": ("token.whoami", self._whoami),
            "getModes": ("flag.read", self._modes),
            "evaluateMode": ("flag.evaluate", self._evaluate),
            "setDefaultMode": ("flag.set_default", self._set_default),
            "setCohort": ("flag.set_cohort", self._set_cohort),
            "removeCohort": ("flag.remove_cohort", self._remove_cohort),
            "readiness": ("readiness.read", self._readiness),
            "flip": ("flag.flip", self._flip),
            "adjust": ("ledger.adjust", self._adjust),
            "listReplays": ("replay.list", self._replays),
            "startReplay": ("replay.start", self._start_replay),
            "getReplay": ("replay.read", self._replay),
            "listDivergences": ("divergence.list", self._divergences),
            "triageDivergence": ("divergence.triage", self._triage),
            "readAudit": ("audit.read", self._audit),
            "listTokens": ("token.list", self._tokens),
            "createToken": ("token.create", self._create_token),
            "revokeToken": ("token.revoke", self._revoke_token),
        }
        self.routes: list[_Route] = []
        for method, template, operation in operations():
            action, handler = handlers[operation["operationId"]]
            schema = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            self.routes.append(
                _Route(
                    method,
                    template,
                    action,
                    Permission(operation["x-permission"]),
                    Checker(schema) if schema else None,
                    tuple(operation.get("parameters", ())),
                    handler,
                )
            )

    def app(self) -> web.Application:
        application = web.Application(
            client_max_size=self.body_bytes_max, middlewares=[self._errors]
        )
        application.router.add_get(f"{PREFIX}/openapi.json", self._document)
        for route in self.routes:
            application.router.add_route(route.method, route.template, self._endpoint(route))
        return application

    # --- the request pipeline ---------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # no such path, method not allowed
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            return problem(exc.status, code, exc.reason)
        except Exception:  # a bug of ours: said as such, never as a stack trace
            log.exception("admin request failed", extra={"event": "admin_error"})
            return problem(500, "internal_error", "the admin API failed; see its log")

    async def _document(self, request: web.Request) -> web.Response:
        return web.json_response(DOCUMENT)

    def _endpoint(self, route: _Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def endpoint(request: web.Request) -> web.Response:
            with self.tracer.start_as_current_span(
                f"{route.method} {route.template}", kind=trace.SpanKind.SERVER
            ) as span:
                trace_id, _ = ids_of(span)
                return await self._handle(route, request, trace_id)

        return endpoint

    async def _handle(
        self, route: _Route, request: web.Request, trace_id: str | None
    ) -> web.Response:
        token: Token | None = None
        call: Call | None = None
        try:
            token = await self._authenticate(request)
            if not allows(token.role, route.permission):
                raise Forbidden(
                    f"the {token.role.value} role may not {route.permission.value} ({route.action})"
                )
            call = Call(
                request,
                token,
                route.action,
                await self._body(route, request),
                _parameters(route, "query", request.query),
                _parameters(route, "path", request.match_info),
                trace_id,
            )
            status, answer = await route.handler(call)
            return web.json_response(answer, status=status)
        except SidecarError as exc:
            status = next((s for kind, s in STATUS if isinstance(exc, kind)), 500)
            await self._refused(route, token, exc, trace_id, request, call)
            answer = problem(status, exc.code, exc.message)
            if isinstance(exc, NotReady):  # the verdict explains the refusal
                body = {"error": {"code": exc.code, "message": exc.message}}
                answer = web.json_response(
                    {**body, "readiness": exc.report.document()}, status=status
                )
            return answer

    async def _authenticate(self, request: web.Request) -> Token:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthenticated("an Authorization: Bearer <token> header is needed")
        token = await self.store.authenticate(presented.strip())
        if token is None:
            raise Unauthenticated("the token is unknown, malformed or revoked")
        return token

    async def _body(self, route: _Route, request: web.Request) -> dict[str, Any]:
        if route.body is None:
            return {}
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(f"bodies are limited to {self.body_bytes_max} bytes") from None
        try:
            body = orjson.loads(raw) if raw else None  # strict UTF-8: no lone surrogates
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not JSON (UTF-8)") from None
        error = next(iter(sorted(route.body.iter_errors(body), key=lambda e: e.path)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "body"
            raise BadRequest(f"{where}: {error.message}")
        assert isinstance(body, dict)
        _no_nul(body, "body")
        return body

    async def _refused(
        self,
        route: _Route,
        token: Token | None,
        exc: SidecarError,
        trace_id: str | None,
        request: web.Request,
        call: Call | None,
    ) -> None:
        refusal: dict[str, Any] = {"code": exc.code, "message": exc.message[:500]}
        if token is None:
            if not self._anonymous.take():
                self._anonymous_suppressed += 1
                return
            if self._anonymous_suppressed:
                refusal["suppressed_before"] = self._anonymous_suppressed
                self._anonymous_suppressed = 0
        record = AuditRecord(
            actor=token.name if token else "anonymous",
            role=token.role.value if token else None,
            action=route.action,
            allowed=False,
            target=request.path,
            reason=call.audit().reason if call is not None else await _claimed_reason(request),
            trace_id=trace_id,
            refusal=refusal,
            evidence=exc.report.document() if isinstance(exc, NotReady) else None,
        )
        try:
            await self.store.record(record)
        except Exception:  # the refusal stands even if its record cannot be written
            log.exception("refused admin request not recorded", extra={"event": "audit_failed"})

    # --- modes ------------------------------------------------------------------------------

    async def _whoami(self, call: Call) -> tuple[int, Any]:
        return 200, {"name": call.token.name, "role": call.token.role.value, "id": call.token.id}

    async def _modes(self, call: Call) -> tuple[int, Any]:
        rules = await self.flags.refresh()
        return 200, {**rules.described(), "available": sorted(m.value for m in self.available)}

    async def _evaluate(self, call: Call) -> tuple[int, Any]:
        return 200, self.flags.rules.evaluate(call.query["account_id"]).document()

    def _check_settable(self, mode: Mode) -> None:
        """Setting a mode directly: not one where the ledger answers (that is a flip)."""
        self._check_available(mode)
        if mode in GATED:
            raise FlipRequired(
                f"{mode.value}: the ledger answers there, so it is reached by a flip (POST "
                f"{PREFIX}/flip, `ledger-sidecar flip`), which asks readiness first"
            )

    def _check_available(self, mode: Mode) -> None:
        if mode not in self.available:
            raise ModeUnavailable(
                f"this sidecar cannot serve {mode.value}: it serves "
                + ", ".join(m.value for m in Mode if m in self.available)
            )

    async def _change(
        self, call: Call, change: Callable[[FlagRules], FlagRules], target: str
    ) -> tuple[int, Any]:
        _, after, seq = await self.store.change_flag(change, call.audit(target))
        self.flags.adopt(after)  # committed: in force here now, elsewhere at the next poll
        return 200, {**after.described(), "audit_seq": seq}

    async def _set_default(self, call: Call) -> tuple[int, Any]:
        mode = Mode(call.body["mode"])
        self._check_settable(mode)
        return await self._change(call, lambda r: r.with_default(mode), "default")

    async def _set_cohort(self, call: Call) -> tuple[int, Any]:
        name = call.path["name"]
        document = {k: v for k, v in call.body.items() if k != "reason"}
        cohort = parse_cohort({"name": name, **document})
        self._check_settable(cohort.mode)
        return await self._change(call, lambda r: r.with_cohort(cohort), f"cohort/{name}")

    async def _remove_cohort(self, call: Call) -> tuple[int, Any]:
        name = call.path["name"]
        if (
            self.flags.rules.cohort(name) is None
            and (await self.flags.refresh()).cohort(name) is None
        ):
            raise NotFound(f"no cohort {name}")
        return await self._change(call, lambda r: r.without_cohort(name), f"cohort/{name}")

    # --- readiness and the flip -------------------------------------------------------------

    async def _report(self, cohort: str | None) -> Report:
        if self.readiness is None:
            raise ModeUnavailable("this sidecar has no readiness report (no mapping)")
        await self.flags.refresh()
        report = await self.readiness(cohort)
        if self.on_readiness is not None:
            self.on_readiness(report)
        return report

    async def _readiness(self, call: Call) -> tuple[int, Any]:
        return 200, (await self._report(call.query.get("cohort"))).document()

    async def _flip(self, call: Call) -> tuple[int, Any]:
        to, cohort = Mode(call.body["to"]), call.body.get("cohort")
        dry_run, force = bool(call.body.get("dry_run")), bool(call.body.get("force"))
        rules = await self.flags.refresh()
        scope = rules.cohort(cohort) if cohort is not None else None
        if cohort is not None and scope is None:
            raise NotFound(f"no cohort {cohort}: make it with PUT /modes/cohorts/{cohort}")
        current = scope.mode if scope is not None else rules.default
        self._check_available(to)
        forward = to.step > current.step
        gated = forward and to in GATED
        report = await self._report(cohort) if gated else None
        blocked = report is not None and report.verdict is not Verdict.GO
        if blocked and force and not allows(call.token.role, Permission.FORCE_FLIP):
            raise Forbidden(
                f"forcing a flip past readiness needs the admin role, not {call.token.role.value}"
            )
        failing = [c.name for c in report.checks if not c.ok] if report is not None else []
        plan = {
            "scope": f"cohort {cohort}" if cohort else "default",
            "from": current.value,
            "to": to.value,
            "forward": forward,
            "gated": gated,
            "verdict": report.verdict.value if report is not None else None,
            "forced": blocked and force,
            "failing_checks": failing if blocked else [],
        }
        if dry_run:
            would = "would be refused" if blocked and not force else "would apply"
            return 200, {
                **plan,
                "dry_run": True,
                "outcome": would,
                "readiness": report.document() if report is not None else None,
            }
        if blocked and not force:
            assert report is not None
            raise NotReady(report)

        def flip(rules: FlagRules) -> FlagRules:
            if cohort is None:
                return rules.with_default(to)
            held = rules.cohort(cohort)
            if held is None:
                raise NotFound(f"no cohort {cohort}")
            return rules.with_cohort(replace(held, mode=to))

        audit = replace(
            call.audit("default" if cohort is None else f"cohort/{cohort}"),
            evidence=report.document() if report is not None else None,
            produced={"forced": plan["forced"], "failing_checks": plan["failing_checks"]},
        )
        _, after, seq = await self.store.change_flag(flip, audit)
        self.flags.adopt(after)
        return 200, {**plan, "dry_run": False, "flag_version": after.version, "audit_seq": seq}

    # --- manual adjustments -----------------------------------------------------------------

    async def _adjust(self, call: Call) -> tuple[int, Any]:
        body = call.body
        code = body["currency"]
        if code not in self.currencies:
            known = ", ".join(sorted(self.currencies)) or "none"
            raise BadRequest(f"currency: {code} is not one the mapping knows ({known})")
        amount = Amount.parse(body["amount"], Currency(code, self.currencies[code]))
        if amount.minor <= 0:
            raise BadRequest("amount: must be above zero")
        if body["debit"] == body["credit"]:
            raise BadRequest("credit: must differ from debit")
        key = body.get("key") or f"ADJ-{uuid.uuid4().hex}"
        transfer = Transfer.between(
            key,
            debit=body["debit"],
            credit=body["credit"],
            amount_minor=amount.minor,
            currency=code,
            metadata={"adjustment": "true", "actor": call.token.name, "reason": body["reason"]},
        )
        audit = replace(
            call.audit(f"transfer/{key}"),
            after={
                "debit": body["debit"],
                "credit": body["credit"],
                "amount_minor": amount.minor,
                "currency": code,
            },
        )
        outcome, seq = await self.store.adjust(transfer, audit)
        return 201, {
            "key": key,
            "status": outcome.status.value,
            "ledger_seq": outcome.seq,
            "replayed": outcome.replayed,
            "audit_seq": seq,
        }

    # --- replays ---------------------------------------------------------------------------

    def _runner(self) -> ReplayRunner:
        if self.replays is None:
            raise ModeUnavailable("this sidecar starts no replays (no mapping)")
        return self.replays

    async def _replays(self, call: Call) -> tuple[int, Any]:
        return 200, {"replays": [r.document() for r in self._runner().replays.values()]}

    async def _start_replay(self, call: Call) -> tuple[int, Any]:
        runner = self._runner()
        from_seq = call.body.get("from_seq", 0)
        replay = runner.start(from_seq, call.token.name)
        try:
            await self.store.record(
                replace(call.audit(f"replay/{replay.id}"), after=replay.document())
            )
        except BaseException:
            await runner.stop()  # not recorded: not started
            raise
        return 202, replay.document()

    async def _replay(self, call: Call) -> tuple[int, Any]:
        replay = self._runner().replays.get(call.path["replay_id"])
        if replay is None:
            raise NotFound(f"no replay {call.path['replay_id']} (this instance keeps the last 20)")
        return 200, replay.document()

    # --- divergences ------------------------------------------------------------------------

    async def _divergences(self, call: Call) -> tuple[int, Any]:
        found = await self.comparisons.divergences(
            call.query.get("account_id"),
            call.query.get("after_seq", 0),
            call.query.get("limit", 100),
        )
        states = await self.store.triage_states([d["seq"] for d in found])
        open_ = {"state": "open"}
        return 200, {"divergences": [{**d, "triage": states.get(d["seq"], open_)} for d in found]}

    async def _triage(self, call: Call) -> tuple[int, Any]:
        state, note = call.body["state"], call.body.get("note")
        if state == "resolved" and not note:
            raise BadRequest("note: resolving a divergence needs a note saying how")
        answer = await self.store.triage(call.path["seq"], state, note, call.audit())
        return 200, answer

    # --- audit and tokens -------------------------------------------------------------------

    async def _audit(self, call: Call) -> tuple[int, Any]:
        records = await self.store.audit_log(
            call.query.get("after_seq", 0), call.query.get("limit", 100), call.query.get("action")
        )
        return 200, {"records": records}

    async def _tokens(self, call: Call) -> tuple[int, Any]:
        return 200, {"tokens": [t.document() for t in await self.store.tokens()]}

    async def _create_token(self, call: Call) -> tuple[int, Any]:
        token, secret = await self.store.create_token(
            call.body["name"], Role(call.body["role"]), call.audit()
        )
        return 201, {**token.document(), "token": secret}

    async def _revoke_token(self, call: Call) -> tuple[int, Any]:
        token = await self.store.revoke_token(call.path["token_id"], call.audit())
        return 200, token.document()


async def _claimed_reason(request: web.Request) -> str | None:
    """The reason a refused request gave, if it gave a readable one (for its audit record)."""
    claimed: Any = request.query.get("reason")
    if claimed is None and request.can_read_body:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, web.HTTPException):
            return None
        claimed = body.get("reason") if isinstance(body, dict) else None
    return claimed[:500] if isinstance(claimed, str) else None


def _parameters(route: _Route, where: str, given: Mapping[str, str]) -> dict[str, Any]:
    """Query or path parameters checked against their schemas; integers converted."""
    out: dict[str, Any] = {}
    declared = [p for p in route.parameters if p["in"] == where]
    if where == "query":
        unknown = set(given) - {p["name"] for p in declared}
        if unknown:
            raise BadRequest(f"unknown query parameters: {', '.join(sorted(unknown))}")
        repeated = sorted({k for k in given if len(given.getall(k)) > 1})  # type: ignore[attr-defined]
        if repeated:
            raise BadRequest(f"query parameters given more than once: {', '.join(repeated)}")
    for parameter in declared:
        name, schema = parameter["name"], parameter["schema"]
        if name not in given:
            if parameter.get("required"):
                raise BadRequest(f"{name}: required")
            continue
        value: Any = given[name]
        if schema.get("type") == "integer":
            if not re.fullmatch(r"-?[0-9]{1,19}", value):
                raise BadRequest(f"{name}: {value!r} is not an integer")
            value = int(value)
        _no_nul(value, name)
        error = next(iter(Checker(schema).iter_errors(value)), None)
        if error is not None:
            raise BadRequest(f"{name}: {error.message}")
        out[name] = value
    return out


def _no_nul(value: Any, where: str) -> None:
    """Text with a NUL character cannot be stored (PostgreSQL refuses it): refused up front."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"{where}: NUL characters are not allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_nul(item, f"{where}/{index}")


class _Budget:
    """At most ``count`` takes per ``seconds`` (a fixed window)."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count, self.seconds = count, seconds
        self.window_started, self.taken = time.monotonic(), 0

    def take(self) -> bool:
        now = time.monotonic()
        if now - self.window_started >= self.seconds:
            self.window_started, self.taken = now, 0
        if self.taken >= self.count:
            return False
        self.taken += 1
        return True


__all__ = ["AdminApi", "problem"]
