"""Rendering for people: aligned text tables and progress lines on standard error."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _is_number(value: object) -> bool:
    if isinstance(value, int | float):
        return True
    text = str(value).replace(",", "").replace("_", "")
    try:
        float(text)
    except ValueError:
        return False
    return True


def progress(label: str, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A callback ``(done, total)`` that reports at most twice a second on standard error."""
    out = stream or sys.stderr
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and done < total:
            return
        last[0] = now
        share = f" ({100 * done / total:.0f}%)" if total else ""
        end = "\r" if out.isatty() and done < total else "\n"
        out.write(f"{label}: {done:,}/{total:,}{share}{end}")
        out.flush()

    return report
