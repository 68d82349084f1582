"""UIDVALIDITY values that are never given twice in an account (RFC 3501 2.3.1.1).

A mailbox gets its UIDVALIDITY when its index is made. The clock alone is not enough: two
mailboxes made in the same second (DELETE + CREATE of one name, two CREATEs) would get the same
value, and so would one made after the clock was set back. As Dovecot keeps the last value it
gave per account (``dovecot-uidvalidity``), the account keeps its last one in
``~/mail/.imap/.uidvalidity`` (no folder name starts with '.'): a new value is
``max(now, last + 1)``, written durably (temp file, fsync, rename, fsync of the directory)
before it is used. Values taken over from a Dovecot ``X-IMAPbase:`` header raise the last
value too, and are listed (``adopted N`` lines after the first), so one is never taken over
twice: if that index is lost, the headers no longer tell the UIDs given since.

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


def _read(path: str) -> tuple[int, list[int]]:
    """(the last value given, the values adopted) recorded in ``path``; (0, []) if none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0, []
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        lines = f.read(1 << 20).split(b"\n")
    numbers = []
    for line in lines:
        word = line.split()[-1] if line.split() else b""
        numbers.append(int(word) if word.isdigit() and 0 < int(word) <= MAX else 0)
    return numbers[0], [n for n in numbers[1:] if n]


def last_given(path: str) -> int:
    """The last value recorded in ``path`` (0: none, or unreadable as a number)."""
    return _read(path)[0]


def _record(path: str, last: int, adopted: list[int], owner: tuple[int, int] | None) -> None:
    text = b"%d\n" % last + b"".join(b"adopted %d\n" % n for n in adopted)
    write_synced(path + ".tmp", text, owner)
    os.rename(path + ".tmp", path)
    fsync_dir(os.path.dirname(path))


def allocate(directory: str, now: float, owner: tuple[int, int] | None = None) -> int:
    """A new UIDVALIDITY for a mailbox of the account whose control directory is
    ``directory`` (it must exist): above every value given before, durably recorded."""
    path = os.path.join(directory, FILENAME)
    with _exclusive(directory):
        last, adopted = _read(path)
        value = max(int(now), last + 1, 1)
        if value > MAX:
            raise StoreError(f"{path}: no UIDVALIDITY left above {value - 1}")
        _record(path, value, adopted, owner)
    return value


def adopt(directory: str, value: int, owner: tuple[int, int] | None = None) -> bool:
    """Take ``value`` (from another program's state, Dovecot's ``X-IMAPbase``) into use: later
    allocations stay above it. False if it was taken over before: the index made then is
    gone, and the UIDs given since are not in the file, so the mailbox needs a new value."""
    path = os.path.join(directory, FILENAME)
    with _exclusive(directory):
        last, adopted = _read(path)
        if value in adopted:
            return False
        _record(path, max(last, value), adopted + [value], owner)
    return True
