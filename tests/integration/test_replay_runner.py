"""Replays started from the admin API run as child processes, one at a time
(sidecar/admin/replays.py); a real child process here, standing in for the replay command."""

from __future__ import annotations

import asyncio
import sys

import pytest
from sidecar.admin.replays import ReplayRunner, ReplayRunning

SLOW = [
    sys.executable,
    "-c",
    "import sys, time; print('stream replayed: 5/10', file=sys.stderr, flush=True); time.sleep(30)",
]
FAILING = [
    sys.executable,
    "-c",
    "import sys; print('no such schema', file=sys.stderr); sys.exit(3)",
]


async def test_one_replay_at_a_time_and_stop_ends_the_child() -> None:
    runner = ReplayRunner(SLOW, "t_replay")
    first = runner.start(0, "alice")
    with pytest.raises(ReplayRunning, match=first.id):
        runner.start(0, "bob")
    for _ in range(200):  # its progress line arrives
        if first.done:
            break
        await asyncio.sleep(0.05)
    assert (first.done, first.total, first.state) == (5, 10, "running")
    await runner.stop()
    assert first.state == "failed" and first.finished_at is not None
    assert list(runner.replays) == [first.id]


async def test_a_failed_replay_says_why() -> None:
    runner = ReplayRunner(FAILING, "t_replay")
    replay = runner.start(0, "alice")
    for _ in range(400):
        if replay.state != "running":
            break
        await asyncio.sleep(0.05)
    assert replay.state == "failed"
    assert replay.error == "exit 3: no such schema"
