"""Reader threads: whole-chunk reads run in the rank's own process, `threads` at a time.

A job is a function: the read of one chunk into its slot (on a GPU slab, with its copy there),
or the gather of a batch ahead of need (host slabs). The stream submits reads in the order
their chunks are first needed, each batch's gather after its reads, and waits for each when its
batch comes. zarr's codecs
(numcodecs' zstd, Blosc, zlib) decode in C without holding the GIL, so reads on several threads
decode in parallel while the training loop runs (docs/benchmarks.md, "The in-rank feed").

The failure modes are a thread's, not a process's: a read raises (a damaged chunk: its
DamagedChunk line; anything else, MemoryError included, re-raised in the waiting thread and
named there), or a read hangs (a stalled disk or object store: the waiting thread gives up after
`timeout` seconds). Threads are daemons, so a hung read cannot keep the process from exiting;
`close` ends the others and says which did not end.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

READER_THREAD_PREFIX = "kmervae-reader"


class ReadTimeout(Exception):
    """A read did not finish within the reader's timeout."""


class Job:
    """One job: done once `wait` returns its result; its error, where it raised, re-raised there."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read, self.error, self.result = read, None, None
        self.started, self.cancelled = False, False
        self._done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        with self._lock:
            if self.cancelled or self.started:
                return
            self.started = True
        try:
            self.result = self.read()
        except BaseException as e:  # noqa: BLE001 - carried to the thread that waits for it
            self.error = e
        finally:
            self._done.set()

    def cancel(self) -> bool:
        """Keep a job not yet started from starting; False where it has started (wait for it)."""
        with self._lock:
            if not self.started:
                self.cancelled = True
                self._done.set()
            return self.cancelled

    def wait(self, timeout: float | None) -> Any:
        """Its result, once done (run here if no thread has taken it: the 0-thread reader),
        handed over: one waiter gets it, a later wait None; re-raises its error; ReadTimeout
        after `timeout` seconds."""
        self.run()
        if not self._done.wait(timeout):
            raise ReadTimeout(f"not finished after {timeout:g} s")
        if self.error is not None:
            raise self.error
        # handed over: a job run by its waiter stays queued until a thread skips it, and must not keep
        # its result (a gathered batch, whose buffer is reused once the consumer drops it) alive till then
        result, self.result = self.result, None
        return result


class ChunkReader:
    """`threads` daemon threads running submitted jobs in order; 0 threads: each job runs in
    the thread that waits for it (no read-ahead)."""

    def __init__(self, threads: int, timeout: float) -> None:
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{READER_THREAD_PREFIX}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    def submit(self, read: Callable[[], Any]) -> Job:
        job = Job(read)
        if self._threads:
            self._jobs.put(job)
        return job

    def close(self, timeout: float = 10.0) -> list[str]:
        """End the threads (each after its current read; reads not yet started are dropped);
        returns the names of any still in a read after `timeout` seconds (hung: they end with
        the process)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout)
        left = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        return left
