"""A text table (BCC maps, audit rules, virtual alias maps, quota_rule_file): read at
start, re-read when it changes.

``TableFile(path, parse)`` holds what ``parse(text, path)`` made of the file. ``load()`` reads
it at start: a broken table refuses the start (``TableError``, one ``file:line: why`` per bad
line). ``current()``, called from any thread (the filters call it in the thread pool: it
stats, and may read, the file), re-reads the file when its mtime, ctime, size or inode
changed; a re-read that fails (a broken line, a missing or unreadable file) keeps the previous
table and gives the problem to ``warn`` once per change, as Postfix keeps the old table.
With ``clock`` and ``interval``, the file is looked at no more than once per ``interval``
seconds (a table asked for at every delivery costs no stat each time).
The network process reads these files as ``mail_owner`` (README.rst).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Stamp = tuple[int, int, int, int]


class TableError(ValueError):
    """What is wrong with a table: one ``file:line: why`` per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def read_text(path: str) -> str:
    """The file as UTF-8 text; not UTF-8: a TableError naming the first bad line. Only a
    regular file is read (opened without blocking: a FIFO named here must not hang the thread
    that reads it, or the master at start), as regexptable.TableFile reads its tables."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise TableError([f"{path}:{line}: not UTF-8 text"]) from None


class TableFile(Generic[T]):
    """One table file and what its parser made of it (see the module doc)."""

    def __init__(self, path: str, parse: Callable[[str, str], T],
                 warn: Callable[[str], None] = lambda text: None,
                 clock: Callable[[], float] | None = None, interval: float = 0.0) -> None:
        self.path = path
        self.parse = parse
        self.warn = warn
        self.clock, self.interval = clock, interval
        self._looked = float("-inf")
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._refused: Stamp | None = None
        self._value: T | None = None

    def _stat(self) -> Stamp:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def load(self) -> T:
        """Read the table now (start-up): OSError or TableError when it cannot be used."""
        with self._lock:
            if self.clock is not None:
                self._looked = self.clock()
            stamp = self._stat()
            self._value = self.parse(read_text(self.path), self.path)
            self._stamp = stamp
            return self._value

    def load_or(self, default: T) -> T:
        """``load``, or ``default`` (the problem given to ``warn``) when the file cannot be
        used now: ``current`` reads it again once it changes (a table a start-up check
        vouched for, read at the first look)."""
        try:
            return self.load()
        except (OSError, TableError) as e:
            with self._lock:
                self._value = default
                self._problem(e)
            return default

    def current(self) -> T:
        """The table, re-read first if the file changed (see the module doc)."""
        with self._lock:
            assert self._value is not None, "load() first"
            if self.clock is not None:
                now = self.clock()
                if 0 <= now - self._looked < self.interval:
                    return self._value
                self._looked = now
            try:
                stamp = self._stat()
                if stamp in (self._stamp, self._refused):
                    return self._value
                value = self.parse(read_text(self.path), self.path)
            except (OSError, TableError) as e:
                self._problem(e)
                return self._value
            self._value, self._stamp, self._refused = value, stamp, None
            return value

    def _problem(self, error: OSError | TableError) -> None:
        try:
            stamp: Stamp | None = self._stat()
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._refused:
            return
        if stamp is None and self._refused == (0, 0, 0, 0):
            return
        self._refused = stamp if stamp is not None else (0, 0, 0, 0)
        why = "; ".join(error.errors) if isinstance(error, TableError) else \
            f"{self.path}: {error.strerror or error}"
        self.warn(f"{why}: the table is not changed, the previous one stays in use")
