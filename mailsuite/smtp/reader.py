"""The one command reader of the SMTP-family doors: SMTP, submission and smtps (smtp/server.py),
LMTP (smtp/lmtp.py) and ``sendmail -bs`` (cli.py) read their input with ``Reader``; the two
network doors run it with ``CommandLoop``. What each command means, and the replies, stay the
door's own (the grammars differ there: LHLO, per-recipient replies, the maildrop).

``Reader`` is sans-IO: bytes go in (``feed``), command lines and whole messages come out.

- A command line ends at LF (a CR before it is dropped). One longer than ``line_limit`` is
  ``TOO_LONG``, once; the rest of it, up to its line end, is discarded.
- After DATA (``start_data``), ``data`` returns the message when its end is in: converted as it
  arrives, whole runs of lines at once (CRLF -> LF, the stuffed dot of each line removed: a 4 KB
  message costs a few bytes operations, not a Python loop per line), long lines kept (passed on
  in ``DATA_CHUNK`` pieces, never read as commands), the size counted and the data beyond
  ``size_limit`` not kept. Only ``<CR><LF>.<CR><LF>`` ends it (no SMTP smuggling on the
  network doors); ``lf_ends_data`` lets a lone dot between bare LFs end it too, as a local
  ``sendmail -bs`` client on a pipe writes it.

``CommandLoop`` (the network doors) runs the steps strictly one after another: while a step
waits on a Deferred (portal login, recipient look-up, delivery) later input stays in the
reader, so replies come in order (PIPELINING) and MAIL+RCPT+DATA in one packet never race;
with ``PAUSE_BUFFER`` bytes waiting behind a slow step, the transport stops reading.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

COMMAND_LINE_LIMIT = 2048  # Postfix line_length_limit
DATA_CHUNK = 65536  # a body line longer than this is passed on in pieces
PAUSE_BUFFER = 262144  # stop reading while this much input waits behind a slow command

_DOT_START = re.compile(rb"^\.(?!\n)", re.MULTILINE)


class TooLong:
    """A command line longer than the reader's ``line_limit``."""


TOO_LONG = TooLong()


class Body(NamedTuple):
    """A message read after DATA: ``data`` as stored (LF line ends, dots unstuffed; empty when
    ``too_big``) and ``size``, the bytes counted in that form."""

    data: bytes
    size: int
    too_big: bool


def split_command(line: bytes) -> tuple[bytes, bytes]:
    """(verb in capitals, argument) of a command line, both stripped."""
    verb, _, arg = line.strip().partition(b" ")
    return verb.upper(), arg.strip()


def unstuff(lines: bytes) -> bytes:
    """Complete DATA lines -> stored form: CRLF -> LF, the stuffed dot of each line removed
    (a line that is only "." and is not the terminator stays as it is).

    ``lines`` starts at the start of a line and ends with a line end. Bytes replaces, not a
    regular expression scanning every position: most messages have no line that starts with
    a dot, and the others rarely a line that is only one."""
    data = lines.replace(b"\r\n", b"\n")
    if b"\n." not in data and data[:1] != b".":
        return data
    if b"\n.\n" in data or data[:2] == b".\n":
        return _DOT_START.sub(b"", data)
    data = data.replace(b"\n.", b"\n")
    return data[1:] if data[:1] == b"." else data


class Reader:
    """The input of one session: see the module docstring. ``line_limit`` None: no limit."""

    def __init__(self, line_limit: int | None = COMMAND_LINE_LIMIT,
                 lf_ends_data: bool = False) -> None:
        self.line_limit = line_limit
        self.lf_ends_data = lf_ends_data
        self.buffer = b""
        self._discarding = False
        self.start_data(0)

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def clear(self) -> None:
        """Drop what was received and not read yet (STARTTLS, a lost connection)."""
        self.buffer = b""

    # -- commands ------------------------------------------------------------------------------

    def command(self) -> bytes | TooLong | None:
        """The next command line (no line end), TOO_LONG, or None until more input comes."""
        limit = self.line_limit
        while True:
            i = self.buffer.find(b"\n")
            if i < 0:
                if limit is None or len(self.buffer) <= limit:
                    return None
                self.buffer = b""
                if self._discarding:
                    return None
                self._discarding = True
                return TOO_LONG
            line, self.buffer = self.buffer[:i], self.buffer[i + 1 :]
            if self._discarding:  # the tail of an over-long command line
                self._discarding = False
                continue
            if limit is not None and len(line) > limit:
                return TOO_LONG
            return line.rstrip(b"\r")

    # -- DATA ----------------------------------------------------------------------------------

    def start_data(self, size_limit: int) -> None:
        """The input from here on is a message, up to its end of data; ``size_limit`` 0: none."""
        self.size_limit = size_limit
        self._parts: list[bytes] = []
        self._size = 0
        self._too_big = False
        self._mid_line = False
        self._line_start = True  # the buffer starts a line (after a CRLF; or any LF)

    def _store(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._too_big:
            return
        if self.size_limit and self._size > self.size_limit:
            self._too_big = True
            self._parts = []  # counted from now on, not kept
            return
        self._parts.append(piece)

    def _end(self, buf: bytes) -> tuple[int, int] | None:
        """(end of the body, start of what follows) if ``buf`` holds the end of data."""
        lone_dot = buf[:3] == b".\r\n" or (self.lf_ends_data and buf[:2] == b".\n")
        if self._line_start and lone_dot:
            return 0, buf.index(b"\n") + 1
        if not self.lf_ends_data:
            j = buf.find(b"\r\n.\r\n")
            return (j + 2, j + 5) if j >= 0 else None
        found = None
        for terminator in (b"\n.\n", b"\n.\r\n"):
            j = buf.find(terminator)
            if j >= 0 and (found is None or j + 1 < found[0]):
                found = (j + 1, j + len(terminator))
        return found

    def data(self) -> Body | None:
        """The message once its end of data is in (the reader is back to commands then);
        None until then (what came is taken in)."""
        buf = self.buffer
        if self._mid_line:  # the tail of an over-long line: no dot handling at its start
            i = buf.find(b"\n")
            if i >= 0:
                crlf = i > 0 and buf[i - 1] == 13
                self._store((buf[: i - 1] if crlf else buf[:i]) + b"\n")
                self._mid_line, self._line_start = False, crlf or self.lf_ends_data
                buf = buf[i + 1 :]
        if not self._mid_line:
            end = self._end(buf)
            if end is not None:
                self._store(unstuff(buf[: end[0]]))
                self.buffer = buf[end[1] :]
                body = Body(b"".join(self._parts), self._size, self._too_big)
                self.start_data(0)
                return body
            k = buf.rfind(b"\n")
            if k >= 0:
                self._line_start = self.lf_ends_data or (k > 0 and buf[k - 1] == 13)
                self._store(unstuff(buf[: k + 1]))
                buf = buf[k + 1 :]
        if len(buf) >= DATA_CHUNK:  # an over-long line: keep reading it, never as commands
            keep = 1 if buf.endswith(b"\r") else 0
            piece, buf = buf[: len(buf) - keep], buf[len(buf) - keep :]
            if not self._mid_line and piece[:1] == b".":
                piece = piece[1:]
            self._mid_line = True
            self._store(piece)
        self.buffer = buf
        return None


class CommandLoop:
    """The input loop of a network door (a Twisted protocol): ``dataReceived`` feeds ``reader``
    and runs ``_step`` until it needs more input; a step that returns a Deferred holds the loop
    until it fires (``_busy``). The door gives ``_command(line)`` (None or a Deferred),
    ``_end_of_data(body)``, ``_line_too_long()``, sets ``_in_data`` from its 354 on, and sets
    ``_connected`` in connectionMade and clears it in connectionLost; ``_resumed`` is called
    when a step's Deferred lets the loop go on."""

    reader: Reader
    transport: Any
    _in_data = False
    _busy = False
    _in_run = False
    _paused = False
    _connected = False
    _failure_text = "command failed"

    def _command(self, line: bytes) -> Any:
        raise NotImplementedError

    def _end_of_data(self, body: Body) -> Any:
        raise NotImplementedError

    def _line_too_long(self) -> None:
        raise NotImplementedError

    def _resumed(self) -> None:
        """Called when a step's Deferred has fired and the loop goes on (SMTP: the idle timer)."""

    def _step(self) -> Any:
        """One command or a piece of DATA: None when more input is needed; a Deferred when it
        waits for that; anything else to go on."""
        if self._in_data:
            body = self.reader.data()
            return None if body is None else self._end_of_data(body)
        line = self.reader.command()
        if line is None:
            return None
        if isinstance(line, TooLong):
            self._line_too_long()
            return True
        return self._command(line) or True

    def dataReceived(self, data: bytes) -> None:
        self.reader.buffer += data  # (feed, without a call per packet)
        self._run()

    def _run(self) -> None:
        """Handle buffered input until it runs out or a step waits on a Deferred."""
        if self._in_run:
            return
        self._in_run = True
        try:
            while not self._busy and self._connected and not self.transport.disconnecting:
                step = self._step()
                if step is None:
                    break
                if isinstance(step, defer.Deferred):
                    self._busy = True
                    step.addBoth(self._finished)  # clears _busy at once if step has fired
        finally:
            self._in_run = False
        if self._busy and not self._paused and len(self.reader.buffer) > PAUSE_BUFFER:
            self._paused = True
            self.transport.pauseProducing()

    def _finished(self, result: Any) -> None:
        if isinstance(result, Failure):
            log.failure(self._failure_text, result)
        self._busy = False
        if not self._connected or self._in_run:  # fired at once: _run goes on by itself
            return
        self._resumed()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._run()
