"""The demo legacy ledger service: a realistic, slow-ish, slightly faulty legacy API.

Its API is shaped unlike ours (its own paths and JSON, decimal-string amounts; the mapping is
``config/mappings/example-legacy.toml``), it keeps its own state, and it injects faults from a
seeded random generator: rounding errors on some payments, silently dropped postings, wrong
balance reports, latency spikes and 5xx answers. ``GET /_legacy/faults`` reports each fault
it injected, so a demo can hold detected divergences against the truth.

Guarantees (tests/integration/test_demo_legacy.py):
- With every fault rate at zero it is a correct ledger: payments are atomic, never take a
  customer below zero, and an idempotency key replays its first answer (a retry is safe).
- Every injected fault is reported, with the account(s) and the idempotency key it touched.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

CURRENCIES = {"EUR": 2, "JPY": 0, "BHD": 3}
#: a request carrying this header is served without faults: the demo's direct baseline, whose
#: faults no sidecar could see (and whose latency must not include injected spikes)
BASELINE_HEADER = "X-Demo-Baseline"
_baseline: contextvars.ContextVar[bool] = contextvars.ContextVar("baseline", default=False)


@web.middleware
async def _baseline_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = _baseline.set(request.headers.get(BASELINE_HEADER) == "1")
    try:
        return await handler(request)
    finally:
        _baseline.reset(token)


HOUSE_PREFIX = "HOUSE-"


@dataclass(frozen=True)
class FaultRates:
    """Probabilities per request of each fault (0 turns it off)."""

    rounding: float = 0.0  # a payment applied and answered one minor unit short
    dropped: float = 0.0  # a payment answered as done but never applied
    wrong_balance: float = 0.0  # a balance read off by a few minor units
    latency_spike: float = 0.0  # an answer 50-200 ms late
    server_error: float = 0.0  # a 503 before anything is done

    @property
    def any(self) -> bool:
        return any(v > 0 for v in asdict(self).values())


@dataclass
class Fault:
    kind: str
    accounts: list[str]
    key: str | None = None
    detail: str = ""


@dataclass
class LegacyAccount:
    number: str
    currency: str
    balance_minor: int = 0
    overdraft_limit_minor: int | None = 0  # None: no floor (the house accounts)
    status: str = "open"


@dataclass
class LegacyState:
    accounts: dict[str, LegacyAccount] = field(default_factory=dict)
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # by key
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    faults: list[Fault] = field(default_factory=list)
    requests: int = 0


def money_text(minor: int, currency: str) -> str:
    exponent = CURRENCIES[currency]
    return str(Decimal(minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent)))


def parse_money(value: Any, currency: str) -> int | None:
    """Minor units of a decimal string with at most the currency's exponent, else None."""
    if not isinstance(value, str):
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return None
    minor = amount.scaleb(CURRENCIES[currency])
    if not amount.is_finite() or minor != minor.to_integral_value() or minor <= 0:
        return None
    return int(minor)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


class LegacyService:
    """The service's state and handlers. One lock serialises every change, as a legacy
    database transaction would."""

    def __init__(self, faults: FaultRates | None = None, seed: int = 7) -> None:
        self.state = LegacyState()
        self.rates = faults or FaultRates()
        self.random = random.Random(seed)
        self.lock = asyncio.Lock()
        self.latency_s = 0.0

    # --- set-up ---------------------------------------------------------------------------

    def seed_accounts(self, customers: int, funded_minor: int = 1_000_000) -> list[str]:
        """House accounts per currency and ``customers`` EUR customers holding money already."""
        for currency in CURRENCIES:
            self.state.accounts[HOUSE_PREFIX + currency] = LegacyAccount(
                HOUSE_PREFIX + currency, currency, 0, None
            )
        numbers = []
        house = self.state.accounts[HOUSE_PREFIX + "EUR"]
        for i in range(customers):
            number = f"CUST-{i:05d}"
            self.state.accounts[number] = LegacyAccount(number, "EUR", funded_minor)
            house.balance_minor -= funded_minor
            numbers.append(number)
        return numbers

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_baseline_middleware])
        app.router.add_post("/v1/accounts", self.open_account)
        app.router.add_get("/v1/accounts", self.list_accounts)
        app.router.add_get("/v1/accounts/{account}", self.account)
        app.router.add_post("/v1/accounts/{account}/payments", self.payment)
        app.router.add_get("/v1/accounts/{account}/balance", self.balance)
        app.router.add_post("/v1/payments/{payment}/refund", self.refund)
        app.router.add_get("/v1/idempotency/{key}", self.idempotency)
        app.router.add_get("/_legacy/faults", self.faults)
        app.router.add_put("/_legacy/faults", self.set_faults)
        app.router.add_get("/_legacy/health", self.health)
        return app

    # --- faults ---------------------------------------------------------------------------

    def _roll(self, rate: float) -> bool:
        return rate > 0 and not _baseline.get() and self.random.random() < rate

    async def _delay(self) -> None:
        delay = self.latency_s
        if self._roll(self.rates.latency_spike):
            spike = self.random.uniform(0.05, 0.2)
            self.state.faults.append(Fault("latency_spike", [], None, f"{spike * 1000:.0f} ms"))
            delay += spike
        if delay:
            await asyncio.sleep(delay)

    def _server_error(self, accounts: list[str], key: str | None) -> web.Response | None:
        if self._roll(self.rates.server_error):
            self.state.faults.append(Fault("server_error", accounts, key))
            return web.json_response(
                {"error": {"code": "UNAVAILABLE", "message": "try again later"}}, status=503
            )
        return None

    # --- handlers -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def faults(self, request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for fault in self.state.faults:
            counts[fault.kind] = counts.get(fault.kind, 0) + 1
        return web.json_response(
            {"counts": counts, "faults": [asdict(f) for f in self.state.faults]}
        )

    async def idempotency(self, request: web.Request) -> web.Response:
        """What a request with this idempotency key was answered, exactly; 404 if none was
        processed. A proxy that lost an answer learns it here without sending again."""
        found = self.state.answers.get(request.match_info["key"])
        if found is None:
            return fail(404, "UNKNOWN_KEY", "no request was processed under this key")
        status, answer = found
        return web.json_response(answer, status=status)

    async def set_faults(self, request: web.Request) -> web.Response:
        """The demo's switch: fault rates from now on (``{"rounding": 0.01, ...}``)."""
        body = await _body(request)
        known = set(asdict(FaultRates()))
        if set(body) - known or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
            for v in body.values()
        ):
            return fail(422, "INVALID", f"rates from 0 to 1 for {', '.join(sorted(known))}")
        self.rates = FaultRates(**{k: float(v) for k, v in body.items()})
        return web.json_response(asdict(self.rates))

    async def list_accounts(self, request: web.Request) -> web.Response:
        """Every account with its balance: what a bootstrap imports (an unmapped route)."""
        async with self.lock:
            rows = [
                {
                    "account_number": a.number,
                    "currency": a.currency,
                    "balance": money_text(a.balance_minor, a.currency),
                    "overdraft_limit": (
                        None
                        if a.overdraft_limit_minor is None
                        else money_text(a.overdraft_limit_minor, a.currency)
                    ),
                    "status": a.status,
                }
                for a in self.state.accounts.values()
            ]
        return web.json_response({"accounts": rows, "as_of": _now()})

    async def account(self, request: web.Request) -> web.Response:
        found = self.state.accounts.get(request.match_info["account"])
        if found is None:
            return fail(404, "UNKNOWN_ACCOUNT", "no such account")
        return web.json_response(
            {"account_number": found.number, "currency": found.currency, "status": found.status}
        )

    async def open_account(self, request: web.Request) -> web.Response:
        self.state.requests += 1
        body = await _body(request)
        await self._delay()
        number, currency = body.get("account_number"), body.get("currency")
        if not isinstance(number, str) or not number or currency not in CURRENCIES:
            return fail(422, "INVALID", "account_number and a known currency needed")
        failed = self._server_error([number], request.headers.get("Idempotency-Key"))
        if failed is not None:
            return failed
        key = request.headers.get("Idempotency-Key")
        async with self.lock:
            if key and key in self.state.answers:
                status, answer = self.state.answers[key]
                return web.json_response(answer, status=status)
            if number in self.state.accounts:
                return fail(409, "ACCOUNT_EXISTS", f"{number} exists")
            self.state.accounts[number] = LegacyAccount(number, currency)
            answer = {
                "account_number": number,
                "currency": currency,
                "status": "open",
                "opened_at": _now(),
            }
            if key:
                self.state.answers[key] = (201, answer)
        return web.json_response(answer, status=201)

    async def payment(self, request: web.Request) -> web.Response:
        self.state.requests += 1
        body = await _body(request)
        await self._delay()
        key = request.headers.get("Idempotency-Key")
        debit = request.match_info["account"]
        beneficiary = body.get("beneficiary")
        amount = body.get("amount")
        credit = beneficiary.get("account_number") if isinstance(beneficiary, dict) else None
        currency = amount.get("currency") if isinstance(amount, dict) else None
        if not key or not isinstance(credit, str) or currency not in CURRENCIES:
            return fail(422, "INVALID", "Idempotency-Key, beneficiary and amount needed")
        assert isinstance(amount, dict)
        minor = parse_money(amount.get("value"), currency)
        if minor is None:
            return fail(422, "INVALID", "amount.value is not money")
        failed = self._server_error([debit, credit], key)
        if failed is not None:
            return failed
        async with self.lock:
            if key in self.state.answers:
                status, answer = self.state.answers[key]
                return web.json_response(answer, status=status)
            status, answer = self._pay(key, debit, credit, minor, currency)
            if status != 503:
                self.state.answers[key] = (status, answer)
        return web.json_response(answer, status=status)

    def _pay(
        self, key: str, debit: str, credit: str, minor: int, currency: str
    ) -> tuple[int, dict[str, Any]]:
        accounts = self.state.accounts
        source, target = accounts.get(debit), accounts.get(credit)
        if source is None or target is None:
            return _error(422, "UNKNOWN_ACCOUNT", "no such account")
        if source.currency != currency or target.currency != currency:
            return _error(422, "CURRENCY_MISMATCH", "the accounts hold another currency")
        if source.status != "open" or target.status != "open":
            return _error(422, "ACCOUNT_FROZEN", "an account is not open")
        if (
            source.overdraft_limit_minor is not None
            and source.balance_minor - minor < -source.overdraft_limit_minor
        ):
            return _error(402, "NSF", "insufficient funds")
        applied = minor
        if minor > 1 and self._roll(self.rates.rounding):
            applied = minor - 1
            self.state.faults.append(
                Fault("rounding", [debit, credit], key, f"{minor} applied as {applied}")
            )
        payment_id = "PAY-" + uuid.uuid4().hex[:16]
        if self._roll(self.rates.dropped):
            self.state.faults.append(Fault("dropped", [debit, credit], key, f"{minor} not posted"))
        elif applied > 0:
            source.balance_minor -= applied
            target.balance_minor += applied
        self.state.payments[key] = {
            "payment_id": payment_id,
            "debit": debit,
            "credit": credit,
            "minor": applied,
            "currency": currency,
            "refunded": False,
        }
        return 201, {
            "payment_id": payment_id,
            "status": "completed",
            "amount": {"value": money_text(applied, currency), "currency": currency},
            "created_at": _now(),
        }

    async def refund(self, request: web.Request) -> web.Response:
        self.state.requests += 1
        body = await _body(request)
        await self._delay()
        key = request.headers.get("Idempotency-Key")
        original = body.get("original_idempotency_key")
        if not key or not isinstance(original, str):
            return fail(422, "INVALID", "Idempotency-Key and original key needed")
        async with self.lock:
            if key in self.state.answers:
                status, answer = self.state.answers[key]
                return web.json_response(answer, status=status)
            payment = self.state.payments.get(original)
            if payment is None:
                status, answer = _error(404, "UNKNOWN_PAYMENT", "no such payment")
            elif payment["refunded"]:
                status, answer = _error(409, "ALREADY_REFUNDED", "refunded before")
            elif self.state.accounts[
                payment["credit"]
            ].overdraft_limit_minor is not None and self.state.accounts[
                payment["credit"]
            ].balance_minor - payment["minor"] < -(
                self.state.accounts[payment["credit"]].overdraft_limit_minor or 0
            ):
                status, answer = _error(422, "NSF", "the beneficiary no longer holds the money")
            else:
                source = self.state.accounts[payment["credit"]]
                target = self.state.accounts[payment["debit"]]
                source.balance_minor -= payment["minor"]
                target.balance_minor += payment["minor"]
                payment["refunded"] = True
                status = 201
                answer = {
                    "refund_id": "REF-" + uuid.uuid4().hex[:16],
                    "amount": {
                        "value": money_text(payment["minor"], payment["currency"]),
                        "currency": payment["currency"],
                    },
                }
            self.state.answers[key] = (status, answer)
        return web.json_response(answer, status=status)

    async def balance(self, request: web.Request) -> web.Response:
        self.state.requests += 1
        await self._delay()
        number = request.match_info["account"]
        failed = self._server_error([number], None)
        if failed is not None:
            return failed
        async with self.lock:
            found = self.state.accounts.get(number)
            if found is None:
                return fail(404, "UNKNOWN_ACCOUNT", "no such account")
            reported = found.balance_minor
            if self._roll(self.rates.wrong_balance):
                off = self.random.choice([-3, -2, -1, 1, 2, 3])
                reported += off
                self.state.faults.append(
                    Fault("wrong_balance", [number], None, f"reported {off:+d} minor units")
                )
        return web.json_response(
            {
                "account_number": number,
                "available": {
                    "value": money_text(reported, found.currency),
                    "currency": found.currency,
                },
                "as_of": _now(),
            }
        )


def fail(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
