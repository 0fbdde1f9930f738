"""The Zarr v3 store contract between ingest and train (docs/design.md, "The store").

A group with `clr` (N x 2772, whole-row chunks), `column0` (N,) and, optionally, `labels`
(N,) int64, and the attributes under `kmervae`; `complete: true` is written last, and a
store without it is never read for training. Stores record `checksum: crc32c` where every chunk
ends in a CRC-32C (Zarr's `crc32c` codec), so damage is caught where a chunk is decoded; older
stores have none and still open. Opening checks that every `clr` chunk exists (one listing):
Zarr would read a missing chunk as zeros.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .clr import SCOPE_FLAGS, SCOPES, ClrSpec
from ..errors import DamagedChunk, StoreError
from .kmers import KMER_GROUPS, N_FEATURES, USED_SOURCE

FORMAT_VERSION = 1
ATTRS_KEY = "kmervae"
CLR = "clr"
COLUMN0 = "column0"
LABELS = "labels"
STORE_DTYPES = ("float32", "float16")
CHECKSUM = "crc32c"  # the `checksum` attribute of stores whose chunks carry one


def layout_attrs() -> dict:
    """The column layout every store records, from the one k-mer column map."""
    return {"source_columns": [USED_SOURCE.start, USED_SOURCE.stop],
            "kmer_groups": {str(g.k): [g.local.start, g.local.stop] for g in KMER_GROUPS}}


@dataclass(frozen=True)
class StoreInfo:
    """A complete store, validated: what readers need to know, and its arrays as opened and
    checked here (one open and one listing per store: readers use these handles)."""

    url: str
    rows: int
    chunk_rows: int
    dtype: np.dtype
    clr: ClrSpec
    has_labels: bool
    attrs: dict
    clr_array: zarr.Array = field(repr=False, compare=False)
    column0_array: zarr.Array = field(repr=False, compare=False)

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    @property
    def checksum(self) -> str | None:
        return self.attrs.get("checksum")

    def require_clr(self, wanted: str, by: str) -> None:
        """Refuse this store unless it holds the `wanted` CLR (as `ingest --clr` spells it; "any"
        takes either): a model fed the other CLR trains and encodes without error, on the wrong
        input. `by` says who wants it ("this configuration is tuned on")."""
        if wanted not in ("any", self.clr.flag):
            raise StoreError(f"{self.url} holds the {self.clr.flag} CLR, {by} the {wanted} CLR: use a store made "
                             f"with `python -m ingest ... --clr {wanted}`")


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def exists(url: str) -> bool:
    """Whether anything is at url (a store, a partial store or a stray file)."""
    if is_local(url):
        return os.path.exists(url.removeprefix("file://"))
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def refuse_replacing_non_store(url: str) -> None:
    """--overwrite replaces a Zarr store (complete or not) or an empty folder, never a folder of
    the user's other files: a mistyped OUT must not delete a project folder."""
    if is_local(url):
        path = Path(url.removeprefix("file://"))
        if not path.is_dir() or (path / "zarr.json").exists() or not any(path.iterdir()):
            return
    else:
        import fsspec
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.isdir(path) or fs.exists(f"{path.rstrip('/')}/zarr.json") or not fs.ls(path):
            return
    raise StoreError(f"{url}: is a folder that is not a Zarr store; --overwrite replaces only a store: "
                     "choose another path, or remove it yourself")


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


def chunk_span(chunk: int, chunk_rows: int, rows: int) -> tuple[int, int]:
    """Store rows [start, stop) of a chunk."""
    return chunk * chunk_rows, min(rows, (chunk + 1) * chunk_rows)


def chunk_name(url: str, array: zarr.Array, chunk: int) -> str:
    """`URL: clr chunk 3 (rows 120-159)`, how every message names a chunk."""
    a, b = chunk_span(chunk, array.chunks[0], array.shape[0])
    return f"{url}: {array.path} chunk {chunk} (rows {a:,}-{b - 1:,})"


def missing_chunks(url: str, array: zarr.Array) -> list[int]:
    """Chunks of a row-chunked array with no object in the store, from one listing of the
    array's prefix (a directory walk on local disk, one LIST on object storage)."""
    import fsspec
    fs, root = fsspec.core.url_to_fs(url)
    prefix = f"{root.rstrip('/')}/{array.path}/"
    found = {p.removeprefix(prefix) for p in fs.find(prefix)}
    n = -(-array.shape[0] // array.chunks[0])
    rest = (0,) * (array.ndim - 1)
    return [c for c in range(n) if array.metadata.encode_chunk_key((c, *rest)) not in found]


def check_present(url: str, array: zarr.Array) -> None:
    """Raise DamagedChunk naming the first missing chunk (and how many are missing)."""
    missing = missing_chunks(url, array)
    if missing:
        more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
        raise DamagedChunk(f"{chunk_name(url, array, missing[0])} is missing{more}: the store is incomplete "
                           "(an interrupted copy?); copy it again or re-run ingest")


def damaged_chunk(url: str, array: zarr.Array, start: int, stop: int, error: Exception) -> Exception:
    """After `error` reading rows [start, stop): DamagedChunk naming the first chunk there that
    fails to read on its own, or `error` itself where none does."""
    step = array.chunks[0]
    for chunk in range(start // step, -(-stop // step)):
        a, b = chunk_span(chunk, step, array.shape[0])
        try:
            array[a:b]
        except Exception as e:  # noqa: BLE001 - codecs raise ValueError, RuntimeError, zlib.error...
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            reason = "CRC-32C checksum mismatch" if "checksum" in text else text
            return DamagedChunk(f"{chunk_name(url, array, chunk)} is damaged ({reason}); copy the store "
                                "again or re-run ingest")
    return error


def read_rows(url: str, array: zarr.Array, rows: slice | np.ndarray, at_once: int | None = None) -> np.ndarray:
    """array[rows] for a slice of rows or sorted row indices; a chunk that cannot be read
    raises DamagedChunk naming it. `at_once`: the most chunks decoded at once (zarr's
    `async.concurrency`, 10 unless set): each is held whole while its rows are copied out."""
    try:
        with zarr.config.set({"async.concurrency": at_once}) if at_once else contextlib.nullcontext():
            return array[rows] if isinstance(rows, slice) else array.oindex[rows]
    except Exception as e:  # noqa: BLE001 - see damaged_chunk
        lo, hi = (rows.start, rows.stop) if isinstance(rows, slice) else (int(rows[0]), int(rows[-1]) + 1)
        raise damaged_chunk(url, array, lo, hi, e) from None


def open_array(url: str, name: str = CLR) -> zarr.Array:
    """An array of the store at url, read-only: every reader opens it here and reads it with
    read_rows, which names the chunk where a read fails."""
    return zarr.open_array(store=url, path=name, mode="r")


def read_attrs(url: str) -> dict | None:
    """The `kmervae` attributes of the group at url, or None where there is no such group."""
    try:
        group = zarr.open_group(store=url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError,
            ValueError, NotADirectoryError):
        return None
    return dict(group.attrs.get(ATTRS_KEY, {})) or None


# attributes that say where a store's files are or how its chunks are encoded, not what it holds: a
# store moved, copied or recompressed keeps its identity (a change of dtype, float32 to float16, does not)
NOT_CONTENT = ("complete", "codec", "checksum", "labels")


def store_identity(url: str) -> dict | None:
    """What a checkpoint records of the store it trained on: its rows, chunk rows, CLR, source and
    a fingerprint of its `kmervae` attributes less the paths and encoding (cheap: one small read);
    None where there is no store at url (open_store then says so)."""
    attrs = read_attrs(url)
    if attrs is None:
        return None
    content = {k: v for k, v in attrs.items() if k not in NOT_CONTENT}
    source = dict(content.get("source", {}))
    content["source"] = {k: v for k, v in source.items() if k != "path"}
    fingerprint = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
    transform = attrs.get("transform", {})
    return {"url": url, "rows": attrs.get("rows"), "chunk_rows": attrs.get("chunk_rows"),
            "clr": dict(zip(SCOPES, SCOPE_FLAGS)).get(transform.get("scope"), transform.get("scope")), "source": Path(str(source.get("path", "?"))).name,
            "fingerprint": fingerprint}


def describe_identity(identity: dict) -> str:
    """`URL (15,000 rows in 40-row chunks, global CLR, from all_kmers.npy)`."""
    return (f"{identity['url']} ({identity['rows']:,} rows in {identity['chunk_rows']:,}-row chunks, "
            f"{identity['clr']} CLR, from {identity['source']})")


def open_store(url: str) -> StoreInfo:
    """Validate a store for reading, every `clr` chunk present included; raise StoreError with
    one line naming the problem."""
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
    check_present(url, clr)
    return StoreInfo(url=url, rows=rows, chunk_rows=int(attrs["chunk_rows"]), dtype=np.dtype(clr.dtype),
                     clr=ClrSpec.from_attrs(attrs["transform"]), has_labels=LABELS in group, attrs=attrs,
                     clr_array=clr, column0_array=column0)
