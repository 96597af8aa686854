"""The cutover flag: which mode answers each account, decided pure.

The flag ``ledger-mode`` has a global default mode and named cohorts. A cohort holds either an
explicit list of accounts or a sticky percentage of all accounts, and the mode its accounts
are in. Evaluation speaks OpenFeature's vocabulary: the variant is the mode, the reason is
``TARGETING_MATCH`` (an account list), ``SPLIT`` (a percentage) or ``DEFAULT``.

Guarantees (tests/unit/test_flags.py):
- An account's bucket is a stable hash of the flag key and the account id (SHA-256, not
  Python's salted ``hash``): the same on every instance, after every restart.
- Percentage cohorts are nested prefixes of one bucket order: an account is in the smallest
  percentage cohort whose share covers its bucket, so a cohort holds the slice between the next
  smaller share and its own. Raising a cohort from 10 % to 20 % only adds accounts to it; none
  of its first 10 % leaves (a test over 100,000 ids). A share cannot move past another
  cohort's (that would hand one cohort's whole slice to the other): refused.
- An explicit list wins over any percentage; an account is in at most one list (two lists
  naming it are refused, naming both).
- Bad rules (unknown mode, a share outside 0..100 or finer than 0.01 %, two percentage cohorts
  with the same share, a cohort with both or neither of a list and a share, a bad name) are
  refused with a ``FlagRulesInvalid`` naming the cohort and the key; nothing is changed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import pairwise
from typing import Any

from sidecar.errors import FlagRulesInvalid

FLAG_KEY = "ledger-mode"
#: buckets per account space: a share is a whole number of hundredths of a percent
BUCKETS = 10_000
ACCOUNTS_PER_LIST_MAX = 10_000
COHORTS_MAX = 50
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class Mode(StrEnum):
    """Who answers the customer. In this order, each is a step forward in the cutover."""

    LEGACY = "legacy"  # pass-through, nothing mirrored
    SHADOW = "shadow"  # legacy answers; the ledger shadows and is compared
    LEDGER_PRIMARY = "ledger-primary"  # the ledger answers; legacy shadows, compared in reverse
    LEDGER_ONLY = "ledger-only"  # the ledger alone

    @property
    def step(self) -> int:
        return list(Mode).index(self)


#: the modes where the ledger answers the customer (a step into one is gated by readiness)
LEDGER_ANSWERS = frozenset({Mode.LEDGER_PRIMARY, Mode.LEDGER_ONLY})


class Reason(StrEnum):
    """OpenFeature's resolution reasons, the ones this flag gives."""

    DEFAULT = "DEFAULT"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    ERROR = "ERROR"  # the evaluation failed: the configured mode was used


@dataclass(frozen=True, slots=True)
class Cohort:
    """A named set of accounts in one mode: an explicit list, or a share of all accounts in
    hundredths of a percent (``share_bp``: 1,000 is 10 %)."""

    name: str
    mode: Mode
    accounts: frozenset[str] | None = None
    share_bp: int | None = None

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "mode": self.mode.value}
        if self.accounts is not None:
            out["accounts"] = sorted(self.accounts)
        if self.share_bp is not None:
            out["percent"] = str(Decimal(self.share_bp) / 100)
        return out


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One evaluation of the flag for one account, as OpenFeature reports it."""

    flag_key: str
    variant: Mode
    reason: Reason
    cohort: str | None = None

    def document(self) -> dict[str, Any]:
        return {
            "flag_key": self.flag_key,
            "variant": self.variant.value,
            "reason": self.reason.value,
            "cohort": self.cohort,
        }


@dataclass(frozen=True)
class FlagRules:
    """The flag's whole state: the default mode and the cohorts, at a version (each change
    makes the next one)."""

    default: Mode = Mode.LEGACY
    cohorts: tuple[Cohort, ...] = ()
    version: int = 0
    _lists: Mapping[str, Cohort] = field(default_factory=dict, repr=False, compare=False)
    _shares: tuple[Cohort, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        lists: dict[str, Cohort] = {}
        for cohort in self.cohorts:
            for account in cohort.accounts or ():
                other = lists.get(account)
                if other is not None:
                    raise FlagRulesInvalid(
                        f"cohorts.{cohort.name}.accounts: {account} is already in cohort "
                        f"{other.name}; an account is in at most one list"
                    )
                lists[account] = cohort
        shares = sorted((c for c in self.cohorts if c.share_bp is not None), key=_share)
        for a, b in pairwise(shares):
            if a.share_bp == b.share_bp:
                raise FlagRulesInvalid(
                    f"cohorts.{b.name}.percent: the same share as cohort {a.name}; percentage "
                    "cohorts nest, each needs its own share"
                )
        names = [c.name for c in self.cohorts]
        if len(set(names)) != len(names):
            raise FlagRulesInvalid("cohorts: two cohorts have the same name")
        if len(self.cohorts) > COHORTS_MAX:
            raise FlagRulesInvalid(f"cohorts: at most {COHORTS_MAX}")
        object.__setattr__(self, "_lists", lists)
        object.__setattr__(self, "_shares", tuple(shares))

    def evaluate(self, account_id: str | None) -> Evaluation:
        """The mode ``account_id`` is in (no account: the default)."""
        if account_id is not None:
            listed = self._lists.get(account_id)
            if listed is not None:
                return Evaluation(FLAG_KEY, listed.mode, Reason.TARGETING_MATCH, listed.name)
            position = bucket(account_id)
            for cohort in self._shares:
                if position < _share(cohort):
                    return Evaluation(FLAG_KEY, cohort.mode, Reason.SPLIT, cohort.name)
        return Evaluation(FLAG_KEY, self.default, Reason.DEFAULT)

    def cohort(self, name: str) -> Cohort | None:
        return next((c for c in self.cohorts if c.name == name), None)

    def modes(self) -> set[Mode]:
        """Every mode some account can be in."""
        return {self.default, *(c.mode for c in self.cohorts)}

    def with_default(self, mode: Mode) -> FlagRules:
        return FlagRules(mode, self.cohorts, self.version + 1)

    def with_cohort(self, cohort: Cohort) -> FlagRules:
        """These rules with ``cohort`` added, or replacing the one of its name.

        A percentage cohort's share may move, but not past another cohort's: the accounts
        between the next smaller share and its own would all change cohort at once (raising
        a 10 % cohort past a 15 % one would hand its first 10 % to the other)."""
        old = self.cohort(cohort.name)
        if old is not None and old.share_bp is not None and cohort.share_bp is not None:
            low, high = sorted((old.share_bp, cohort.share_bp))
            crossed = [
                c
                for c in self._shares
                if c.name != cohort.name and c.share_bp is not None and low <= c.share_bp <= high
            ]
            if crossed:
                other = crossed[0]
                raise FlagRulesInvalid(
                    f"cohorts.{cohort.name}.percent: moving from {_percent(old)} % to "
                    f"{_percent(cohort)} % would cross cohort {other.name} ({_percent(other)} %), "
                    "and every account of one would change cohort; change or remove "
                    f"{other.name} first"
                )
        kept = tuple(c for c in self.cohorts if c.name != cohort.name)
        return FlagRules(self.default, (*kept, cohort), self.version + 1)

    def slice_of(self, cohort: Cohort) -> tuple[Decimal, Decimal] | None:
        """The accounts a percentage cohort holds, as a range of percent of all accounts:
        from the next smaller share to its own (cohorts nest)."""
        if cohort.share_bp is None:
            return None
        below = [
            c.share_bp
            for c in self._shares
            if c.share_bp is not None and c.share_bp < cohort.share_bp
        ]
        return Decimal(max(below, default=0)) / 100, Decimal(cohort.share_bp) / 100

    def without_cohort(self, name: str) -> FlagRules:
        if self.cohort(name) is None:
            raise FlagRulesInvalid(f"cohorts.{name}: no such cohort")
        kept = tuple(c for c in self.cohorts if c.name != name)
        return FlagRules(self.default, kept, self.version + 1)

    def document(self) -> dict[str, Any]:
        return {
            "flag_key": FLAG_KEY,
            "version": self.version,
            "default": self.default.value,
            "cohorts": [c.document() for c in self.cohorts],
        }

    def described(self) -> dict[str, Any]:
        """The document, each percentage cohort with the slice of accounts it holds."""
        out = self.document()
        for entry, cohort in zip(out["cohorts"], self.cohorts, strict=True):
            held = self.slice_of(cohort)
            if held is not None:
                entry["holds"] = {"from_percent": str(held[0]), "to_percent": str(held[1])}
        return out


def _percent(cohort: Cohort) -> str:
    return str(Decimal(cohort.share_bp or 0) / 100)


def _share(cohort: Cohort) -> int:
    assert cohort.share_bp is not None
    return cohort.share_bp


def bucket(account_id: str, flag_key: str = FLAG_KEY) -> int:
    """The account's place in ``0 .. BUCKETS - 1``: stable across processes and releases."""
    # surrogatepass: an id read from a header of non-UTF-8 bytes still has a bucket
    digest = hashlib.sha256(f"{flag_key}\x00{account_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def parse_mode(value: Any, where: str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        modes = ", ".join(m.value for m in Mode)
        raise FlagRulesInvalid(f"{where}: {value!r} is not a mode ({modes})") from None


def parse_cohort(document: Mapping[str, Any]) -> Cohort:
    """A cohort from its document (``name``, ``mode``, and ``accounts`` or ``percent``)."""
    if not isinstance(document, Mapping):
        raise FlagRulesInvalid("cohort: an object with name, mode, and accounts or percent")
    name = document.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise FlagRulesInvalid(
            f"cohorts.name: {name!r} is not a name (lower case letters, digits, - and _, "
            "starting with a letter, at most 63)"
        )
    unknown = set(document) - {"name", "mode", "accounts", "percent"}
    if unknown:
        raise FlagRulesInvalid(f"cohorts.{name}: unknown keys {sorted(unknown)}")
    mode = parse_mode(document.get("mode"), f"cohorts.{name}.mode")
    has_list, has_share = "accounts" in document, "percent" in document
    if has_list == has_share:
        raise FlagRulesInvalid(f"cohorts.{name}: give either accounts or percent, not both")
    if has_list:
        return Cohort(name, mode, accounts=_accounts(document["accounts"], name))
    return Cohort(name, mode, share_bp=_share_bp(document["percent"], name))


def _accounts(value: Any, name: str) -> frozenset[str]:
    where = f"cohorts.{name}.accounts"
    if not isinstance(value, list) or not value:
        raise FlagRulesInvalid(f"{where}: a non-empty list of account ids")
    if len(value) > ACCOUNTS_PER_LIST_MAX:
        raise FlagRulesInvalid(f"{where}: at most {ACCOUNTS_PER_LIST_MAX} accounts")
    for account in value:
        if (
            not isinstance(account, str)
            or not 1 <= len(account) <= 128
            or not account.isprintable()
        ):
            raise FlagRulesInvalid(f"{where}: {account!r} is not an account id")
    return frozenset(value)


def _share_bp(value: Any, name: str) -> int:
    """A percentage (number or decimal string) as hundredths of a percent, exactly."""
    where = f"cohorts.{name}.percent"
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise FlagRulesInvalid(f"{where}: a number from 0 to 100")
    try:
        percent = Decimal(str(value))
    except InvalidOperation:
        raise FlagRulesInvalid(f"{where}: {value!r} is not a number") from None
    if not percent.is_finite() or not 0 <= percent <= 100:
        raise FlagRulesInvalid(f"{where}: {value!r} is outside 0..100")
    share = percent * 100
    if share != share.to_integral_value():
        raise FlagRulesInvalid(f"{where}: {value!r} is finer than 0.01 %")
    return int(share)


def rules_from(default: str, cohorts: Iterable[Mapping[str, Any]], version: int) -> FlagRules:
    """Rules as stored (the database adapter's rows), validated as any change is."""
    return FlagRules(
        parse_mode(default, "default"), tuple(parse_cohort(c) for c in cohorts), version
    )


__all__ = [
    "BUCKETS",
    "FLAG_KEY",
    "Cohort",
    "Evaluation",
    "FlagRules",
    "FlagRulesInvalid",
    "Mode",
    "Reason",
    "bucket",
    "parse_cohort",
    "parse_mode",
    "rules_from",
]
