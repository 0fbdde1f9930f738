"""Files that appear whole or not at all: written to a temp file beside the target, flushed
to disk, then renamed over it, so a crash leaves the previous file (or none), never half.
The temp file is created with mode 0666 less the process umask, as open() would, so the file a
run leaves (checkpoints, history, exports) is as readable by the group as the user asked;
tempfile.mkstemp's 0600 would make a shared project folder unreadable to the team. A write that
fails for want of space (or any OSError) is one line naming the file and the file system
(outputs.WriteFailed), the previous file left as it was."""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .outputs import write_failure


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` when the block ends without error."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as e:
        raise write_failure(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and (failed := write_failure(e, path)):
            raise failed from None
        raise
