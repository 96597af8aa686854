"""The mirror stream's records: what capture writes and the applier reads.

A record is one half of a mirrored exchange: the request (``intent``, written before the
request is forwarded) or the legacy answer (``outcome``, written after). Both carry the
request's id and its partition, so a consumer can keep per-account order and find intents
that never got an outcome (in doubt). No I/O here; the stream itself is the ``MirrorLog`` port.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from sidecar.errors import InvalidCommand


class RecordKind(StrEnum):
    INTENT = "intent"
    OUTCOME = "outcome"


@dataclass(frozen=True, slots=True)
class MirrorRecord:
    partition: int
    kind: RecordKind
    request_id: str
    content: Mapping[str, Any] = field(default_factory=dict)
    route: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class MirrorEvent:
    """A record as stored, with its place in the stream."""

    seq: int
    record: MirrorRecord
    #: when it was committed, in seconds since the epoch (None where the log keeps no time)
    recorded_at: float | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A consumer has dealt with a partition's events up to and including ``seq``."""

    consumer: str
    partition: int
    seq: int


def partition_of(partition_key: str, partitions: int) -> int:
    """The partition of an account (or other key): stable across processes and restarts."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return zlib.crc32(partition_key.encode()) % partitions


def content_json(record: MirrorRecord) -> str:
    """A record's content as JSON text; ``InvalidCommand`` if it is not plain JSON."""
    try:
        text = orjson.dumps(record.content).decode()
    except TypeError as exc:
        raise InvalidCommand(
            f"mirror record {record.request_id}: content is not JSON: {exc}"
        ) from None
    # PostgreSQL's jsonb cannot hold U+0000: it is kept as the six characters \u0000
    return text.replace("\\u0000", "\\\\u0000")
