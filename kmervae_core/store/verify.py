"""Verify a copied store before trusting it: every chunk of every array read and decoded (so
each CRC-32C is checked where the store has them), the row count checked against what ingest
recorded. A store that passes reads the same as the one ingest wrote."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import zarr

from ..errors import StoreError
from .contract import CLR, COLUMN0, LABELS, StoreInfo, check_present, chunk_span, read_rows
from ..words import counted


@dataclass(frozen=True)
class Verified:
    """What a sound store holds, for the summary."""

    info: StoreInfo
    arrays: tuple[str, ...]
    chunks_read: int
    bytes_stored: int

    def summary(self) -> str:
        info, attrs = self.info, self.info.attrs
        dropped = len(attrs.get("dropped_rows", []))
        per_k = info.clr.pseudocounts()
        pseudo = (f"pseudocount {next(iter(per_k.values())):g}" if len(set(per_k.values())) == 1 else
                  "pseudocounts " + ", ".join(f"{k}-mers {p:g}" for k, p in per_k.items()))
        checksums = (f"{info.checksum} on every chunk, {counted(self.chunks_read, 'chunk')} checked" if info.checksum else
                     "none (a store made before checksums: every chunk decoded, but damage that still "
                     "decodes cannot be seen; re-ingest to get them)")
        return (f"{info.url}: sound\n"
                f"  rows      {info.rows:,} ({counted(dropped, 'source row')} dropped), "
                f"{counted(info.n_chunks, 'chunk')} of {counted(info.chunk_rows, 'row')}\n"
                f"  arrays    {', '.join(self.arrays)}; clr {info.dtype} x 2,772\n"
                f"  stored    {self.bytes_stored / 1e6:,.1f} MB, codec {attrs.get('codec')}\n"
                f"  CLR       {info.clr.flag}, {pseudo}\n"
                f"  checksums {checksums}")


def has_checksum(array: zarr.Array) -> bool:
    return any(isinstance(c, zarr.codecs.Crc32cCodec) for c in array.compressors)


def verify_store(info: StoreInfo, progress: Callable[[int, int], None] = lambda rows, nbytes: None) -> Verified:
    """Read every chunk of a store opened by open_store (which checked the contract and that
    every clr chunk is there); raise StoreError (DamagedChunk for a chunk) naming the first
    problem in one line."""
    url = info.url
    group = zarr.open_group(store=url, mode="r")
    names = tuple(n for n in (CLR, COLUMN0, LABELS) if n in group)
    arrays = [group[n] for n in names]
    source_rows = info.attrs["source"]["shape"][0]
    if info.rows != source_rows - len(info.attrs.get("dropped_rows", [])):
        raise StoreError(f"{url}: records {info.rows:,} rows, but its source had {source_rows:,} and "
                         f"{len(info.attrs.get('dropped_rows', [])):,} were dropped")
    for array in arrays:
        if array.shape[0] != info.rows or array.chunks[0] != info.chunk_rows:
            raise StoreError(f"{url}: {array.path} holds {array.shape[0]:,} rows in chunks of {array.chunks[0]:,}, "
                             f"the store records {info.rows:,} in chunks of {info.chunk_rows:,}")
        if info.checksum and not has_checksum(array):
            raise StoreError(f"{url}: records {info.checksum} checksums, but {array.path} has none")
        if info.checksum and array.path != CLR:  # stores with checksums write every chunk of every array
            check_present(url, array)
    chunks = 0
    for chunk in range(info.n_chunks):
        a, b = chunk_span(chunk, info.chunk_rows, info.rows)
        nbytes = 0
        for array in arrays:
            data = read_rows(url, array, slice(a, b))
            if len(data) != b - a:
                raise StoreError(f"{url}: {array.path} chunk {chunk} gave {len(data):,} rows, not {b - a:,}")
            nbytes += data.nbytes
            chunks += 1
        progress(b - a, nbytes)
    return Verified(info, names, chunks, sum(array.nbytes_stored() for array in arrays))
