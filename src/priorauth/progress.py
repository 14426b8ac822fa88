"""Progress of long work for a person at a terminal: cases done / total, rate and time left, on
one rewritten line of standard error. Silent when standard error is not a terminal (cron, CI,
pipes), so logs stay clean. Counts only: never a case ID or anything about a patient.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(done: int, total: int, elapsed_s: float, what: str = "cases") -> str:
    """'cases 120/1,000 (12%) · 14.2/s · 1m02s left' (rate and time left once there is a rate)."""
    share = f" ({100 * done // total}%)" if total else ""
    line = f"{what} {done:,}/{total:,}{share}"
    if done and elapsed_s > 0:
        rate = done / elapsed_s
        line += f" · {rate:.1f}/s"
        if done < total:
            line += f" · {_clock((total - done) / rate)} left"
        else:
            line += f" · done in {_clock(elapsed_s)}"
    return line


class Progress:
    """`update(done)` as work finishes; `close()` ends the line. Redraws at most every 0.2 s."""

    def __init__(
        self, total: int, *, what: str = "cases", stream: TextIO | None = None, force: bool = False
    ) -> None:
        self.total = total
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._done = 0

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.2 and done < self.total):
            return
        self._drawn = now
        line = progress_line(done, self.total, now - self.started, self.what)
        self.stream.write("\r\033[K" + line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._drawn = 0.0
            self.update(self._done)
            self.stream.write("\n")
            self.stream.flush()
