"""kmervae_core: the library behind `python -m ingest` and `python -m train`.

Importing it loads no torch: the torch parts (KmerStream, the model) are loaded on first use,
so that ingest runs where torch is not installed.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {"KmerStream": "kmervae_core.feed.stream"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kmervae_core' has no attribute {name!r}")
