"""Process-wide runtime settings for the sidecar's long-running commands.

``tune_gc`` raises the cyclic garbage collector's thresholds. The posting path allocates many
short-lived objects per transfer (commands, plans, outcomes, futures), almost none of them in
reference cycles, so reference counting frees them; with the default thresholds (700, 10, 10)
the collector still ran every few hundred allocations and walked the writer's account cache:
bench/ledger.py measured 38 µs of client CPU per transfer with the defaults and 30 µs with
these (docs/benchmarks.md). Cyclic garbage is still collected, less often.

``run`` runs a command's coroutine on uvloop where it is installed (a dependency on Linux and
macOS): the proxy is bound by the event loop's own work (socket writes, callbacks, timers),
which uvloop does in C; bench/proxy.py measured the sidecar's saturation throughput in shadow
mode about 15% higher with it (docs/benchmarks.md). Elsewhere it falls back to asyncio's loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop's event loop when uvloop is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, where uvloop does not exist
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
