"""The Zarr v3 store contract between ingest and train (docs/design.md, "The store").

A group with `clr` (N x 2772, whole-row chunks), `column0` (N,) and, optionally, `labels`
(N,) int64, and the attributes under `kmervae`; `complete: true` is written last, and a
store without it is never read for training.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .clr import ClrSpec
from .errors import StoreError
from .kmers import KMER_GROUPS, N_FEATURES, USED_SOURCE

FORMAT_VERSION = 1
ATTRS_KEY = "kmervae"
CLR = "clr"
COLUMN0 = "column0"
LABELS = "labels"
STORE_DTYPES = ("float32", "float16")


def layout_attrs() -> dict:
    """The column layout every store records, from the one k-mer column map."""
    return {"source_columns": [USED_SOURCE.start, USED_SOURCE.stop],
            "kmer_groups": {str(g.k): [g.local.start, g.local.stop] for g in KMER_GROUPS}}


@dataclass(frozen=True)
class StoreInfo:
    """A complete store, validated: what readers need to know."""

    url: str
    rows: int
    chunk_rows: int
    dtype: np.dtype
    clr: ClrSpec
    has_labels: bool
    attrs: dict

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def exists(url: str) -> bool:
    """Whether anything is at url (a store, a partial store or a stray file)."""
    if is_local(url):
        return os.path.exists(url.removeprefix("file://"))
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def remove(url: str) -> None:
    """Delete a store whole (used for --overwrite and for stores a failed run created)."""
    if is_local(url):
        shutil.rmtree(url.removeprefix("file://"), ignore_errors=True)
        return
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove_partial_writes(url: str) -> int:
    """Delete the temporary `*.partial` files a killed writer left in a local store (zarr's
    LocalStore writes each chunk to one, then renames it); returns how many. Nothing else
    writes them, so with no writer running they are all debris."""
    if not is_local(url):
        return 0
    debris = list(Path(url.removeprefix("file://")).rglob("*.partial"))
    for path in debris:
        path.unlink(missing_ok=True)
    return len(debris)


def read_attrs(url: str) -> dict | None:
    """The `kmervae` attributes of the group at url, or None where there is no such group."""
    try:
        group = zarr.open_group(store=url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError,
            ValueError, NotADirectoryError):
        return None
    return dict(group.attrs.get(ATTRS_KEY, {})) or None


def open_store(url: str) -> StoreInfo:
    """Validate a store for reading; raise StoreError with one line naming the problem."""
    if not exists(url):
        raise StoreError(f"{url}: no such store (make one with `python -m ingest all_kmers.npy {url}`)")
    attrs = read_attrs(url)
    if attrs is None:
        raise StoreError(f"{url}: not a kmervae store (no Zarr group with '{ATTRS_KEY}' attributes)")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{url}: store format {attrs.get('format_version')!r}, this kmervae reads {FORMAT_VERSION}")
    if attrs.get("complete") is not True:
        raise StoreError(f"{url}: store is incomplete (ingest was interrupted; finish it with `python -m ingest ... --resume`)")
    if attrs.get("kmer_groups") != layout_attrs()["kmer_groups"]:
        raise StoreError(f"{url}: store k-mer layout differs from this kmervae's column map")
    group = zarr.open_group(store=url, mode="r")
    try:
        clr = group[CLR]
        column0 = group[COLUMN0]
    except KeyError as e:
        raise StoreError(f"{url}: store lacks the array {e}") from None
    rows = int(attrs["rows"])
    if clr.shape != (rows, N_FEATURES) or column0.shape != (rows,):
        raise StoreError(f"{url}: array shapes {clr.shape}, {column0.shape} do not match {rows} rows")
    if clr.chunks != (attrs["chunk_rows"], N_FEATURES):
        raise StoreError(f"{url}: clr chunks {clr.chunks} are not whole rows of {attrs['chunk_rows']}")
    return StoreInfo(url=url, rows=rows, chunk_rows=int(attrs["chunk_rows"]), dtype=np.dtype(clr.dtype),
                     clr=ClrSpec.from_attrs(attrs["transform"]), has_labels=LABELS in group, attrs=attrs)
