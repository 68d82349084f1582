"""Postfix- and Dovecot-shaped lines in ``maillog_file`` (or syslog), so fail2ban's stock
filters, pflogsumm and grep work unchanged.

    Nov 28 06:01:02 mail postfix/smtpd[4242]: 3F2A1B9C: client=localhost[127.0.0.1]
    Nov 28 06:01:09 mail dovecot: imap-login: Login: user=<boss>, method=PLAIN, rip=127.0.0.1

Postfix's programs (smtpd, smtp, qmgr, cleanup, local, pickup, bounce...) log under
``[mail] syslog_name`` (``postfix``: ``postfix/smtpd[PID]``), as Postfix does; Dovecot's
services (imap-login, pop3-login, imap(USER), pop3(USER), auth) under ``dovecot:``, without a
pid, as Dovecot writes them to syslog.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import Logger
from twisted.python import threadable

log = Logger()

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


#: Dovecot's services: ``dovecot: imap-login: ...``, ``dovecot: imap(boss): ...``.
DOVECOT_SERVICES = frozenset({"imap-login", "pop3-login", "imap", "pop3", "auth"})
#: syslog(3)'s facility numbers, by the names Postfix's ``syslog_facility`` takes.
FACILITIES = {name: number for number, name in enumerate((
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp"))}
FACILITIES.update({f"local{n}": 16 + n for n in range(8)})
#: Postfix's severities (msg_warn, msg_error, msg_fatal, msg_panic); the rest is LOG_INFO.
_SEVERITY = {"warning": 4, "error": 3, "fatal": 2, "panic": 0}



def parse_syslog_name(value: str) -> str:
    """``[mail] syslog_name``: Postfix's, e.g. ``postfix`` or ``postfix-out`` (a second
    instance), one word of letters, digits, ``-``, ``_``, ``.`` and ``/``."""
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9][-\w./]*", text):
        raise ValueError(f"{text!r} is not a syslog name (letters, digits, - _ . /)")
    return text


def parse_syslog_facility(value: str) -> str:
    """``[mail] syslog_facility``: a facility name (``mail``, ``local0``..``local7``...)."""
    text = value.strip().lower()
    if text not in FACILITIES:
        raise ValueError(f"{text!r} is not a syslog facility ({', '.join(FACILITIES)})")
    return text


#: syslog lines held while syslogd's socket is full, at most (then the oldest are dropped)
BACKLOG_LINES = 10000

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
    """Appends one line per event. Lines are short appends to a local file, written unbuffered,
    or (``syslog``: the socket's path) one datagram each to syslogd.

    ``now`` returns seconds since the epoch (inject a Clock's ``seconds`` in tests): the wall
    clock, as the lines print a date. ``reactor`` (the daemon's): the lines of one reactor turn
    go out in one write, and lines from pool threads are written by the reactor thread.
    """

    def __init__(
        self, path: str | None, hostname: str, now: Callable[[], float] = time.time,
        reactor: Any = None, syslog_name: str = "postfix", syslog: str | None = None,
        facility: int = FACILITIES["mail"],
    ) -> None:
        self.path = path
        self.syslog_name = syslog_name
        #: the syslog socket (``/dev/log``) to send to instead of a file (``path`` None)
        self.syslog = syslog
        #: where a syslog socket connects again after an error (also in the processes that
        #: were handed the master's socket, and so have no ``syslog`` to open)
        self.reconnect_to = syslog
        self.facility = facility
        self._socket: socket.socket | None = None
        self._socket_warned = False
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG_LINES)
        self._drain_call: Any = None
        self._reactor = reactor
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
        self._tags: dict[str, str] = {}  # program -> "postfix/smtpd[pid]: "
        #: called with each event's program and text (mailsuite.metrics counts them)
        self.observers: list[Callable[[str, str], None]] = []

    @classmethod
    def from_config(cls, mail: Any, reactor: Any, opened_by_master: bool = False) -> MailLog:
        """The maillog of ``[mail]``: ``maillog_file``, or syslog when it is empty
        (``opened_by_master``: neither, the process ``adopt``s the master's descriptor)."""
        syslog = None if mail.maillog_file or opened_by_master else mail.syslog_socket
        maillog = cls(None if opened_by_master else mail.maillog_file or None, mail.myhostname,
                      reactor=reactor, syslog_name=mail.syslog_name, syslog=syslog,
                      facility=FACILITIES[mail.syslog_facility])
        maillog.reconnect_to = None if mail.maillog_file else mail.syslog_socket
        return maillog

    def open(self) -> None:
        if self.syslog:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._connect()
        elif self.path:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._file = os.fdopen(fd, "ab", buffering=0)

    def _connect(self) -> None:
        """Connect the syslog socket (again: syslogd may have been restarted). A syslogd that
        is not there is no reason not to serve mail: the lines are dropped (as syslog(3) does)
        and twistd's log says so once."""
        assert self._socket is not None
        if self.reconnect_to is None:
            return
        try:
            self._socket.connect(self.reconnect_to)
        except OSError as e:
            self._syslog_trouble(e)

    def _syslog_trouble(self, e: OSError) -> None:
        if not self._socket_warned:
            self._socket_warned = True
            log.warn("cannot send to syslog {path}: {e}", path=self.reconnect_to, e=e)

    def fileno(self) -> int:
        """The open file's (or syslog socket's) descriptor (handed to the processes a
        privileged master starts)."""
        if self._socket is not None:
            return self._socket.fileno()
        assert self._file is not None
        return self._file.fileno()

    def adopt(self, fd: int) -> None:
        """Write to ``fd`` (opened for appending, or a syslog socket connected, by a more
        privileged process)."""
        self.close()
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            self._socket = socket.socket(fileno=fd)
        else:
            self._file = os.fdopen(fd, "ab", buffering=0)

    def reopen(self) -> None:
        """After logrotate moved the file away (SIGHUP)."""
        self.close()
        self.open()

    def close(self) -> None:
        self.flush()
        if self._socket is not None:
            self._drain_now()
            self._socket.close()
            self._socket = None
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
        """One event of ``program``: Postfix's (smtpd, smtp, local, cleanup, qmgr, pickup,
        bounce, ``submission/smtpd``...) as ``SYSLOG_NAME/PROGRAM[pid]:``; Dovecot's
        (pop3-login, imap-login, ``imap(USER)``, ``pop3(USER)``, auth) as ``dovecot: PROGRAM:``.
        Control characters in ``text`` (a client's CR/LF in a user name) are escaped: one
        event stays one line, so a client cannot forge a line that log watchers such as
        fail2ban would act on."""
        for observe in self.observers:
            observe(program, text)
        tag = self._tags.get(program)
        if tag is None:
            if len(self._tags) > 100:
                self._tags.clear()
            if program.split("(", 1)[0] in DOVECOT_SERVICES:  # (a user name may be in it)
                tag = f"dovecot: {_CONTROL.sub('?', program)}: "
            else:
                tag = f"{self.syslog_name}/{program}[{self.pid}]: "
            self._tags[program] = tag
        if not text.isprintable():  # (isprintable: no control characters, and more)
            text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        if self.syslog or self._socket is not None:
            self._send(tag, text)
            return
        line = f"{self.stamp()} {self.hostname} {tag}{text}"
        if self._file is None and not self.path:
            self.lines.append(line)
            return
        if self.coalesce is not None:
            self._pending.append(line)
            if len(self._pending) == 1:
                self.coalesce(self.flush)
            return
        self._write(line + "\n")

    def _send(self, tag: str, text: str) -> None:
        """One datagram per line to the syslog socket, as syslog(3) sends it on Linux:
        ``<PRI>Mmm dd hh:mm:ss TAG: text`` (syslogd adds the host name). Hand-written: the
        stdlib's syslog module and SysLogHandler take one ident per process or handler, the
        lines here carry many (``postfix/smtpd``, ``dovecot``), and an unprivileged child
        writes on the socket its master connected. The reactor never waits for syslogd:
        while its socket is full (a burst; Linux queues few datagrams) lines wait in
        ``_backlog`` (bounded) and go out in order when the reactor tries again."""
        severity = _SEVERITY.get(text.partition(":")[0], 6)
        datagram = f"<{self.facility * 8 + severity}>{self.stamp()} {tag}{text}"
        if self._socket is None:
            self.open()
        if len(self._backlog) == BACKLOG_LINES:
            self._syslog_trouble(OSError(f"more than {BACKLOG_LINES} lines waiting"))
        self._backlog.append(datagram.encode("utf-8", "replace"))
        if len(self._backlog) == 1:
            self._drain()

    def _drain_now(self) -> None:
        """What waits goes out before the socket closes (SIGHUP, stop), as far as it can."""
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        if self._backlog and self._socket is not None:
            poller = select.poll()
            poller.register(self._socket.fileno(), select.POLLOUT)
            deadline = time.monotonic() + 1.0
            with contextlib.suppress(OSError):
                while self._backlog and poller.poll(max(0, deadline - time.monotonic()) * 1000):
                    self._socket.send(self._backlog.popleft(), socket.MSG_DONTWAIT)
            self._backlog.clear()

    def _drain(self) -> None:
        self._drain_call = None
        retried = False
        while self._backlog and self._socket is not None:
            try:
                # MSG_DONTWAIT, not O_NONBLOCK: the descriptor is shared with the master
                self._socket.send(self._backlog[0], socket.MSG_DONTWAIT)
            except BlockingIOError as e:  # full: again in a moment (dropped without a reactor)
                if self._reactor is None:
                    self._backlog.clear()
                    self._syslog_trouble(e)
                elif self._drain_call is None:
                    self._drain_call = self._reactor.callLater(0.02, self._drain)
                return
            except OSError as e:  # syslogd restarted (its socket is new): connect again, once
                if retried:
                    self._backlog.popleft()  # dropped, as syslog(3) drops it
                    self._syslog_trouble(e)
                    continue
                retried = True
                self._connect()
                continue
            self._backlog.popleft()

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
