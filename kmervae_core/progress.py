"""Progress bars for long jobs, with tqdm (rate, ETA, works on terminals and in notebooks, the
bar users know); silent where nobody watches it: off a terminal (logs, CI, Slurm output files),
or when the caller asks for quiet (--quiet, ranks other than 0)."""
from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm


class Progress:
    """Counts items (rows, batches) and, where given, bytes, shown as MB/s beside the rate."""

    def __init__(self, total: int, label: str, unit: str = "rows", stream: TextIO | None = None,
                 quiet: bool = False) -> None:
        self.nbytes = 0
        # disable=None: tqdm's own rule, off when the stream is not a terminal
        self.bar = tqdm(total=total, desc=label, unit=f" {unit}", unit_scale=True, dynamic_ncols=True,
                        mininterval=0.2, file=stream if stream is not None else sys.stderr,
                        disable=True if quiet else None)

    def update(self, n: int, nbytes: int = 0) -> None:
        self.bar.update(n)
        if nbytes and not self.bar.disable:
            self.nbytes += nbytes
            seconds = max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix_str(f"{self.nbytes / seconds / 1e6:,.0f} MB/s", refresh=False)

    def close(self) -> None:
        self.bar.close()
