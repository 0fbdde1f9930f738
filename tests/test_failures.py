"""What a run leaves when things go wrong or are shared: a reader thread whose read fails or
hangs stops the batches with one line naming the rank and the chunk, and leaves no thread
behind; every file a run writes has the permissions the user's umask asks for."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from kmervae_core import KmerStream
from kmervae_core.errors import ReaderFailed
from kmervae_core.feed.reader import READER_THREAD_PREFIX
from tests.conftest import ROOT, child_env

TINY = ["--hidden", "64,32", "--latent", "8", "--batch-size", "48", "--metrics-port", "0"]


def start(*args, umask: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", *map(str, args)], cwd=ROOT, env=child_env(OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=None if umask is None else (lambda: os.umask(umask)))


@pytest.fixture
def earlier_threads() -> set[threading.Thread]:
    """Threads alive before the test (another test's unclosed stream is not this test's to check)."""
    return set(threading.enumerate())


def reader_threads(before: set[threading.Thread]) -> list[str]:
    """Reader threads started since `before` and still alive."""
    return [t.name for t in set(threading.enumerate()) - before if t.name.startswith(READER_THREAD_PREFIX)]


def failing_read(stream: KmerStream, failure: BaseException | threading.Event, at: int = 3):
    """Make the stream's `at`-th chunk read raise `failure`, or block until the event is set."""
    original, count = stream.read_chunk, [0]

    def read(chunk: int, target: torch.Tensor) -> None:
        count[0] += 1
        if count[0] == at:
            if isinstance(failure, threading.Event):
                failure.wait()
            else:
                raise failure
        original(chunk, target)
    stream.read_chunk = read


def first_error(stream: KmerStream) -> str:
    with pytest.raises(ReaderFailed) as caught:
        for _ in stream:
            pass
    return str(caught.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unexpected_error_in_a_reader_is_one_line_naming_the_rank_and_chunk(earlier_threads, train_store, workers):
    store, _ = train_store
    with KmerStream(store, batch_size=48, rank=1, world_size=2, workers=workers) as s:
        failing_read(s, RuntimeError("disk says no\nsecond line"))
        line = first_error(s)
    assert line.startswith("rank 1: a reader thread failed reading ") and "clr chunk" in line
    assert line.endswith("RuntimeError: disk says no") and "\n" not in line
    assert not reader_threads(earlier_threads)


def test_a_reader_out_of_memory_is_one_line_that_says_what_to_try(earlier_threads, train_store):
    store, _ = train_store
    with KmerStream(store, batch_size=48, workers=2) as s:
        failing_read(s, MemoryError())
        line = first_error(s)
    assert "ran out of memory decoding" in line and "clr chunk" in line
    for hint in ("--workers", "--cache none", "--cache-fraction"):
        assert hint in line
    assert not reader_threads(earlier_threads)


def test_a_hung_read_stops_the_batches_within_one_timeout_with_one_line(earlier_threads, train_store):
    """Within one read timeout, not two (the hung read is not waited for again as the pass ends)."""
    store, _ = train_store
    release = threading.Event()
    timeout = 4.0  # the old double wait took two: 8 s; a loaded machine adds far less than 4 s to one
    s = KmerStream(store, batch_size=48, workers=2, read_timeout=timeout)
    failing_read(s, release)
    try:
        start = time.monotonic()
        line = first_error(s)
        assert timeout <= time.monotonic() - start < 2 * timeout
        assert line.startswith("rank 0: reading ") and "did not finish in 4 s" in line
    finally:
        release.set()  # the stalled read returns (as a stalled disk may): the thread can end
        assert s.close() == []
    assert not reader_threads(earlier_threads)


def test_a_stream_whose_reads_fail_can_be_iterated_again(train_store):
    """The failure belongs to the read, not the stream: the next epoch reads afresh."""
    store, _ = train_store
    with KmerStream(store, batch_size=48, workers=2) as s:
        failing_read(s, RuntimeError("once"))
        first_error(s)
        assert len(list(s)) == len(s)


@pytest.mark.slow
def test_everything_a_run_writes_follows_the_umask(train_store, tmp_path):
    store, _ = train_store
    run_dir, latents = tmp_path / "run", tmp_path / "latents.zarr"
    for args in (["-m", "train", "--data", store, "--out", run_dir, "--epochs", 2, "--workers", 0, *TINY],
                 ["-m", "train.encode", "--checkpoint", run_dir / "vae_multi_encoder_best.pt", "--data", store,
                  "--out", latents],
                 ["-m", "train.report", run_dir]):
        proc = start(*args, umask=0o027)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    written = [p for root in (run_dir, latents) for p in [root, *root.rglob("*")]]
    names = {p.name for p in written}
    assert {"history.json", "config.json", "heldout_latents.npz", "vae_multi_encoder_best.pt"} <= names
    assert any(p.parent.name == "checkpoints" for p in written) and any(p.suffix == ".png" for p in written)
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o750 if p.is_dir() else 0o640)}
    assert not wrong
