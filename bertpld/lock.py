"""One writer per directory: an exclusive OS advisory lock on DIR/.lock.

`pretrain` holds its run directory, `prepare` its output directory, `finetune` the run's
finetune/ directory, for as long as they write. The lock is `flock` on an open file: the kernel
drops it when the process ends, however it ends (kill -9 included), so there is never a stale lock
to clean up. The holder writes its host, PID and command into the file, so that a second writer
is told who holds it. A second writer gets a one-line BertpldError and has changed nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from bertpld.errors import BertpldError

LOCK = ".lock"


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `directory`'s lock for the block (creating the directory); `what` names the writer
    ('pretrain', ...) in the message another writer gets."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BertpldError(f"{d}: cannot create its lock file ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise BertpldError(
                f"{d}: in use by {holder}; one writer per directory (wait for it to end, or stop it)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, naming the last holder


def held_by_other(directory: str | os.PathLike) -> bool:
    """Whether another process holds `directory`'s lock now (for tests and tools)."""
    path = Path(directory) / LOCK
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
