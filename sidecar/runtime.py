"""Process-wide runtime settings for the sidecar's long-running commands.

``tune_gc`` raises the cyclic garbage collector's thresholds. The posting path allocates many
short-lived objects per transfer (commands, plans, outcomes, futures), almost none of them in
reference cycles, so reference counting frees them; with the default thresholds (700, 10, 10)
the collector still ran every few hundred allocations and walked the writer's account cache:
bench/ledger.py measured 38 µs of client CPU per transfer with the defaults and 30 µs with
these (docs/benchmarks.md). Cyclic garbage is still collected, less often.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
