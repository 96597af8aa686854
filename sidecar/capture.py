"""Capture: mirror records from the customer path into the MirrorLog, many per commit.

``Capture.record`` is called on the customer path. It queues the record and, in ``durable``
mode, waits until the record's group is committed, but never longer than ``wait_ms_max``; in
``async`` mode it does not wait. One writer task drains the queue into groups and appends each
group in one commit. Capture never raises into the customer path and never drops silently.

Guarantees (tests/integration/test_capture.py):
- ``record`` returns ``True`` only once the record is committed to the stream (durable mode).
- It returns within ``wait_ms_max`` (plus scheduling) whatever the stream does: a full queue,
  a slow or failing store, a stopped writer. A record whose caller stopped waiting stays
  queued and is written late. Every record is counted exactly once: as ``committed`` (and
  also ``late`` if its caller had stopped waiting), or in ``CaptureStats.dropped`` by reason:
  ``queue_full``, ``store_error`` (its group failed ``append_attempts_max`` times),
  ``stopped`` (queued or being written when ``stop`` gave up).
- Many concurrent records share one commit: ``CaptureStats.appends`` counts the commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from sidecar.config import CaptureSettings
from sidecar.domain.mirror import MirrorRecord, RecordKind
from sidecar.errors import SidecarError
from sidecar.ports import MirrorLog

log = logging.getLogger(__name__)


@dataclass
class CaptureStats:
    recorded: int = 0
    committed: int = 0
    late: int = 0
    appends: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    #: of the dropped, intents: requests missing from the stream altogether
    dropped_intents: int = 0


@dataclass(slots=True)
class _Item:
    record: MirrorRecord
    done: asyncio.Future[bool] | None  # None in async mode
    taken: bool = False  # part of a group being appended: no longer droppable
    abandoned: bool = False  # its caller stopped waiting
    settled: bool = False  # counted once, as committed (maybe late) or dropped


class Capture:
    def __init__(self, log_: MirrorLog, settings: CaptureSettings) -> None:
        self._log = log_
        self._settings = settings
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(settings.queue_records_max)
        self._task: asyncio.Task[None] | None = None
        self.stats = CaptureStats()

    @property
    def queued(self) -> int:
        """Records waiting for the next commit."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def wait_s_max(self) -> float:
        """The longest a durable record waits, in seconds (0 in async mode)."""
        return self._settings.wait_ms_max / 1000 if self.durable else 0.0

    @property
    def durable(self) -> bool:
        return self._settings.mode == "durable"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``), then stop; the rest is dropped, counted."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._settle(item, False, "stopped")
            self._queue.task_done()

    async def record(self, record: MirrorRecord, wait_s: float | None = None) -> bool:
        """Queue ``record``; in durable mode wait for its commit, at most ``wait_s`` (or
        ``wait_ms_max``, whichever is less). Never raises."""
        self.stats.recorded += 1
        done = asyncio.get_running_loop().create_future() if self.durable else None
        item = _Item(record, done)
        if self._task is None:
            self._drop(record, "stopped")
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._drop(record, "queue_full")
            return False
        if done is None:
            return True
        limit = self._settings.wait_ms_max / 1000
        if wait_s is not None:
            limit = max(0.0, min(limit, wait_s))
        try:
            return await asyncio.wait_for(asyncio.shield(done), limit)
        except TimeoutError:
            # the answer goes out now; the record stays queued and is written late (a dropped
            # outcome would leave its request in doubt). The queue's bound still holds.
            item.abandoned = True
            return False

    # --- the writer ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            try:
                self._drain(group)
                if len(group) < self._settings.batch_records_max:
                    await asyncio.sleep(self._settings.batch_linger_ms / 1000)
                    self._drain(group)
                await self._write(group)
            except asyncio.CancelledError:  # stop(): what was not written is dropped, counted
                for item in group:
                    self._settle(item, False, "stopped")
                raise
            except Exception:  # never let the writer die: count and go on
                log.exception("capture group failed", extra={"event": "capture_failed"})
                for item in group:
                    self._settle(item, False, "store_error")
            finally:
                for _ in group:
                    self._queue.task_done()

    def _drain(self, group: list[_Item]) -> None:
        while len(group) < self._settings.batch_records_max:
            try:
                group.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _write(self, group: list[_Item]) -> None:
        live = [i for i in group if not i.settled]
        for item in live:
            item.taken = True
        if not live:
            return
        for attempt in range(1, self._settings.append_attempts_max + 1):
            try:
                await self._log.append([i.record for i in live])
            except SidecarError as exc:
                log.warning(
                    "capture append failed (attempt %d): %s",
                    attempt,
                    exc.code,
                    extra={"event": "capture_retry", "code": exc.code},
                )
                await asyncio.sleep(min(0.05, 0.005 * 2**attempt))
                continue
            self.stats.appends += 1
            for item in live:
                self._settle(item, True, None)
            return
        for item in live:
            self._settle(item, False, "store_error")

    def _drop(self, record: MirrorRecord, reason: str) -> None:
        self.stats.dropped[reason] += 1
        if record.kind is RecordKind.INTENT:
            self.stats.dropped_intents += 1
        log.warning(
            "capture dropped a record",
            extra={
                "event": "capture_dropped",
                "reason": reason,
                "kind": record.kind.value,
                "request_id": record.request_id,
                "route": record.route,
                "trace_id": record.trace_id,
            },
        )

    def _settle(self, item: _Item, committed: bool, reason: str | None) -> None:
        if item.settled:
            return
        item.settled = True
        if committed:
            self.stats.committed += 1
            if item.abandoned:
                self.stats.late += 1  # written, after its caller stopped waiting
        else:
            self._drop(item.record, reason or "store_error")
        if item.done is not None and not item.done.done():
            item.done.set_result(committed)
