"""Postfix-shaped lines in ``maillog_file``, so fail2ban, pflogsumm and grep keep working.

    Nov 28 06:01:02 mail mailsuite/smtpd[4242]: 3F2A1B9C: client=localhost[127.0.0.1]
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import Logger
from twisted.python import threadable

log = Logger()

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


_ID_BYTES = 5
_random = b""  # os.urandom bytes, read 4 KB at a time; _taken of them handed out
_taken = 0
_random_lock = threading.Lock()


def format_delay(seconds: float) -> str:
    """Postfix's delay notation: two significant digits, ``0`` for less than 10 ms."""
    if seconds < 0.01:
        return "0"
    if seconds >= 10:
        return str(round(seconds))
    return f"{seconds:.2g}"


def new_queue_id() -> str:
    """A queue id like Postfix's short ones: 10 upper-case hex digits, unique enough per host.

    From os.urandom, 4 KB at a time (not one getrandom call per message); a child process
    after fork() starts with none, so parent and child never hand out the same ids."""
    global _random, _taken
    with _random_lock:
        if _taken + _ID_BYTES > len(_random):
            _random, _taken = os.urandom(4095), 0
        chunk = _random[_taken : _taken + _ID_BYTES]
        _taken += _ID_BYTES
    return chunk.hex().upper()


def _forget_random() -> None:
    global _random, _taken, _random_lock
    _random, _taken, _random_lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_random)


class MailLog:
    """Appends one line per event. Lines are short appends to a local file, written unbuffered.

    ``now`` returns seconds since the epoch (inject a Clock's ``seconds`` in tests): the wall
    clock, as the lines print a date. ``reactor`` (the daemon's): the lines of one reactor turn
    go out in one write, and lines from pool threads are written by the reactor thread.
    """

    def __init__(
        self, path: str | None, hostname: str, now: Callable[[], float] = time.time,
        reactor: Any = None,
    ) -> None:
        self.path = path
        self.hostname = hostname.split(".")[0] or hostname
        self._now = now
        self._file: IO[bytes] | None = None
        self.pid = os.getpid()
        self.lines: list[str] = []  # kept when path is None (tests)
        self._stamp: tuple[int, str] = (-1, "")
        #: ``lambda f: reactor.callLater(0, f)`` with a reactor: the lines of one reactor turn
        #: then go out in one write (a busy MX logs ~5 lines per message).
        self.coalesce: Callable[[Callable[[], None]], object] | None = None
        self._from_thread: Callable[..., object] | None = None
        if reactor is not None:
            self.coalesce = lambda f: reactor.callLater(0, f)
            self._from_thread = reactor.callFromThread
        self._pending: list[str] = []
        self._tags: dict[str, str] = {}  # ident -> " host ident[pid]: "
        #: called with each event's program and text (mailsuite.metrics counts them)
        self.observers: list[Callable[[str, str], None]] = []

    def open(self) -> None:
        if self.path:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._file = os.fdopen(fd, "ab", buffering=0)

    def fileno(self) -> int:
        """The open file's descriptor (handed to the processes a privileged master starts)."""
        assert self._file is not None
        return self._file.fileno()

    def adopt(self, fd: int) -> None:
        """Write to ``fd`` (opened for appending by a more privileged process)."""
        self.close()
        self._file = os.fdopen(fd, "ab", buffering=0)

    def reopen(self) -> None:
        """After logrotate moved the file away (SIGHUP)."""
        self.close()
        self.open()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def stamp(self) -> str:
        second = int(self._now())
        if second != self._stamp[0]:  # one localtime() per second, not per line
            t = time.localtime(second)
            self._stamp = (second, f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
                           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")
        return self._stamp[1]

    def write_from_any_thread(self, program: str, text: str) -> None:
        """``write`` for code that may run in the thread pool (alias files are read there):
        the line is written by the reactor thread."""
        if self._from_thread is None or threadable.ioThread is None \
                or threadable.isInIOThread():  # (ioThread None: no reactor yet, no pool threads)
            self.write(program, text)
        else:
            self._from_thread(self.write, program, text)

    def write(self, program: str, text: str) -> None:
        """One event of ``program`` (smtpd, local, cleanup, pop3-login, imap-login, pop3, imap)."""
        for observe in self.observers:
            observe(program, text)
        self.emit("mailsuite/" + program, text)

    def emit(self, ident: str, text: str) -> None:
        """One line under syslog tag ``ident`` (``IDENT[pid]: text``). Control characters in
        ``text`` (a client's CR/LF in a user name) are escaped: one event stays one line, so a
        client cannot forge a line that log watchers such as fail2ban would act on."""
        if not text.isprintable():  # (isprintable: no control characters, and more)
            text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        tag = self._tags.get(ident)
        if tag is None:
            if len(self._tags) > 100:
                self._tags.clear()
            tag = self._tags[ident] = f" {self.hostname} {ident}[{self.pid}]: "
        line = self.stamp() + tag + text
        if self._file is None and not self.path:
            self.lines.append(line)
            return
        if self.coalesce is not None:
            self._pending.append(line)
            if len(self._pending) == 1:
                self.coalesce(self.flush)
            return
        self._write(line + "\n")

    def flush(self) -> None:
        """Write the lines held back by ``coalesce`` (one write for all of them)."""
        lines, self._pending = self._pending, []
        if lines:
            self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        if self._file is None:
            self.open()
        try:
            assert self._file is not None
            self._file.write(text.encode("utf-8", "replace"))
        except OSError:
            log.failure("cannot write to maillog {path}", path=self.path)
