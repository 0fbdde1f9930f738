"""benchmarks/copy_overlap.py's figure (issue 32 part 7): the share of the feed's host-to-device
copy time, off the compute stream, during which a compute-stream kernel runs, read from a
profiler trace's events. Synthetic events (µs) against a hand computation; no device needed."""
from __future__ import annotations

import pytest

from benchmarks.copy_overlap import copy_overlap


def kernel(stream: int, start: float, end: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": "k", "ts": start, "dur": end - start, "args": {"stream": stream}}


def memcpy(stream: int, start: float, end: float, kind: str = "HtoD (Pinned -> Device)") -> dict:
    return {"ph": "X", "cat": "gpu_memcpy", "name": f"Memcpy {kind}", "ts": start, "dur": end - start,
            "args": {"stream": stream, "bytes": 100}}


def test_overlap_is_the_share_of_the_copy_streams_time_under_compute_kernels() -> None:
    events = [
        kernel(7, 0, 10), kernel(7, 20, 30), kernel(7, 8, 12),  # compute stream: busy [0, 12) and [20, 30)
        kernel(13, 0, 1),  # a small kernel on the copy stream does not make it the compute stream
        memcpy(13, 5, 15), memcpy(13, 10, 25),  # copies: their union [5, 25), 20 µs
        memcpy(7, 40, 45),  # a copy on the compute stream itself (the pass's indices) is not the feed's
        memcpy(13, 50, 60, "DtoH (Device -> Pinned)"),  # not host-to-device
        {"ph": "X", "cat": "cpu_op", "name": "aten::copy_", "ts": 0, "dur": 100, "tid": 1},
    ]
    result = copy_overlap(events)
    # by hand: [5, 25) meets [0, 12) in [5, 12) (7 µs) and [20, 30) in [20, 25) (5 µs)
    assert result.compute == 7
    assert result.copy_us == pytest.approx(20.0)
    assert result.overlap_us == pytest.approx(12.0)
    assert result.share == pytest.approx(0.6)
    assert result.verdict == "PASS"


def test_copies_issued_on_the_compute_stream_show_no_overlap() -> None:
    """The review's finding a: copies on the compute stream wait for the step (and it for them)."""
    events = [kernel(7, 0, 10), memcpy(7, 10, 20), kernel(7, 20, 30)]
    result = copy_overlap(events)
    assert result.copy_us == 0.0 and result.share == 0.0
    assert result.verdict == "MISS"


def test_a_cpu_profile_has_no_streams() -> None:
    result = copy_overlap([{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5, "tid": 1}])
    assert result.streams == {} and result.compute is None and result.verdict == "MISS"
