"""Reading row ranges of a huge all_kmers.npy without loading or memory-mapping it.

A memmap slice pulls whole pages into resident memory, and dask.array.from_array on a
memmap copies it whole (dask #11524): instead `NpySource` is a small picklable description
of the file that reads row spans with positioned reads into bounded buffers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numpy.lib import format as npformat

from ..errors import InputError
from .kmers import SOURCE_COLUMNS, USED_SOURCE

BLOCK_BYTES = 16 << 20  # bound on one positioned read of whole C-order rows


@dataclass(frozen=True)
class NpySource:
    path: str
    rows: int
    dtype: np.dtype
    fortran_order: bool
    data_offset: int
    size: int
    mtime: float

    @property
    def row_bytes(self) -> int:
        return SOURCE_COLUMNS * self.dtype.itemsize

    def describe(self) -> dict:
        """Identity of the source, recorded in the store so that --resume can check it."""
        return {"path": os.path.abspath(self.path), "shape": [self.rows, SOURCE_COLUMNS],
                "dtype": self.dtype.str, "fortran_order": self.fortran_order,
                "size": self.size, "mtime": self.mtime}

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first row, column 0, the 2,772 used columns) for rows [start, stop) in
        blocks of bounded size; arrays are in the file's dtype and byte order."""
        with open(self.path, "rb", buffering=0) as f:
            if self.fortran_order:
                yield start, *self._read_fortran(f, start, stop)
                return
            per_block = max(1, BLOCK_BYTES // self.row_bytes)
            for r0 in range(start, stop, per_block):
                r1 = min(stop, r0 + per_block)
                buf = np.empty((r1 - r0, SOURCE_COLUMNS), dtype=self.dtype)
                _read_exact(f, self.data_offset + r0 * self.row_bytes, buf)
                yield r0, buf[:, 0], buf[:, USED_SOURCE]

    def _read_fortran(self, f, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Column-major files hold each column contiguously: read one span per column."""
        columns = [0, *range(USED_SOURCE.start, USED_SOURCE.stop)]
        buf = np.empty((len(columns), stop - start), dtype=self.dtype)
        item = self.dtype.itemsize
        for i, c in enumerate(columns):
            _read_exact(f, self.data_offset + (c * self.rows + start) * item, buf[i])
        return buf[0], buf[1:].T


def _read_exact(f, offset: int, out: np.ndarray) -> None:
    f.seek(offset)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise InputError(f"{f.name}: file ended early at byte {offset + got} (truncated while reading?)")
        got += n


def open_npy(path: str) -> NpySource:
    """Validate the header and size of an all_kmers.npy; raise InputError with one line
    naming the problem. Never unpickles: object dtypes are refused from the header alone."""
    try:
        st = os.stat(path)
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a .npy file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        try:
            version = npformat.read_magic(f)
            header = (npformat.read_array_header_1_0 if version == (1, 0)
                      else npformat.read_array_header_2_0)(f, max_header_size=1 << 20)
        except (ValueError, OSError, SyntaxError) as e:
            raise InputError(f"{path}: not a .npy file ({str(e).splitlines()[0]})") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not a .npy file") from None
        shape, fortran_order, dtype = header
        offset = f.tell()
    if dtype.kind != "f" or dtype.fields is not None or dtype.itemsize not in (4, 8):
        raise InputError(f"{path}: dtype {dtype} is not supported; expected float32 or float64")
    if len(shape) != 2:
        raise InputError(f"{path}: expected a 2-D array (rows x {SOURCE_COLUMNS}), got shape {shape}")
    rows, cols = shape
    if cols != SOURCE_COLUMNS:
        raise InputError(f"{path}: expected {SOURCE_COLUMNS} columns (column 0 then 7..1-mers), got {cols}")
    if rows == 0:
        raise InputError(f"{path}: the array has zero rows")
    expected = offset + rows * cols * dtype.itemsize
    if st.st_size != expected:
        what = "truncated" if st.st_size < expected else "padded"
        raise InputError(f"{path}: file is {what}: {st.st_size} bytes, header says {expected}")
    return NpySource(path=path, rows=rows, dtype=dtype, fortran_order=bool(fortran_order),
                     data_offset=offset, size=st.st_size, mtime=st.st_mtime)


def bad_rows(used: np.ndarray) -> np.ndarray:
    """Indices of rows holding a NaN, an infinity or a negative frequency."""
    good = (used >= 0) & (used < np.inf)
    return np.flatnonzero(~good.all(axis=1))
