"""POP3 (port 110): Dovecot's behaviour on top of ``twisted.mail.pop3.POP3``.

A session works on a snapshot of INBOX taken at login (``open_pop3_mailbox``). Deletions are only
marks until QUIT, which expunges exactly the marked UIDs; a dropped connection deletes nothing,
and mail that arrives during a session is not part of it and survives its QUIT.

RETR and TOP send a message's wire form (``mailsuite.wire.to_wire``: CRLF line ends, a final
line end, NUL bytes replaced by 0x80 as Dovecot's ``outlook-no-nuls`` does), dot-stuffed.
STAT and LIST announce the store's ``MessageInfo.size``, which is exactly the length of that
wire form, so they read no message: a 100,000-message INBOX is listed from the index alone.

The stock protocol's defects (TWISTED.md) are fixed by replacing its command handlers: the stock
class only contributes its line handling and timeout mixin.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsuite.config import Config
from mailsuite.deadline import LoginDeadlines
from mailsuite.limits import Limits
from mailsuite.net import MAX_UNSENT, UnsentWait, host_of, unsent
from mailsuite.pop3.login import Pop3Login
from mailsuite.store.interfaces import UnknownUID

log = Logger()

IDLE_TIMEOUT = 600  # Dovecot's: 10 minutes without a command or output progress
CHUNK_SIZE = 65536


# -- the wire form -------------------------------------------------------------------------------


def dot_stuff(wire: bytes) -> bytes:
    """Double a ``.`` at the start of every line, the first one included (RFC 1939 3)."""
    wire = wire.replace(b"\r\n.", b"\r\n..")
    return b"." + wire if wire.startswith(b".") else wire


def top_of(wire: bytes, lines: int) -> bytes:
    """The header block, the blank line and the first ``lines`` body lines of a wire message."""
    if wire.startswith(b"\r\n"):
        end = 2  # no header lines at all
    else:
        blank = wire.find(b"\r\n\r\n")
        if blank < 0:
            return wire  # headers only
        end = blank + 4
    for _ in range(lines):
        if end >= len(wire):
            break
        end = wire.find(b"\r\n", end) + 2
    return wire[:end]


# -- the protocol --------------------------------------------------------------------------------


@implementer(interfaces.IPullProducer)
class _MessageProducer:
    """Writes a dot-stuffed message in chunks as the transport asks, then the terminating dot."""

    def __init__(self, session: POP3Server, stuffed: bytes) -> None:
        self.session = session
        self.data = stuffed
        self.pos = 0
        self.done: defer.Deferred[bool] = defer.Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        transport = self.session.transport
        chunk = self.data[self.pos:self.pos + CHUNK_SIZE]
        self.pos += len(chunk)
        if chunk:
            transport.write(chunk)
            self.session.resetTimeout()
        if self.pos >= len(self.data):
            transport.unregisterProducer()
            transport.write(b".\r\n")
            self.done.callback(True)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.callback(False)


AUTH_COMMANDS = {b"CAPA", b"USER", b"PASS", b"AUTH", b"STLS", b"QUIT"}
MAIL_COMMANDS = {b"CAPA", b"STAT", b"LIST", b"UIDL", b"TOP", b"RETR", b"DELE", b"RSET", b"NOOP",
                 b"QUIT"}


class POP3Server(Pop3Login, pop3.POP3):
    """One POP3 connection. ``config``, ``portal``, ``maillog``, ``clock``, ``server_tls`` and
    ``secure`` are set by the factory; login (CAPA, STLS, USER/PASS, AUTH) is ``Pop3Login``."""

    timeOut = IDLE_TIMEOUT
    transport: Any
    mbox: Any = None  # the Pop3Mailbox once logged in
    portal: Any = None
    maillog: Any = None
    clock: Any = None

    def connectionMade(self) -> None:
        self.init_session()
        self.rip = host_of(self.transport.getPeer())
        self.lip = host_of(self.transport.getHost())
        auth = self.config.auth  # the idle timeout (timeOut) starts at login
        self._login_deadlines = LoginDeadlines(
            self.clock, auth.login_idle_timeout, auth.login_timeout, self.timeoutConnection)
        if not self.limits_connect():  # [pop3] process_limit
            self._login_deadlines.stop()
            return
        self.reply(b"+OK mailsuite ready.")

    def init_session(self) -> None:
        """The state of a new session (here, or in the agent a login is handed to)."""
        self.callLater = self.clock.callLater  # type: ignore[method-assign]
        self._started = self.clock.seconds()
        self._init_login()
        self._busy: defer.Deferred[Any] | None = None
        self._lost = False
        self._producer: _MessageProducer | None = None
        self._end = "Connection closed"
        self._paused = self._draining = False
        self._unsent_wait: UnsentWait | None = None  # while more than MAX_UNSENT is unsent
        self._stats = {"top": 0, "top_bytes": 0, "retr": 0, "retr_bytes": 0, "del": 0}
        with contextlib.suppress(AttributeError, NotImplementedError):
            self.transport.setTcpNoDelay(True)

    def reply(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8", "replace")
        self.transport.write(line + b"\r\n")

    # -- command pipeline: one command at a time, later ones wait in order --

    delimiter = b"\n"  # lines end in CRLF, but a bare LF (telnet, nc) is accepted like Dovecot
    MAX_LENGTH = 16384  # the longest command line (an AUTH response included)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply(b"-ERR Input line too long.")
        self._quit = True
        self.transport.loseConnection()

    splice: Any = None  # after a hand-off to an agent: where the client's bytes go

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.up(data)
            return
        self._tls_cut = False  # a new read: after STLS, this is decrypted input
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self.mbox is None:
            self._login_deadlines.command()
        line = line[:-1] if line.endswith(b"\r") else line
        if self._quit or self._tls_cut:
            return
        self._queue.append(line)
        if len(self._queue) > 100 and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        self._drain()

    def _drain(self) -> None:
        """Run queued commands in order, each after the previous one's reply (a loop, not a
        recursion: a pipelined burst of commands answered at once must not grow the stack)."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and self._busy is None and not (self._quit or self._lost):
                if self._unsent_wait is not None or unsent(self.transport) > MAX_UNSENT:
                    self._hold_while_unsent()
                    return
                self._run(self._queue.pop(0))
        finally:
            self._draining = False
        if not self._queue and self._paused and not self._lost:
            self._paused = False
            self.transport.resumeProducing()

    def _hold_while_unsent(self) -> None:
        """Run (and read) no more commands while the client leaves more than MAX_UNSENT of
        replies unread (S5)."""
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        if self._unsent_wait is None:
            self._unsent_wait = UnsentWait(self.transport, self.callLater, self._all_but_sent)

    def _all_but_sent(self) -> None:
        self._unsent_wait = None
        self._drain()

    def _run(self, line: bytes) -> None:
        try:
            result = self.dispatch(line)
        except Exception:  # one bad command must not end the session
            log.failure("POP3 command failed")
            result = None
            self.reply(b"-ERR [SYS/TEMP] Internal error occurred.")
        if isinstance(result, defer.Deferred):
            self._busy = result
            result.addErrback(self._internal_error)
            result.addBoth(self._done)

    def _internal_error(self, failure: Failure) -> None:
        log.failure("POP3 command failed", failure)
        if not self._lost:
            self.reply(b"-ERR [SYS/TEMP] Internal error occurred.")

    def _done(self, _: Any) -> None:
        self._busy = None
        if self._lost:
            self._finish()
        else:
            self._drain()

    def dispatch(self, line: bytes) -> Any:
        if self._sasl is not None:
            return self.sasl_response(line)
        command, _, rest = line.partition(b" ")
        command = command.upper()
        allowed = MAIL_COMMANDS if self.mbox is not None else AUTH_COMMANDS
        if not self.limits_command(command in allowed):
            return None
        if command not in allowed:
            if self.mbox is None and command in MAIL_COMMANDS:
                return self.reply(b"-ERR Unknown command: not logged in.")
            return self.reply(b"-ERR Unknown command.")
        handler = getattr(self, "do_" + command.decode("ascii"))
        if command == b"PASS":
            return handler(rest)
        return handler(*rest.split())

    # -- TRANSACTION state --

    def _index(self, arg: bytes) -> int | None:
        """The 0-based index of a live message, or None after sending -ERR."""
        if not arg.isdigit():
            self.reply(b"-ERR Invalid message number: " + arg[:40])
            return None
        index = int(arg) - 1
        try:
            self.mbox.check_index(index)
        except ValueError as e:
            self.reply("-ERR " + str(e))
            return None
        return index

    def _arity(self, args: tuple[bytes, ...], low: int, high: int) -> bool:
        if low <= len(args) <= high:
            return True
        self.reply(b"-ERR Wrong number of arguments.")
        return False

    def _live(self) -> list[tuple[int, int]]:
        return [(n, s) for n, s in enumerate(self.mbox.sizes) if n not in self.mbox.deleted]

    def do_STAT(self, *args: bytes) -> None:
        if self._arity(args, 0, 0):
            live = self._live()
            self.reply(b"+OK %d %d" % (len(live), sum(s for _, s in live)))

    def do_LIST(self, *args: bytes) -> None:
        if not self._arity(args, 0, 1):
            return
        if args:
            index = self._index(args[0])
            if index is not None:
                self.reply(b"+OK %d %d" % (index + 1, self.mbox.sizes[index]))
            return
        live = self._live()
        lines = [b"+OK %d messages:" % len(live)] + [b"%d %d" % (n + 1, s) for n, s in live]
        self.transport.write(b"".join(x + b"\r\n" for x in [*lines, b"."]))

    def do_UIDL(self, *args: bytes) -> None:
        if not self._arity(args, 0, 1):
            return
        if args:
            index = self._index(args[0])
            if index is not None:
                self.reply(f"+OK {index + 1} {self.mbox.uidl(index, self._uidl_format())}")
            return
        live = [n for n in range(len(self.mbox)) if n not in self.mbox.deleted]
        template = self._uidl_format()
        lines = ["+OK"] + [f"{n + 1} {self.mbox.uidl(n, template)}" for n in live] + ["."]
        self.transport.write("".join(x + "\r\n" for x in lines).encode("ascii"))

    def _uidl_format(self) -> str:
        """``[mailbox] pop3_uidl_format`` (checked when the configuration was read)."""
        return self.config.mailbox.pop3_uidl_format

    def do_RETR(self, *args: bytes) -> Any:
        if self._arity(args, 1, 1):
            return self._send_message(args[0], None)
        return None

    def do_TOP(self, *args: bytes) -> Any:
        if not self._arity(args, 2, 2):
            return None
        if not args[1].isdigit():
            return self.reply(b"-ERR Invalid number of lines: " + args[1][:40])
        return self._send_message(args[0], int(args[1]))

    def _send_message(self, number: bytes, top_lines: int | None) -> Any:
        """RETR (``top_lines`` None) or TOP: the +OK line, the dot-stuffed text, the final dot."""
        index = self._index(number)
        if index is None:
            return None

        def send(wire: bytes) -> Any:
            kind = "retr" if top_lines is None else "top"
            if top_lines is not None:
                wire = top_of(wire, top_lines)
            self._stats[kind] += 1
            self._stats[kind + "_bytes"] += len(wire)
            self.reply(b"+OK %d octets" % len(wire) if top_lines is None else b"+OK")
            producer = self._producer = _MessageProducer(self, dot_stuff(wire))
            self.transport.registerProducer(producer, False)
            return producer.done

        return self.mbox.read_wire(index).addCallbacks(send, self._read_failed)

    def _read_failed(self, failure: Failure) -> None:
        if failure.check(UnknownUID):
            return self.reply(b"-ERR Message is no longer available (deleted by another client).")
        log.failure("POP3 read failed for {user}", failure, user=self._login_user)
        self.reply(b"-ERR [SYS/TEMP] Couldn't read the message.")

    def do_DELE(self, *args: bytes) -> None:
        if self._arity(args, 1, 1):
            index = self._index(args[0])
            if index is not None:
                self.mbox.deleted.add(index)
                self.reply(b"+OK Marked to be deleted.")

    def do_RSET(self, *args: bytes) -> None:
        if self._arity(args, 0, 0):
            self.mbox.deleted.clear()
            self.reply(b"+OK")

    def do_NOOP(self, *args: bytes) -> None:
        if self._arity(args, 0, 0):
            self.reply(b"+OK")

    def do_QUIT(self, *_: bytes) -> Any:
        self._quit = True
        self._end = "Logged out"
        if self.slot is not None:  # the session is over (a TLS close may take longer)
            self.slot.release()
        if self.mbox is None:
            self.reply(b"+OK Logging out.")
            self.transport.loseConnection()
            return None

        def done(removed: list[int]) -> None:
            self._stats["del"] = len(removed)
            self.reply(b"+OK Logging out, messages deleted." if removed else b"+OK Logging out.")

        def failed(failure: Failure) -> None:
            log.failure("POP3 QUIT could not expunge for {user}", failure, user=self._login_user)
            self._end = "Logged out (expunge failed)"
            self.reply(b"-ERR [SYS/TEMP] Couldn't delete the messages; none were deleted.")

        d = self.mbox.commit().addCallbacks(done, failed)
        d.addBoth(lambda _: self.transport.loseConnection())
        return d

    # -- end of the connection --

    def timeoutConnection(self) -> None:
        self._end = "Disconnected for inactivity"
        if self._producer is not None and not self._producer.done.called:
            # A client that stopped reading a message: a clean close would wait for it forever.
            self.transport.abortConnection()
            return
        self.reply(b"-ERR Disconnected for inactivity.")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        if self.splice is not None:
            self.splice.client_lost()
        self.setTimeout(None)
        self._login_deadlines.stop()
        self._queue.clear()
        if self.slot is not None:
            self.slot.release()
        if self._unsent_wait is not None:
            self._unsent_wait.cancel()
        # Work in flight (a login, a store read or QUIT's expunge) runs to its end before the
        # mailbox is closed; only a message being sent stops at once.
        if self._producer is not None:
            self._producer.stopProducing()
        if self._busy is None:
            self._finish()

    def _finish(self) -> None:
        if self.handed_off:  # the agent that took the session logs its end
            return
        secs = int(self.clock.seconds() - self._started)
        if self.mbox is None:
            if self._failures:
                what = (f"auth failed, {self._failures} attempts in {secs} secs): "
                        f"user=<{self._login_user}>, method={self._login_method}")
            else:
                what = f"no auth attempts in {secs} secs): user=<>"
            end = "Disconnected: Inactivity" if self._end.endswith("inactivity") else "Disconnected"
            self.maillog.write("pop3-login", f"{end} ({what}, rip={self.rip}, lip={self.lip}")
            return
        s, mbox = self._stats, self.mbox
        size = sum(mbox.sizes)
        end = self._end if self._end.startswith("Disconnected") else "Disconnected: " + self._end
        self.maillog.write(f"pop3({self._login_user})", f"{end} top={s['top']}/{s['top_bytes']}, "
                                   f"retr={s['retr']}/{s['retr_bytes']}, "
                                   f"del={s['del']}/{len(mbox)}, size={size}, "
                                   f"user=<{self._login_user}>, rip={self.rip}")
        self.mbox = None
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()


class POP3Factory(protocol.ServerFactory):
    """Builds POP3 sessions: ``POP3Factory(config, portal, maillog, clock, server_tls=None,
    implicit_tls=False)``.

    ``server_tls`` (a ``mailsuite.tls.ServerTLS``) enables STLS; ``implicit_tls`` marks the
    sessions of port 995, which tap.py wraps in TLS from the first byte. Plaintext USER/PASS
    and AUTH PLAIN/LOGIN follow Dovecot's ``disable_plaintext_auth`` (``sasl.plaintext_ok``).
    """

    protocol = POP3Server  # type: ignore[assignment]
    noisy = False

    def __init__(self, config: Config, portal: Any, maillog: Any, clock: Any,
                 server_tls: Any = None, implicit_tls: bool = False, policy: Any = None,
                 limits: Limits | None = None) -> None:
        """``clock``: an IReactorTime for timeouts and the failed-login delay (tap.py's reactor).
        ``policy``: a ``mailsuite.auth.policy.AuthPolicy`` applied to every login, or None.
        ``limits``: the server's mailsuite.limits.Limits, shared with 995 (None: its own)."""
        self.config, self.portal, self.maillog, self.clock = config, portal, maillog, clock
        self.server_tls, self.implicit_tls = server_tls, implicit_tls
        self.policy = policy
        self.limits = limits or Limits(config.mail, maillog, clock)

    def buildProtocol(self, addr: Any) -> POP3Server:  # type: ignore[override]
        p = self.protocol()
        p.factory = self  # type: ignore[assignment]
        p.portal, p.maillog, p.clock, p.config = self.portal, self.maillog, self.clock, self.config
        if self.policy is not None:
            p.portal = self.policy.guard(self.portal, host_of(addr), "pop3")
        p.server_tls, p.secure = self.server_tls, self.implicit_tls
        p.limits = self.limits
        return p
