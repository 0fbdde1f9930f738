"""Counts in messages: "1 epoch", "2 epochs", "12,288 rows". One rule, so that no message says
"1 epochs" or "(1 chunks". No torch: ingest uses it."""
from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` (thousands separated) and `noun` in the number `n` takes; `plural` where adding "s"
    is wrong ("process", "processes")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
