"""Where commands write: one-line refusals for an output path that cannot be written, checked
before anything is written (a file where a folder or store goes, a parent that is a file, a
read-only folder), and one line for a write that fails part way (a full disk)."""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import KmervaeError

FOLDER, STORE, FILE = "folder", "store", "file"  # what an output path names
FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteFailed(KmervaeError):
    """A write failed part way (no space left, a read-only file system): the target was not replaced."""


def one_line(text: object, limit: int = 160) -> str:
    """`text`'s first line, at most about `limit` characters: cut after its last whole sentence
    within them, else between words (with "..."), never inside a word."""
    line = (str(text).strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    head = line[:limit + 1]
    if (end := head.rfind(". ")) > 0:
        return head[:end + 1]
    return head.rsplit(" ", 1)[0].rstrip(" ,;:(") + " ..."


def check_output(path: str | os.PathLike, kind: str) -> None:
    """Refuse, in one line and before anything is written, a local output path that cannot be
    what `kind` says (FOLDER: a run or report folder; STORE: a Zarr store, a folder; FILE: a
    figure): an existing entry of the other kind, an ancestor that is a file, or a nearest
    existing folder that cannot be written. Missing parent folders are fine: they are made.
    URLs (s3://...) are left to their file system."""
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        return
    p = Path(text.removeprefix("file://"))
    if p.exists() and (kind == FILE) == p.is_dir():
        raise KmervaeError(f"{p}: is a folder, not a file" if kind == FILE else f"{p}: is a file, not a {kind}; "
                           f"remove it or choose another path")
    near = p if p.is_dir() else p.parent
    while not near.exists() and near != near.parent:
        near = near.parent
    if not near.is_dir():
        raise KmervaeError(f"{p}: cannot be made: {near} is a file, not a folder")
    if not os.access(near, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only(near) else "permission denied"
        raise KmervaeError(f"{p}: cannot write in {near} ({why})")


def _read_only(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system holding `path` (or its nearest existing ancestor)."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def write_failure(error: BaseException, path: str | os.PathLike) -> WriteFailed | None:
    """A one-line WriteFailed for an error raised while writing `path` whose cause (anywhere in its
    chain: torch.save reports a full disk as its own RuntimeError) is an OSError; None otherwise."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    if seen.errno in FULL:
        return WriteFailed(f"no space left on {mount_point(path)} writing {path}")
    return WriteFailed(f"cannot write {path}: {one_line(seen.strerror or seen)}")


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """A block that writes `path`: an error it raises from a failed write (write_failure) leaves as
    one-line WriteFailed; others pass unchanged."""
    try:
        yield
    except KmervaeError:
        raise
    except Exception as e:  # noqa: BLE001 - libraries (zarr, torch, matplotlib) wrap OSErrors their own ways
        if (failed := write_failure(e, path)) is None:
            raise
        raise failed from None
