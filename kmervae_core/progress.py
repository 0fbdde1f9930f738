"""A progress line for long jobs: redrawn in place on a terminal, silent elsewhere."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts items (rows, samples) and bytes; shows rate, MB/s and an ETA on a terminal."""

    def __init__(self, total: int, label: str, unit: str = "rows", stream: TextIO | None = None,
                 quiet: bool = False, min_interval: float = 0.2) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.done = 0
        self.nbytes = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._min_interval = min_interval

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, n: int, nbytes: int = 0) -> None:
        self.done += n
        self.nbytes += nbytes
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self._min_interval or self.done >= self.total):
            self._last = now
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()

    def line(self) -> str:
        secs = max(self.elapsed, 1e-9)
        rate = self.done / secs
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        text = f"{self.label} {self.done:,}/{self.total:,} {self.unit} {pct:5.1f}% | {rate:,.0f} {self.unit}/s"
        if self.nbytes:
            text += f" | {self.nbytes / secs / 1e6:,.0f} MB/s"
        if eta != float("inf") and self.done < self.total:
            text += f" | ETA {eta:,.0f} s"
        return text

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\033[K\n")
            self.stream.flush()
