"""Replays started from the admin API: ``ledger-sidecar replay`` run as a child process (its
work never takes the customer path's event loop), watched through its progress lines and
read back from its JSON report.

Guarantees (tests/e2e/test_admin_cli.py):
- At most one replay runs per sidecar instance; a second start while one runs is refused
  (409 ``replay_running``) and changes nothing.
- A replay's state (running, done, failed), progress and report can be read while it runs and
  after; a failed replay says why (the last lines it wrote).
- Stopping the sidecar stops a running replay's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sidecar.errors import SidecarError

PROGRESS = re.compile(r"stream replayed: ([0-9,]+)/([0-9,]+)")
#: replays remembered (finished ones are forgotten oldest first)
KEPT = 20


class ReplayRunning(SidecarError):
    code = "replay_running"


@dataclass
class Replay:
    id: str
    from_seq: int
    started_by: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    state: str = "running"
    done: int = 0
    total: int = 0
    finished_at: datetime | None = None
    report: Any = None
    error: str | None = None

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "from_seq": self.from_seq,
            "started_by": self.started_by,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "progress": {"done": self.done, "total": self.total},
            "report": self.report,
            "error": self.error,
        }


class ReplayRunner:
    """Owns the replay child processes of one sidecar instance."""

    def __init__(self, command: list[str], into_prefix: str) -> None:
        #: ``ledger-sidecar [--config F] [--schema S] replay --mapping M`` (the rest is added)
        self.command = command
        #: each replay goes into a schema of its own, dropped when it ends
        self.into_prefix = into_prefix
        self.replays: dict[str, Replay] = {}
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None

    def start(self, from_seq: int, started_by: str) -> Replay:
        if self._task is not None and not self._task.done():
            running = next(r for r in self.replays.values() if r.state == "running")
            raise ReplayRunning(f"replay {running.id} is still running")
        replay = Replay(uuid.uuid4().hex[:12], from_seq, started_by)
        self.replays[replay.id] = replay
        while len(self.replays) > KEPT:
            del self.replays[next(iter(self.replays))]
        self._task = asyncio.create_task(self._run(replay), name=f"replay-{replay.id}")
        return replay

    async def _run(self, replay: Replay) -> None:
        into = f"{self.into_prefix}_{replay.id[:8]}"
        command = [
            *self.command,
            *("--json", "--progress", "--into", into, "--from", str(replay.from_seq)),
        ]
        lines: list[str] = []
        try:
            self._process = process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            assert process.stdout is not None
            assert process.stderr is not None

            async def watch(stream: asyncio.StreamReader) -> None:
                async for raw in stream:
                    line = raw.decode(errors="replace").strip()
                    found = PROGRESS.search(line)
                    if found:
                        replay.done = int(found.group(1).replace(",", ""))
                        replay.total = int(found.group(2).replace(",", ""))
                    elif line:
                        lines.append(line)
                        del lines[:-20]

            watching = asyncio.create_task(watch(process.stderr))
            output = await process.stdout.read()
            await watching
            code = await process.wait()
            if code == 0:
                replay.report = json.loads(output)
                replay.state = "done"
            else:
                replay.state = "failed"
                replay.error = f"exit {code}: " + " | ".join(lines[-5:])
        except (OSError, ValueError) as exc:
            replay.state, replay.error = "failed", str(exc)
        finally:
            replay.finished_at = datetime.now(UTC)
            self._process = None

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def replay_runner(config: str | None, schema: str, mapping: str) -> ReplayRunner:
    """Replays of ``schema``'s stream, as ``ledger-sidecar replay`` with this configuration."""
    command = [sys.executable, "-m", "sidecar.cli"]
    if config:
        command += ["--config", config]
    command += ["--schema", schema, "replay", "--mapping", mapping]
    return ReplayRunner(command, f"{schema[:40]}_api_replay")


__all__ = ["Replay", "ReplayRunner", "ReplayRunning", "replay_runner"]
