"""UIDVALIDITY values that are never given twice in an account (RFC 3501 2.3.1.1).

A mailbox gets its UIDVALIDITY when its index is made. The clock alone is not enough: two
mailboxes made in the same second (DELETE + CREATE of one name, two CREATEs) would get the same
value, and so would one made after the clock was set back. As Dovecot keeps the last value it
gave per account (``dovecot-uidvalidity``), the account keeps its last one in
``~/mail/.imap/.uidvalidity`` (no folder name starts with '.'), reached through the
account's control directory walked by ``safepath`` (a ``Dir`` held open): a new value is
``max(now, last + 1)``, written durably (temp file, fsync, rename, fsync of the directory)
before it is used. Values taken over from a Dovecot ``X-IMAPbase:`` header raise the last
value too, and are listed (``adopted N`` lines after the first), so one is never taken over
twice: if that index is lost, the headers no longer tell the UIDs given since.

Blocking (file I/O): call from a thread. One process-wide lock per directory plus an ``flock``
on it keep concurrent allocations apart.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mailsuite.fsutil import atomic_write
from mailsuite.store.interfaces import StoreError
from mailsuite.store.safepath import Dir, check_file

FILENAME = ".uidvalidity"
MAX = 0xFFFFFFFF  # UIDVALIDITY is a 32-bit unsigned number (nz-number)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _exclusive(d: Dir) -> Iterator[None]:
    with _locks_guard:
        lock = _locks.setdefault(d.path, threading.Lock())
    with lock:
        fcntl.flock(d.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(d.fd, fcntl.LOCK_UN)


def _read(d: Dir) -> tuple[int, list[int]]:
    """(the last value given, the values adopted) recorded in ``d``; (0, []) if none."""
    try:
        fd = os.open(FILENAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
    except FileNotFoundError:
        return 0, []
    except OSError as e:
        raise StoreError(f"cannot read {d.at(FILENAME)}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        check_file(os.fstat(f.fileno()), d.place.uid, d.at(FILENAME))
        lines = f.read(1 << 20).split(b"\n")
    numbers = []
    for line in lines:
        word = line.split()[-1] if line.split() else b""
        numbers.append(int(word) if word.isdigit() and 0 < int(word) <= MAX else 0)
    return numbers[0], [n for n in numbers[1:] if n]


def _record(d: Dir, last: int, adopted: list[int], owner: tuple[int, int] | None) -> None:
    text = b"%d\n" % last + b"".join(b"adopted %d\n" % n for n in adopted)
    atomic_write(FILENAME, text, dir_fd=d.fd, owner=owner)


def allocate(d: Dir, now: float, owner: tuple[int, int] | None = None) -> int:
    """A new UIDVALIDITY for a mailbox of the account whose control directory is ``d``:
    above every value given before, durably recorded."""
    with _exclusive(d):
        last, adopted = _read(d)
        value = max(int(now), last + 1, 1)
        if value > MAX:
            raise StoreError(f"{d.at(FILENAME)}: no UIDVALIDITY left above {value - 1}")
        _record(d, value, adopted, owner)
    return value


def adopt(d: Dir, value: int, owner: tuple[int, int] | None = None) -> bool:
    """Take ``value`` (from another program's state, Dovecot's ``X-IMAPbase``) into use: later
    allocations stay above it. False if it was taken over before: the index made then is
    gone, and the UIDs given since are not in the file, so the mailbox needs a new value."""
    with _exclusive(d):
        last, adopted = _read(d)
        if value in adopted:
            return False
        _record(d, max(last, value), [*adopted, value], owner)
    return True


_in_memory: dict[str, int] = {}


def allocate_in_memory(key: str, now: float) -> int:
    """For an account with no home (its indexes live in memory for the life of the process):
    values above every one given by this process to ``key``."""
    with _locks_guard:
        value = max(int(now), _in_memory.get(key, 0) + 1, 1)
        _in_memory[key] = value
    return value
