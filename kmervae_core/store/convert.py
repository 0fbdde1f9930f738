"""Convert all_kmers.npy into a kmervae store, out of core, as Dask tasks over row chunks.

Each task reads one output chunk's rows with positioned reads, computes the CLR in bounded
sub-blocks, and writes exactly one Zarr chunk of `clr` and of `column0` (task height equals
chunk height, so no two tasks ever touch one chunk: dask #12583, zarr-python #3682), then
sets that chunk's marker in `_ingest_done`. Every chunk ends in a CRC-32C (the last codec) and
is written even where it holds only zeros, so a reader can tell lost and damaged chunks. Memory is chunk size x concurrency, never N.
`complete: true` is written last, after the markers are removed; --resume redoes only the
chunks whose marker is unset, so a resumed store is identical to an uninterrupted one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zarr

from .clr import ClrSpec, clr
from ..errors import InputError, StoreError
from .kmers import N_FEATURES
from .npy_source import NpySource, bad_rows
from ..outputs import STORE, check_output
from ..words import counted
from .contract import (ATTRS_KEY, CHECKSUM, CLR, COLUMN0, FORMAT_VERSION, LABELS, STORE_DTYPES, exists, layout_attrs,
                    read_attrs, refuse_replacing_non_store, remove, remove_partial_writes)

DONE = "_ingest_done"
DEFAULT_CHUNK_ROWS = 4096
# each codec's default level and the levels it accepts
CODEC_LEVELS = {"zstd": (1, range(1, 23)), "lz4": (5, range(0, 10)), "blosc-zstd": (1, range(0, 10)),
                "gzip": (1, range(0, 10)), "none": (None, range(0))}


def parse_codec(text: str) -> list:
    """`NAME[:LEVEL]` to Zarr v3 compressors; NAME is one of CODEC_LEVELS, LEVEL in its range."""
    name, _, level = text.partition(":")
    if name not in CODEC_LEVELS:
        raise InputError(f"unknown codec {text!r}; choose from {', '.join(CODEC_LEVELS)} (optionally NAME:LEVEL)")
    default, levels = CODEC_LEVELS[name]
    if name == "none":
        if level:
            raise InputError("codec none takes no level")
        return []
    try:
        lvl = int(level) if level else default
    except ValueError:
        raise InputError(f"codec level must be an integer, got {level!r}") from None
    if lvl not in levels:
        raise InputError(f"codec {name} takes a level from {levels.start} to {levels.stop - 1}, got {lvl}")
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=lvl)]
    if name == "gzip":
        return [zarr.codecs.GzipCodec(level=lvl)]
    cname = "lz4" if name == "lz4" else "zstd"
    return [zarr.codecs.BloscCodec(cname=cname, clevel=lvl, shuffle="shuffle")]


def codec_name(text: str) -> str:
    name, _, level = text.partition(":")
    return name if name == "none" else f"{name}:{level or CODEC_LEVELS[name][0]}"


@dataclass(frozen=True)
class IngestPlan:
    """Everything a chunk task needs; small and picklable for dask.distributed workers."""

    source: NpySource
    url: str
    clr: ClrSpec = ClrSpec()
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    codec: str = "zstd:1"
    dtype: str = "float32"
    on_bad_rows: str = "fail"
    dropped: tuple[int, ...] = field(default=())  # sorted source rows left out
    labels: str | None = None  # an int .npy with one label per source row (genome, bin, ...)

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise InputError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.dtype not in STORE_DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {self.dtype!r}")
        if self.on_bad_rows not in ("fail", "drop"):
            raise InputError(f"--on-bad-rows must be fail or drop, got {self.on_bad_rows!r}")
        parse_codec(self.codec)
        if self.labels is not None:
            check_labels(self.labels, self.source.rows)

    @property
    def rows(self) -> int:
        return self.source.rows - len(self.dropped)

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def attrs(self) -> dict:
        return {"format_version": FORMAT_VERSION, "source": self.source.describe(), **layout_attrs(),
                "transform": self.clr.to_attrs(), "rows": self.rows, "chunk_rows": self.chunk_rows,
                "codec": codec_name(self.codec), "checksum": CHECKSUM, "dtype": self.dtype, "on_bad_rows": self.on_bad_rows,
                "dropped_rows": list(self.dropped),
                "labels": None if self.labels is None else os.path.abspath(self.labels), "complete": False}

    def dropped_between(self, i0: int, i1: int) -> np.ndarray:
        """Dropped source rows in [i0, i1), relative to i0."""
        dropped = np.asarray(self.dropped, dtype=np.int64)
        return dropped[(dropped >= i0) & (dropped < i1)] - i0

    def source_span(self, chunk: int) -> tuple[int, int, int, int]:
        """(first output row, end output row, first source row, end source row) of a chunk."""
        o0 = chunk * self.chunk_rows
        o1 = min(self.rows, o0 + self.chunk_rows)
        return o0, o1, self._source_row(o0), self._source_row(o1 - 1) + 1

    def _source_row(self, out_row: int) -> int:
        """The source row that becomes store row out_row: the least fixed point of
        i = out_row + #dropped <= i, which is never a dropped row."""
        dropped = np.asarray(self.dropped, dtype=np.int64)
        i = out_row
        while True:
            nxt = out_row + int(np.searchsorted(dropped, i, side="right"))
            if nxt == i:
                return i
            i = nxt


def check_labels(path: str, rows: int) -> None:
    """One line naming the problem if `path` is not one integer label per source row."""
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such labels file") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a .npy labels file ({str(e).splitlines()[0]})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) != rows:
        raise InputError(f"{path}: {counted(len(labels), 'label')} for {counted(rows, 'input row')}")


def read_labels(plan: "IngestPlan", i0: int, i1: int) -> np.ndarray:
    """Labels of source rows [i0, i1) that are kept, as int64."""
    labels = np.asarray(np.load(plan.labels, mmap_mode="r")[i0:i1], dtype=np.int64)
    return np.delete(labels, plan.dropped_between(i0, i1))


class BadRowFound(Exception):
    def __init__(self, row: int, chunk: int) -> None:
        super().__init__(f"bad row {row} in chunk {chunk}")
        self.row, self.chunk = row, chunk


def transform_chunk(plan: IngestPlan, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one chunk's source rows and return (clr rows, column 0); raise BadRowFound on a
    NaN, infinite or negative frequency unless those rows are among plan.dropped."""
    o0, o1, i0, i1 = plan.source_span(chunk)
    out = np.empty((o1 - o0, N_FEATURES), dtype=plan.dtype)
    col0 = np.empty(o1 - o0, dtype=plan.source.dtype.newbyteorder("="))
    pos = 0
    for r0, c0, used in plan.source.blocks(i0, i1):
        keep = np.ones(len(used), dtype=bool)
        keep[plan.dropped_between(r0, r0 + len(used))] = False
        if not keep.all():
            used, c0 = used[keep], c0[keep]
        bad = bad_rows(used)
        if bad.size:
            raise BadRowFound(r0 + int(np.flatnonzero(keep)[bad[0]]), chunk)
        clr(used, plan.clr, out=out[pos:pos + len(used)])
        col0[pos:pos + len(used)] = c0
        pos += len(used)
    return out, col0


def ingest_chunk(plan: IngestPlan, chunk: int) -> dict:
    """One Dask task: transform a chunk, write it, then mark it done."""
    data, col0 = transform_chunk(plan, chunk)
    o0, o1, i0, i1 = plan.source_span(chunk)
    arrays = [(CLR, data), (COLUMN0, col0)] + ([(LABELS, read_labels(plan, i0, i1))] if plan.labels else [])
    for name, values in arrays:  # even an all-zero chunk gets its object: a missing one is a lost one
        zarr.open_array(store=plan.url, path=name, mode="r+").with_config({"write_empty_chunks": True})[o0:o1] = values
    zarr.open_group(store=plan.url, mode="r+")[DONE][chunk] = 1
    return {"rows": o1 - o0, "bytes_in": (i1 - i0) * plan.source.row_bytes}


def scan_chunk(source: NpySource, start: int, stop: int) -> list[int]:
    """Source rows in [start, stop) with a NaN, infinite or negative frequency."""
    return [r0 + int(b) for r0, _, used in source.blocks(start, stop) for b in bad_rows(used)]


@dataclass
class Summary:
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    chunks_written: int = 0
    chunks_kept: int = 0
    dropped: int = 0

    @property
    def ratio(self) -> float:
        useful = self.rows * N_FEATURES * 4
        return useful / self.bytes_out if self.bytes_out else float("nan")


def run_tasks(tasks: list, scheduler: str | None, workers: int, on_result: Callable[[dict | list], None]) -> None:
    """Compute Dask delayed tasks on the local threaded scheduler (`workers` threads) or on
    the dask.distributed cluster at `scheduler`, calling on_result as each one finishes.
    The first task error is raised once no task is still running."""
    import dask
    if scheduler:
        from distributed import Client, as_completed
        with Client(scheduler) as client:
            futures = client.compute(tasks)
            try:
                for fut in as_completed(futures):
                    on_result(fut.result())
            except BaseException:
                client.cancel(futures)
                raise
        return
    from concurrent.futures import ThreadPoolExecutor
    from dask.callbacks import Callback
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            Callback(posttask=lambda key, result, dsk, state, wid: on_result(result)):
        dask.compute(*tasks, scheduler="threads", pool=pool)


def prepare(plan: IngestPlan, resume: bool, overwrite: bool) -> list[int]:
    """Create the store (or check the one to resume) and return the chunks still to write."""
    check_output(plan.url, STORE)  # a file is no store to resume or replace, whatever the flags
    found = read_attrs(plan.url) if exists(plan.url) else None
    if resume and found is None and exists(plan.url):
        raise StoreError(f"{plan.url}: cannot resume: it is not a kmervae store")
    if resume and found is not None:
        expected = plan.attrs()
        diff = sorted(k for k in expected if k != "complete" and found.get(k) != expected[k])
        if diff:
            state = "complete" if found.get("complete") else "incomplete"
            raise StoreError(f"{plan.url}: cannot resume: the existing {state} store differs in {', '.join(diff)}"
                             " (same input and options needed; or use --overwrite)")
        if found.get("complete"):
            return []
        remove_partial_writes(plan.url)  # a killed run's half-written chunk files
        done = zarr.open_group(store=plan.url, mode="r")[DONE][:]
        return [int(c) for c in np.flatnonzero(done == 0)]
    if exists(plan.url) and not (overwrite or resume):
        state = "an incomplete kmervae store" if found and not found.get("complete") else "something"
        raise StoreError(f"{plan.url}: already holds {state}; pass --resume to finish it or --overwrite to replace it")
    if exists(plan.url):
        refuse_replacing_non_store(plan.url)
        remove(plan.url)
    try:
        group = zarr.open_group(store=plan.url, mode="w")
        kwargs = dict(compressors=[*parse_codec(plan.codec), zarr.codecs.Crc32cCodec()], fill_value=0)
        group.create_array(CLR, shape=(plan.rows, N_FEATURES), chunks=(plan.chunk_rows, N_FEATURES),
                           dtype=plan.dtype, **kwargs)
        group.create_array(COLUMN0, shape=(plan.rows,), chunks=(plan.chunk_rows,),
                           dtype=plan.source.dtype.newbyteorder("=").str, **kwargs)
        if plan.labels is not None:
            group.create_array(LABELS, shape=(plan.rows,), chunks=(plan.chunk_rows,), dtype="int64", **kwargs)
        group.create_array(DONE, shape=(plan.n_chunks,), chunks=(1,), dtype="uint8", fill_value=0)
        group.attrs[ATTRS_KEY] = plan.attrs()
    except OSError as e:
        raise StoreError(f"{plan.url}: cannot write the store: {e.strerror or e}") from None
    return list(range(plan.n_chunks))


def find_bad_rows(source: NpySource, chunk_rows: int, scheduler: str | None, workers: int,
                  progress: Callable[[int, int], None]) -> tuple[int, ...]:
    """A first pass over the whole source for --on-bad-rows drop."""
    import dask
    spans = [(s, min(source.rows, s + chunk_rows)) for s in range(0, source.rows, chunk_rows)]
    tasks = [dask.delayed(scan_chunk, pure=False)(source, s, e) for s, e in spans]
    found: list[int] = []

    def collect(rows: list[int]) -> None:
        found.extend(rows)
        progress(chunk_rows, chunk_rows * source.row_bytes)

    run_tasks(tasks, scheduler, workers, collect)
    return tuple(sorted(found))


def first_bad_row(plan: IngestPlan, failed: BadRowFound) -> int:
    """The lowest bad row: chunks before the failed one that did not finish are checked in order."""
    done = zarr.open_group(store=plan.url, mode="r")[DONE][: failed.chunk]
    for chunk in np.flatnonzero(done == 0):
        _, _, i0, i1 = plan.source_span(int(chunk))
        rows = scan_chunk(plan.source, i0, i1)
        if rows:
            return rows[0]
    return failed.row


def ingest(plan: IngestPlan, *, resume: bool = False, overwrite: bool = False, scheduler: str | None = None,
           workers: int = 2, progress: Callable[[int, int], None] = lambda rows, nbytes: None) -> Summary:
    """Run the whole conversion; raise InputError/StoreError with one line on bad input."""
    import dask
    start = time.perf_counter()
    todo = prepare(plan, resume, overwrite)
    summary = Summary(rows=plan.rows, chunks_kept=plan.n_chunks - len(todo), dropped=len(plan.dropped))
    tasks = [dask.delayed(ingest_chunk, pure=False)(plan, c) for c in todo]

    def on_result(res: dict) -> None:
        summary.bytes_in += res["bytes_in"]
        summary.chunks_written += 1
        progress(res["rows"], res["bytes_in"])

    try:
        run_tasks(tasks, scheduler, workers, on_result)
    except BadRowFound as bad:
        row = first_bad_row(plan, bad)
        raise InputError(f"{plan.source.path}: row {row} holds a NaN, infinite or negative k-mer frequency"
                         f"; {plan.url} left incomplete (rerun with --on-bad-rows drop --overwrite to leave such "
                         "rows out)") from None
    group = zarr.open_group(store=plan.url, mode="r+")
    if DONE in group:
        del group[DONE]
        group.attrs[ATTRS_KEY] = {**plan.attrs(), "complete": True}
    summary.bytes_out = group[CLR].nbytes_stored() + group[COLUMN0].nbytes_stored()
    summary.seconds = time.perf_counter() - start
    return summary
