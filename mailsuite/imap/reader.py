"""Reading IMAP commands: lines and literals, one command at a time.

A command is assembled with its literals (``{N}``, LITERAL+ or LITERAL- ``{N+}``, and literal8
``~{N}``) before it is parsed, so any argument may be a literal (SEARCH, APPEND, LOGIN, CREATE).
Every command has a limit on its size, literals included ([imap] imap_max_line_length after
login, ``LOGIN_MAX_COMMAND`` before), except the message of an APPEND (message_size_limit).
Lines of IDLE (``DONE``) and of an AUTHENTICATE exchange go to their handlers. A mixin of
``IMAPServer`` (``session.Session``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.imap.parser import LITERAL_AT_END

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

MAX_LITERAL = 64 * 1024 * 1024  # the largest APPEND when message_size_limit = 0 (no limit)
#: RFC 7888 5: the largest non-synchronizing literal a LITERAL- server takes
LITERAL_MINUS_MAX = 4096
#: a whole command before login, literals included (Dovecot's IMAP_LOGIN_MAX_LINE_LENGTH);
#: after login it is [imap] imap_max_line_length, plus the message of an APPEND
LOGIN_MAX_COMMAND = 8192


def append_limit(config: Any) -> int:
    """The largest message APPEND takes (RFC 7889 APPENDLIMIT, for CAPABILITY and for
    ``STATUS APPENDLIMIT``): message_size_limit, or MAX_LITERAL when that is 0 (no limit)."""
    limit: int = config.mail.message_size_limit
    return limit or MAX_LITERAL


class CommandReader(_Base):
    """LineReceiver's ``lineReceived`` and ``rawDataReceived`` for ``IMAPServer``: hands each
    assembled command to ``_dispatch``."""

    _parts: list[bytes]  # the command being assembled (lines and literals)
    _assembled: int  # its bytes that count against _command_limit()
    _message_bytes: int  # its APPEND message literals let past the limit (MULTIAPPEND: several)
    _literal_left: int
    _buffer: bytes  # LineReceiver's: received, not yet read

    def own_capabilities(self) -> dict[bytes, Any]:
        """LITERAL+, or LITERAL- with [imap] imap_literal_minus (RFC 7888)."""
        return {b"LITERAL-" if self.config.imap.imap_literal_minus else b"LITERAL+": None}

    def _command_limit(self) -> int:
        """The most bytes one command may have, literals included (S5: no unbounded memory)."""
        limit: int = self.config.imap.imap_max_line_length
        return min(limit, LOGIN_MAX_COMMAND) if self.state == "unauth" else limit

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]  # read by LineReceiver per line
        """The longest line LineReceiver passes on: what the command being assembled has left;
        a longer line is ``lineLengthExceeded``."""
        return max(0, self._command_limit() - self._assembled)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self.parseState == "idle":
            self._idle_line(line)
            return
        if self.parseState == "sasl":  # an answer to an AUTHENTICATE challenge
            self._login_deadlines.command()
            self.sasl_line(line)
            self._pause_while_busy()
            return
        m = LITERAL_AT_END.search(line)
        if m is None:
            self._parts.append(line)
            command = b"".join(self._parts)
            self._parts, self._assembled, self._message_bytes = [], 0, 0
            self._dispatch(command)
            return
        size, plus = int(m.group(1)), bool(m.group(2))
        first = self._parts[0] if self._parts else line
        self._assembled += len(line) + len(self.delimiter)
        if plus and size > LITERAL_MINUS_MAX and self.config.imap.imap_literal_minus:
            self._refuse_literal(first.split(b" ", 1)[0] or b"*", plus)
            return
        if not self._literal_fits(first, size):
            self._refuse_literal(first.split(b" ", 1)[0] or b"*", plus)
            return
        self._parts.append(line[: m.start()] + b"{%d}" % size)
        self._literal_left = size
        if not plus:
            self.sendContinuationRequest(b"Ready for literal data")
        if size:
            self.setRawMode()

    def _literal_fits(self, first: bytes, size: int) -> bool:
        """A literal must fit in what the command has left, except the literals of an APPEND
        after login (RFC 7889 APPENDLIMIT: each at most ``append_limit``, message_size_limit or
        MAX_LITERAL when it is 0; MULTIAPPEND's together at most MAX_LITERAL), refused before
        they are read."""
        name = first.split(b" ", 2)[1:2]
        if self.state != "unauth" and name and name[0].upper() == b"APPEND":
            # its literals (messages, CATENATE's TEXT parts) leave the lines their whole limit
            if size > append_limit(self.config) or self._message_bytes + size > MAX_LITERAL:
                return False
            self._message_bytes += size
            return True
        if size <= self._command_limit() - self._assembled:
            self._assembled += size
            return True
        return False

    def _refuse_literal(self, tag: bytes, plus: bool) -> None:
        self._parts, self._assembled, self._message_bytes = [], 0, 0
        if not plus:  # no continuation: the client sends nothing more of this command
            self.sendLine(tag + b" NO [TOOBIG] Literal too big.")
            return
        # RFC 7888 4: the data of a non-synchronizing literal follows anyway; the command is
        # BAD and, rather than read data it will not keep, the server closes (as Dovecot)
        self.sendLine(tag + b" BAD [TOOBIG] Literal too big.")
        self.sendLine(b"* BYE Literal too big.")
        self.uncork()
        self.transport.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        take, rest = data[: self._literal_left], data[self._literal_left :]
        self._literal_left -= len(take)
        self._parts.append(take)
        if self._literal_left == 0:
            # back to lines; LineReceiver's loop reads ``rest`` (setLineMode(rest) would
            # re-enter dataReceived and count the bytes twice)
            self.line_mode = 1
            self._buffer = rest + self._buffer
