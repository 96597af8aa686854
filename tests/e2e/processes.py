"""Child processes for end-to-end tests: each logs to its own file, all stopped at the end."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

from tests.e2e.test_cli import ROOT


class Processes:
    """Child processes, each logging to its own file, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, *command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.running.append((process, log))
        return process

    def stop(self) -> None:
        for process, log in reversed(self.running):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
