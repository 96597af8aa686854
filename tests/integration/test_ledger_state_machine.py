"""A Hypothesis state machine drives random commands through the real posting path on
PostgreSQL and checks them, step by step, against a small pure-Python model of the ledger
written independently of the planner."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sidecar import config
from sidecar.db.connect import create_pool
from sidecar.db.ledger_store import PostgresLedgerStore
from sidecar.db.migrate import drop_schema, migrate
from sidecar.domain.ledger import (
    Account,
    Leg,
    NormalSide,
    OpenAccount,
    Reversal,
    Side,
    Transfer,
)
from sidecar.domain.money import Currency
from sidecar.domain.outcome import TransferOutcome
from sidecar.errors import (
    CurrencyMismatch,
    IdempotencyConflict,
    InvalidCommand,
    SidecarError,
    UnknownAccount,
    UnknownTransfer,
)
from sidecar.posting import Ledger

from tests.conftest import fresh_schema_name

CURRENCIES = {"EUR": Currency("EUR", 2), "USD": Currency("USD", 2)}
ACCOUNT_IDS = [f"acc{i}" for i in range(6)]
KEYS = [f"key{i}" for i in range(10)]


@dataclass
class ModelAccount:
    currency: str
    side: str
    limit: int | None
    balance: int = 0

    def apply(self, signed: int) -> None:
        self.balance += signed if self.side == "debit" else -signed


@dataclass
class ModelTransfer:
    payload: Any
    posted: bool
    postings: list[tuple[str, str, int]] = field(default_factory=list)
    reverses: str | None = None
    reversed_by: str | None = None


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        base = config.load(None, os.environ)
        self.db = replace(base.database, schema=fresh_schema_name(), pool_connections_max=3)
        self.runner.run(migrate(self.db))
        self.pool = self.runner.run(create_pool(self.db))
        self.ledger = Ledger(PostgresLedgerStore(self.pool), base.ledger)
        self.runner.run(self.ledger.start())
        self.conn: asyncpg.Connection = self.runner.run(
            asyncpg.connect(self.db.url.reveal(), server_settings={"search_path": self.db.schema})
        )
        self.accounts: dict[str, ModelAccount] = {}
        self.transfers: dict[str, ModelTransfer] = {}
        self.events = 0

    def teardown(self) -> None:
        self.runner.run(self.ledger.stop())
        self.runner.run(self.conn.close())
        self.runner.run(self.pool.close())
        self.runner.run(drop_schema(self.db, self.db.schema))
        self.runner.close()

    def submit(self, command: Any) -> Any:
        try:
            return self.runner.run(self.ledger.submit(command))
        except SidecarError as exc:
            return exc

    # --- rules ------------------------------------------------------------------------------

    @rule(
        account_id=st.sampled_from(ACCOUNT_IDS),
        currency=st.sampled_from(sorted(CURRENCIES)),
        side=st.sampled_from(["debit", "credit"]),
        limit=st.sampled_from([None, 0, 0, 500]),
    )
    def open_account(self, account_id: str, currency: str, side: str, limit: int | None) -> None:
        account = Account(account_id, CURRENCIES[currency], NormalSide(side), limit)
        result = self.submit(OpenAccount(account))
        known = self.accounts.get(account_id)
        if known is None:
            assert result.created
            self.accounts[account_id] = ModelAccount(currency, side, limit)
            self.events += 1
        elif (known.currency, known.side, known.limit) == (currency, side, limit):
            assert not result.created
        else:
            assert isinstance(result, IdempotencyConflict)

    @rule(
        key=st.sampled_from(KEYS),
        currency=st.sampled_from(sorted(CURRENCIES)),
        parties=st.lists(st.sampled_from(ACCOUNT_IDS), min_size=2, max_size=3),
        amounts=st.lists(st.integers(1, 2_000), min_size=2, max_size=2),
    )
    def transfer(self, key: str, currency: str, parties: list[str], amounts: list[int]) -> None:
        if len(parties) == 2:
            legs = [
                Leg(parties[0], Side.DEBIT, amounts[0], currency),
                Leg(parties[1], Side.CREDIT, amounts[0], currency),
            ]
        else:
            legs = [
                Leg(parties[0], Side.DEBIT, amounts[0], currency),
                Leg(parties[1], Side.DEBIT, amounts[1], currency),
                Leg(parties[2], Side.CREDIT, amounts[0] + amounts[1], currency),
            ]
        payload = (
            "transfer",
            tuple((x.account_id, x.side, x.amount_minor) for x in legs),
            currency,
        )
        result = self.submit(Transfer(key, tuple(legs)))
        if self.expect_replay(key, payload, result):
            return
        for leg in legs:
            account = self.accounts.get(leg.account_id)
            if account is None:
                assert isinstance(result, UnknownAccount), result
                return
            if account.currency != currency:
                assert isinstance(result, CurrencyMismatch), result
                return
        signed = [(x.account_id, currency, x.signed_minor) for x in legs]
        self.expect_decision(key, payload, signed, None, result)

    @rule(key=st.sampled_from(KEYS), reversed_key=st.sampled_from(KEYS))
    def reverse(self, key: str, reversed_key: str) -> None:
        target = reversed_key
        if key == target:
            return
        payload = ("reversal", target)
        result = self.submit(Reversal(key, target))
        if self.expect_replay(key, payload, result):
            return
        original = self.transfers.get(target)
        if original is None:
            assert isinstance(result, UnknownTransfer), result
            return
        if not original.posted or original.reverses is not None:
            assert isinstance(result, InvalidCommand), result
            return
        if original.reversed_by is not None:
            assert isinstance(result, TransferOutcome) and result.key == original.reversed_by
            assert result.replayed
            return
        signed = [(a, c, -m) for a, c, m in original.postings]
        self.expect_decision(key, payload, signed, target, result)

    # --- the model's rules --------------------------------------------------------------------

    def expect_replay(self, key: str, payload: Any, result: Any) -> bool:
        known = self.transfers.get(key)
        if known is None:
            return False
        if known.payload != payload:
            assert isinstance(result, IdempotencyConflict), result
        else:
            assert isinstance(result, TransferOutcome) and result.replayed, result
            assert result.posted == known.posted
        return True

    def expect_decision(
        self,
        key: str,
        payload: Any,
        signed: list[tuple[str, str, int]],
        reverses: str | None,
        result: Any,
    ) -> None:
        assert isinstance(result, TransferOutcome) and not result.replayed, result
        trial = {a: ModelAccount(**vars(self.accounts[a])) for a, _, _ in signed}
        for account_id, _, amount in signed:
            trial[account_id].apply(amount)
        fits = all(t.limit is None or t.balance >= -t.limit for t in trial.values())
        assert result.posted == fits, (result, trial)
        self.events += 1
        self.transfers[key] = ModelTransfer(payload, fits, signed if fits else [], reverses)
        if fits:
            for account_id, model in trial.items():
                self.accounts[account_id].balance = model.balance
            if reverses is not None:
                self.transfers[reverses].reversed_by = key

    # --- invariants, after every step ------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        rows = self.runner.run(self.conn.fetch("SELECT id, balance_minor FROM accounts"))
        assert {r["id"]: r["balance_minor"] for r in rows} == {
            a: m.balance for a, m in self.accounts.items()
        }
        assert self.runner.run(self.conn.fetchval("SELECT seq FROM log_head")) == self.events

    @invariant()
    def trial_balance_is_zero_and_balances_are_sums_of_postings(self) -> None:
        off = self.runner.run(
            self.conn.fetchval(
                "SELECT count(*) FROM (SELECT currency FROM postings GROUP BY currency "
                "HAVING sum(amount_minor) <> 0) AS t"
            )
        )
        assert off == 0
        drift = self.runner.run(
            self.conn.fetchval(
                "SELECT count(*) FROM accounts a WHERE a.balance_minor <> coalesce((SELECT sum("
                "CASE a.normal_side WHEN 'debit' THEN p.amount_minor ELSE -p.amount_minor END) "
                "FROM postings p WHERE p.account_id = a.id), 0)"
            )
        )
        assert drift == 0


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ledger_matches_its_model = LedgerMachine.TestCase
