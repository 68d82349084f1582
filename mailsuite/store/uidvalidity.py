"""UIDVALIDITY values that are never given twice in an account (RFC 3501 2.3.1.1).

A mailbox gets its UIDVALIDITY when its index is made. The clock alone is not enough: two
mailboxes made in the same second (DELETE + CREATE of one name, two CREATEs) would get the same
value, and so would one made after the clock was set back. As Dovecot keeps the last value it
gave per account (``dovecot-uidvalidity``), the account keeps its last one in
``~/mail/.imap/.uidvalidity`` (one decimal number and a newline; no folder name starts with
'.'): a new value is ``max(now, last + 1)``, written durably (temp file, fsync, rename, fsync
of the directory) before it is used. Values adopted from elsewhere (a Dovecot ``X-IMAPbase:``
header) are recorded the same way, so later ones stay above them.

Blocking (file I/O): call from a thread. One process-wide lock per file plus an ``flock`` on
the directory keep concurrent allocations apart.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mailsuite.fsutil import fsync_dir, write_synced
from mailsuite.store.interfaces import StoreError

FILENAME = ".uidvalidity"
MAX = 0xFFFFFFFF  # UIDVALIDITY is a 32-bit unsigned number (nz-number)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    with _locks_guard:
        lock = _locks.setdefault(directory, threading.Lock())
    with lock:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def last_given(path: str) -> int:
    """The last value recorded in ``path`` (0: none, or unreadable as a number)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        text = f.read(64)
    try:
        value = int(text.strip() or b"0")
    except ValueError:
        return 0
    return value if 0 < value <= MAX else 0


def _record(path: str, value: int, owner: tuple[int, int] | None) -> None:
    write_synced(path + ".tmp", b"%d\n" % value, owner)
    os.rename(path + ".tmp", path)
    fsync_dir(os.path.dirname(path))


def allocate(directory: str, now: float, owner: tuple[int, int] | None = None) -> int:
    """A new UIDVALIDITY for a mailbox of the account whose control directory is
    ``directory`` (it must exist): above every value given before, durably recorded."""
    path = os.path.join(directory, FILENAME)
    with _exclusive(directory):
        value = max(int(now), last_given(path) + 1, 1)
        if value > MAX:
            raise StoreError(f"{path}: no UIDVALIDITY left above {value - 1}")
        _record(path, value, owner)
    return value


def adopt(directory: str, value: int, owner: tuple[int, int] | None = None) -> None:
    """``value`` (taken from another program's state) is in use: later allocations stay above."""
    path = os.path.join(directory, FILENAME)
    with _exclusive(directory):
        if last_given(path) < value:
            _record(path, value, owner)
