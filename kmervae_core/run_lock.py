"""One writer per output: a run holds an flock on RUN/.kmervae.lock for its whole life (an encode
on .OUT.kmervae.lock beside its --out, which --overwrite replaces whole), the file saying who holds it (host, pid, start time). A second writer is refused in
one line naming the live one. The kernel drops the lock when the holder's process ends however it
ends (kill -9 included), so a requeued job or a torchrun restart takes it over, saying whose it
was; a clean end removes the file, so that only a holder that died leaves it (and its name) behind.

flock is local to a host on some network file systems (NFS before Linux 2.6.12 and some Lustre
mounts without `-o flock`): there two hosts may both take it (docs/design.md)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import KmervaeError
from .outputs import FOLDER, STORE, check_output, one_line, write_failure

LOCK_NAME = ".kmervae.lock"


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(holder.get("since", 0)))
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since}"


class RunLock:
    """The lock on the output `folder` (a run folder, or with `beside` a store whose lock file is
    its sibling), taken on construction; the folder holding the lock file is made if missing.
    `note`: a line to log, saying whose lock (left by a process that is gone) this one
    replaced, or that the file system cannot lock; None otherwise."""

    def __init__(self, folder: str | os.PathLike, what: str = "run", beside: bool = False) -> None:
        self.folder = Path(folder)
        check_output(self.folder, STORE if beside else FOLDER)
        path = self.folder.parent / f".{self.folder.name}{LOCK_NAME}" if beside else self.folder / LOCK_NAME
        self.path, self.note = path, None
        while True:  # until the locked file is the one at `path` (a holder ending removes it)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as e:
                raise write_failure(e, self.folder) from None
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                os.close(self.fd)
                raise KmervaeError(f"{self.folder}: another {what} is writing it ({describe(holder)}); wait for it "
                                   f"to end or stop it, or choose another --out") from None
            except OSError as e:  # a file system without flock (Lustre mounted without -o flock: ENOSYS)
                self.note = (f"{self.folder}: the file system does not lock ({one_line(e.strerror or e)}); this "
                             f"{what} goes on unguarded against a second one")
                return
            if self._still_at_path():
                break
            os.close(self.fd)
        left = self._holder()
        if left:
            self.note = f"{self.folder}: took over the lock of a {what} that is gone ({describe(left)})"
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                           "since": time.time()}).encode(), 0)
            os.fsync(self.fd)
        except OSError as e:
            self.release()
            raise write_failure(e, self.folder) from None

    def _holder(self) -> dict:
        try:
            text = os.pread(self.fd, 4096, 0).decode()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {"host": "?", "pid": "?"}

    def _still_at_path(self) -> bool:
        """Whether the file locked is still the one at the path: a holder that ended between our
        open and our flock removed it, and a lock on the removed file guards nothing."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the file (a clean end leaves no trace) and let go of the lock; idempotent.
        Removed while still held, so a waiter that opened it sees it gone and opens anew."""
        if self.fd < 0:
            return
        try:
            if self._still_at_path():
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = -1
