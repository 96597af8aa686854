"""``serve``'s supervision of the applier process: restarted when it exits, each start on a
fresh metrics port that the sidecar's scrape is pointed at first (a port taken meanwhile costs
one restart, not all of them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from sidecar.cli import _supervise


async def test_each_start_gets_its_own_port_and_the_scrape_follows(tmp_path: Path) -> None:
    said = tmp_path / "ports"
    # a stand-in applier: says which --metrics-port it was given, then exits at once
    command = [
        sys.executable,
        "-c",
        f"import sys; open({str(said)!r}, 'a').write(sys.argv[-1] + '\\n')",
    ]
    pointed: list[int] = []
    children: list[asyncio.subprocess.Process] = []
    task = asyncio.create_task(
        _supervise(command, dict(os.environ), children, "127.0.0.1", pointed.append)
    )
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not (said.exists() and len(said.read_text().split()) >= 2):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    given = [int(p) for p in said.read_text().split()]
    assert given == pointed[: len(given)]  # the scrape pointed at each start's port first
    assert all(0 < p < 65536 for p in given)
