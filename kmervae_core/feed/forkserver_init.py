"""Preloaded into the forkserver that starts KmerStream's loader workers (make_loader): it
ignores the rank's stop signals (workers.py)."""
from .workers import ignore_stop_signals

ignore_stop_signals()
