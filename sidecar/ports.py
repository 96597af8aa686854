"""The ports the services need, as Protocols. Adapters live in ``sidecar.db`` (PostgreSQL) and
``sidecar.memory`` (in-memory fakes that pass the same contract suite, tests/contract).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.domain.ledger import BatchPlan, LedgerView
from sidecar.domain.mirror import Checkpoint, MirrorEvent, MirrorRecord


@dataclass(frozen=True, slots=True)
class LogHead:
    seq: int
    hash: bytes
    batches: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    content: str
    hash: bytes


class LedgerStore(Protocol):
    """Where committed ledger state lives.

    ``load`` returns the accounts named, the transfers recorded under the keys named, the
    transfer that reversed each of those (if any), and the accounts their postings touch.
    ``commit`` writes a plan atomically: events, derived rows and balances, or nothing. It
    raises ``PlanStale`` when a balance the plan assumed has changed, ``KeysTaken`` when a key
    it decided was decided meanwhile, ``AccountsTaken`` when an account it opens exists.
    """

    async def load(self, account_ids: Collection[str], keys: Collection[str]) -> LedgerView: ...

    async def commit(self, plan: BatchPlan, checkpoints: Sequence[Checkpoint] = ()) -> int:
        """Returns the seq of the plan's first event. Each checkpoint's offset moves (forward
        only) in the same transaction: a refused plan moves none."""
        ...

    async def offset(self, consumer: str, partition: int) -> int:
        """The consumer's committed offset on the partition (0 if none)."""
        ...

    async def balance(self, account_id: str, at_seq: int | None = None) -> int | None:
        """Balance after the last posting at or before ``at_seq`` (latest if None);
        None when the account does not exist (or did not yet exist at ``at_seq``)."""
        ...

    async def head(self) -> LogHead: ...

    def events(self, after_seq: int = 0, chunk: int = 5000) -> AsyncIterator[StoredEvent]: ...


class MirrorLog(Protocol):
    """The mirror stream: a gap-free, append-only sequence of captured records.

    ``append`` writes a group of records in one commit and returns each one's seq, in order;
    a record whose request id and kind are already stored keeps its seq and is not added
    again. ``read`` returns events after a seq in seq order (one partition's, if asked).
    ``in_doubt`` lists intents at or before a seq that have no outcome. A consumer's offset
    per partition starts at 0 and only moves forward (``AppendOnlyViolation`` otherwise).
    """

    async def append(self, records: Sequence[MirrorRecord]) -> list[int]: ...

    async def read(
        self, after_seq: int = 0, limit: int = 1000, partition: int | None = None
    ) -> list[MirrorEvent]: ...

    async def head(self) -> int: ...

    async def in_doubt(self, up_to_seq: int, after_seq: int = 0) -> list[MirrorEvent]:
        """Intents after ``after_seq`` and at or before ``up_to_seq`` with no outcome."""
        ...

    async def intents(self, request_ids: Collection[str]) -> dict[str, MirrorEvent]:
        """The stored intents of these requests, by request id (absent ones left out)."""
        ...

    async def outcomes(self, request_ids: Collection[str]) -> dict[str, MirrorEvent]:
        """The stored outcomes of these requests, by request id (absent ones left out)."""
        ...

    async def offset(self, consumer: str, partition: int) -> int: ...

    async def commit_offset(self, consumer: str, partition: int, seq: int) -> None: ...


class AnswerStore(Protocol):
    """The answers the ledger gave, by route and legacy idempotency key (ledger-primary)."""

    async def get(self, route: str, key: str) -> tuple[int, Any] | None: ...

    async def put(self, route: str, key: str, status: int, body: Any) -> tuple[int, Any]: ...
