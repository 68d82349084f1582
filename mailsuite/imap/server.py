"""The IMAP server (IMAP4rev1 and IMAP4rev2): Twisted's ``IMAP4Server`` with our own command
reader and handlers (each extension a mixin in its own module; see ``general.py``).

What is reused from Twisted: LineReceiver, the timeout mixin, response helpers, CAPABILITY
formatting; none of its command dispatch.
What is ours (and why, see ../shared/TWISTED.md):
- STARTTLS, LOGIN and AUTHENTICATE (``login.ImapLogin``: SASL-IR, LOGINDISABLED, the plaintext
  rule, the login policy, the imap-login log lines); AUTHENTICATE's continuation lines come
  through the reader below;
- the command reader (``reader.CommandReader``, with ``parser``): a command is assembled with
  its literals ({N} and LITERAL+ {N+}) before it is parsed, so any argument may be a literal
  (SEARCH, APPEND, LOGIN, CREATE);
- strict command ordering: reading pauses while a command runs, so pipelined commands are
  answered in order (upstream #9282);
- every command handler (``general.GeneralCommands``, ``folders.FolderCommands``,
  ``selected.SelectedCommands`` and below);
- updates from other sessions, SMTP and POP3 (EXISTS / EXPUNGE / FETCH FLAGS) sent only where
  RFC 3501 7.4.1 allows: before the tagged reply of any command but FETCH, STORE, SEARCH, SORT
  and THREAD (which get no EXPUNGE: ``_NO_EXPUNGE``), and at once during IDLE (NOTIFY's and
  CONTEXT's events have their own rules: notify.py, context.py);
- IDLE (``idle.IdleCommands``) that only DONE ends, with ``* OK Still here`` every
  ``IDLE_KEEPALIVE`` seconds and no autologout while idling; new mail pushed by the store
  listener, and mail written by other programs noticed by a shared once-a-second refresh
  (``idle.IdlePoller``, the factory's);
- clean-up on connectionLost (listeners removed, mailboxes closed).

When the store is refreshed: SELECT/EXAMINE, NOOP, CHECK and (every second) during IDLE; before
every other command in the selected state too, which costs a ``stat`` of the mailbox when
nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure

from mailsuite import heap
from mailsuite.config import Config
from mailsuite.deadline import LoginDeadlines
from mailsuite.imap.append import AppendCommands
from mailsuite.imap.compress import CompressCommands, Deflate
from mailsuite.imap.context import ContextCommands
from mailsuite.imap.binary import BinaryCommands
from mailsuite.imap.condstore import CondstoreCommands
from mailsuite.imap.folders import FolderCommands
from mailsuite.imap.general import GeneralCommands
from mailsuite.imap.idle import IdleCommands, IdlePoller
from mailsuite.imap.limits import ImapLimits
from mailsuite.imap.listext import ListCommands
from mailsuite.imap.login import ImapLogin
from mailsuite.imap.notify import NotifyCommands
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.objectid import ObjectIdCommands
from mailsuite.imap.metadata import MetadataCommands
from mailsuite.imap.quota import QuotaCommands
from mailsuite.imap.qresync import QresyncCommands
from mailsuite.imap.parser import Cursor, ParseError
from mailsuite.imap.preview import PreviewCommands
from mailsuite.imap.reader import CommandReader
from mailsuite.imap.recent import RecentTracker
from mailsuite.imap.rev2 import Rev2Commands
from mailsuite.imap.savedate import SavedateCommands
from mailsuite.imap.selected import SelectedCommands
from mailsuite.imap.session import states
from mailsuite.imap.unauthenticate import UnauthenticateCommands
from mailsuite.imap.status import StatusCommands
from mailsuite.imap.utf8 import Utf8Commands
from mailsuite.imap.sort import SortCommands
from mailsuite.limits import Limits
from mailsuite.net import MAX_UNSENT, UnsentWait, host_of, unsent, write_now
from mailsuite.store.interfaces import (
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
    StoreError,
    StoreRefused,
)

log = Logger()

_NO_EXPUNGE = {b"FETCH", b"STORE", b"SEARCH", b"UID FETCH", b"UID STORE", b"UID SEARCH",
               b"SORT", b"UID SORT", b"THREAD", b"UID THREAD"}  # RFC 5256: as SEARCH
#: COMPRESS too: run in the read that brought it, so what was pipelined behind it is inflated
_NO_REFRESH = {b"LOGOUT", b"CAPABILITY", b"NOOP", b"CHECK", b"IDLE", b"SELECT", b"EXAMINE",
               b"COMPRESS"}
#: a command within this many seconds of a refresh that found the file unchanged skips its own
#: (a burst of FETCHes costs one stat, not one each): mail other programs write shows within
#: this, and at once at NOOP, CHECK, IDLE and SELECT, which always look
REFRESH_REUSE = 0.05
#: seconds a command ran for its freed heap to be given back after it (``_finished``)
SLOW_COMMAND = 0.2


# ignore[misc]: Twisted's IMAP4Server declares ``_onLogout = None`` (so typed None) and then
# assigns the realm's logout callable to it; ImapLogin types it as what it holds.
# ignore[override]: LineReceiver's MAX_LENGTH is CommandReader's property (what is left).
class IMAPServer(  # type: ignore[misc, override]
    CommandReader, ImapLogin, ImapLimits, GeneralCommands, NotifyCommands, FolderCommands,
    CondstoreCommands, QresyncCommands, SelectedCommands, AppendCommands, QuotaCommands,
    IdleCommands, UnauthenticateCommands, ListCommands, StatusCommands, ObjectIdCommands,
    CompressCommands, MetadataCommands, Utf8Commands, BinaryCommands, PreviewCommands,
    SortCommands, Rev2Commands, SavedateCommands, ContextCommands,
    imap4.IMAP4Server,
):
    """One IMAP connection. ``clock`` (an IReactorTime) drives the autologout and IDLE timers
    and tells the time; ``recent`` and ``idle_poller`` are shared by the sessions of a server
    (its factories'; a session alone gets its own). STARTTLS, LOGIN and AUTHENTICATE are
    ``ImapLogin``'s."""

    IDENT = b"mailsuite ready."
    splice: Any = None  # after a hand-off to an agent: where the client's bytes go
    _deflate: Deflate | None = None  # after COMPRESS DEFLATE (compress.py)
    timeOut = 30 * 60  # RFC 3501 5.4: an autologout timer must be at least 30 minutes
    POSTAUTH_TIMEOUT = 30 * 60

    def __init__(
        self,
        config: Config,
        portal: Any,
        maillog: Any,
        clock: Any,
        recent: RecentTracker | None = None,
        idle_poller: IdlePoller | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.portal = portal
        self.maillog = maillog
        self.clock = clock
        self.recent = RecentTracker() if recent is None else recent
        self.idle_poller = IdlePoller() if idle_poller is None else idle_poller
        self.view: ImapMailboxView | None = None
        self._corked: list[bytes] | None = None
        self._quiet_since = -REFRESH_REUSE  # when a refresh before a command last found nothing
        self.user: str | None = None
        self.enabled: set[bytes] = set()  # ENABLE's (general.py)
        self._in_flight = False
        #: a tagged reply waiting for CONTEXT's evaluations (context.py: context_running)
        self._held_reply: tuple[bytes, bytes | None, bytes | None] | None = None
        self._unsent_wait: UnsentWait | None = None  # while more than MAX_UNSENT is unsent
        self._command = b""
        self._lost = False
        self._logged_out = False
        self._auth_failures = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._parts: list[bytes] = []  # the command being assembled (lines and literals)
        self._assembled = 0  # its bytes that count against _command_limit()
        self._message_bytes = 0  # its APPEND message literals let past the limit
        self._literal_left = 0
        self._idle_tag: bytes | None = None
        self._keepalive: Any = None

    # -- connection ----------------------------------------------------------------------------
    def callLater(self, period: float, func: Callable[[], Any]) -> Any:  # TimeoutMixin hook
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        if interfaces.ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self._started = self.clock.seconds()
        auth = self.config.auth  # the autologout starts at login; before it, Dovecot's limits:
        self._login_deadlines = LoginDeadlines(
            self.clock, auth.login_idle_timeout, auth.login_timeout, self.login_timed_out)
        if self.limits_connect():  # [imap] process_limit
            super().connectionMade()
            self.setTimeout(None)
        else:
            self._login_deadlines.stop()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        if self.splice is not None:
            self.splice.client_lost()
        self.setTimeout(None)
        self.limits_release()
        self._login_deadlines.stop()
        if self._unsent_wait is not None:
            self._unsent_wait.cancel()
        self._stop_idle()
        self._notify_stop()
        self._close_view()
        if self._onLogout:
            self._onLogout()
            self._onLogout = None
        if self.user is not None and not self._logged_out:
            self.maillog.write(
                f"imap({self.user})",
                f"Disconnected: Connection closed in={self._bytes_in} out={self._bytes_out}, "
                f"user=<{self.user}>, rip={self._rip()}",
            )

    def timeoutConnection(self) -> None:
        if self._idle_tag is not None:
            return  # an IDLEing client is never timed out (Outlook does not recover)
        self.sendLine(b"* BYE Disconnected for inactivity.")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"* BYE Command line too long.")
        self.uncork()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Handle the bytes of one read; what the commands answer is sent at once when the
        outermost call returns. Twisted calls this again from inside (``resumeProducing``,
        when a command finishes while the read is handled): the inner call only queues, so no
        reply of a pipelined command is dropped or reordered (issue 9, IMAP 1)."""
        if self.splice is not None:
            self.splice.up(data)
            return
        self._bytes_in += len(data)
        if self.transport.disconnecting:
            return  # refused (a limit) or logged out: nothing more is read
        if self._deflate is not None:  # compress.py: what the reader reads is inflated
            inflated = self.inflate(data)
            if inflated is None:
                return
            data = inflated
        if self._corked is not None:
            super().dataReceived(data)
            return
        self._corked = []
        try:
            super().dataReceived(data)
        finally:
            self.uncork()

    def sendLine(self, line: bytes) -> None:
        self._write(line + b"\r\n")

    def _write(self, data: bytes) -> None:
        self._bytes_out += len(data)
        if self._corked is not None:
            self._corked.append(data)
        else:
            self.transport.write(self.deflated(data))
            self._hold_while_unsent()

    def uncork(self) -> None:
        """Send what the commands answered while the received bytes were handled, at once:
        straight to the socket when the transport has nothing queued (a plain TCP connection),
        saving the reactor round (poll for writability, two epoll_ctl) per answer."""
        out, self._corked = self._corked, None
        if not out:
            return
        data = self.deflated(b"".join(out))
        if not self._lost:
            write_now(self.transport, data)
            self._hold_while_unsent()
        else:
            self.transport.write(data)

    def _hold_while_unsent(self) -> None:
        """Read no more commands while the client leaves more than MAX_UNSENT unread."""
        if self._lost or self._unsent_wait is not None or unsent(self.transport) <= MAX_UNSENT:
            return
        if not self.paused:
            self.pauseProducing()
        self._unsent_wait = UnsentWait(self.transport, self.callLater, self._all_but_sent)

    def _all_but_sent(self) -> None:
        self._unsent_wait = None
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read on, unless a command is running (_pause_while_busy) or replies are unsent."""
        busy = self._in_flight and self.parseState == "command"
        if self.paused and not self._lost and not busy and self._unsent_wait is None:
            self.resumeProducing()

    def _rip(self) -> str:
        return host_of(self.transport.getPeer())

    def _lip(self) -> str:
        return host_of(self.transport.getHost())

    def _dispatch(self, command: bytes) -> None:
        tag, _, rest = command.partition(b" ")
        name, sep, rest = rest.partition(b" ")
        rest = sep + rest  # handlers read the space before each argument
        name = name.upper()
        if not tag or not name or tag == b"*" or tag == b"+":
            self.sendBadResponse(None, b"Missing tag or command.")
            return
        if not self.limits_command():
            return
        self._command = name
        if self.state == "unauth":
            self._login_deadlines.command()
        if name == b"UID":
            self._command = b"UID " + rest[1:].partition(b" ")[0].upper()
        self._in_flight = True
        try:
            self._run_command(tag, name, rest)
        except Exception:  # a bug answers BAD and the session goes on
            log.failure("IMAP command failed")
            self.parseState = "command"
            self.sendBadResponse(tag, b"Internal server error")
        self._pause_while_busy()

    def _pause_while_busy(self) -> None:
        """Read nothing more until the running command has its tagged reply (see _respond)."""
        if (self._in_flight and self.parseState == "command" and not self.paused
                and not self._lost and not self.transport.disconnecting):
            self.pauseProducing()

    def _run_command(self, tag: bytes, name: bytes, rest: bytes) -> None:
        handler = getattr(self, "cmd_" + name.decode("ascii", "replace").replace(".", "_"), None)
        allowed = getattr(handler, "imap_states", ())
        if handler is None:
            self.sendBadResponse(tag, b"Unknown command.")
            return
        if self.state not in allowed:
            why = b"No mailbox selected." if "select" in allowed and self.state == "auth" else (
                b"Log in first." if self.state == "unauth" else b"Command not allowed now.")
            self.sendBadResponse(tag, why)
            return
        cursor = Cursor(rest)
        cursor.utf8 = self.utf8_names  # ENABLE UTF8=ACCEPT (utf8.py)
        refresh = (
            self.view is not None
            and name not in _NO_REFRESH
            and self._command not in _NO_REFRESH
            and not 0 <= self.clock.seconds() - self._quiet_since < REFRESH_REUSE
        )

        async def run() -> None:
            assert self.view is not None
            try:
                changes = await self.view.mailbox.refresh()
                self._quiet_since = -REFRESH_REUSE if changes else self.clock.seconds()
            except StoreRefused as e:
                log.warn("refresh before {command} refused: {why}", command=name, why=e)
            except StoreError:
                log.failure("refresh before {command} failed", command=name)
            result = handler(tag, cursor)
            if isinstance(result, Coroutine):
                await result

        if not refresh:
            try:
                result = handler(tag, cursor)
            except Exception:  # ParseError, store errors: a tagged reply
                self._failed(Failure(), tag)
                return
            if not isinstance(result, Coroutine):
                return
            coroutine = result
        else:
            coroutine = run()
        started = self.clock.seconds()
        d = defer.ensureDeferred(coroutine).addErrback(self._failed, tag)
        d.addCallback(self._finished, started)

    def _finished(self, _: Any, started: float) -> None:
        """A long command on a big mailbox is over: its freed heap given back to the system
        once the session is quiet (heap.release_when_quiet)."""
        if self.view is not None and self.clock.seconds() - started >= SLOW_COMMAND:
            heap.release_when_quiet(self.clock, self.view.count())

    def _failed(self, failure: Any, tag: bytes) -> None:
        if self._lost:
            return
        if failure.check(ParseError):
            self.sendBadResponse(
                tag, b"Error in arguments: " + str(failure.value).encode("utf-8", "replace")
            )
        elif failure.check(MailboxNotFound):
            self.sendNegativeResponse(tag, b"[NONEXISTENT] Mailbox doesn't exist.")
        elif failure.check(MailboxExists):
            self.sendNegativeResponse(tag, b"[ALREADYEXISTS] Mailbox already exists.")
        elif failure.check(InvalidMailboxName):
            self.sendNegativeResponse(
                tag, b"[CANNOT] " + str(failure.value).encode("utf-8", "replace")
            )
        elif failure.check(MailboxHasChildren):
            self.sendNegativeResponse(tag, b"[CANNOT] Mailbox has children, delete them first.")
        elif failure.check(StoreRefused):  # one line: a symlinked folder, no home...
            log.warn("IMAP {command} refused: {why}", command=self._command, why=failure.value)
            code = failure.value.code.encode("ascii")
            self.sendNegativeResponse(
                tag, b"[%s] " % code + str(failure.value).encode("utf-8", "replace")
            )
        elif failure.check(StoreError):
            log.failure("IMAP {command} failed", failure, command=self._command)
            self.sendNegativeResponse(
                tag, b"[UNAVAILABLE] " + str(failure.value).encode("utf-8", "replace")
            )
        else:
            log.failure("IMAP {command} failed", failure, command=self._command)
            self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error")

    def _respond(self, state: bytes, tag: bytes | None, message: bytes | None) -> None:
        final = tag not in (None, b"*") and state in (b"OK", b"NO", b"BAD")
        flush = final
        if final and self._held_reply is None and self._contexts:
            self.flush_updates(allow_expunge=self._command not in _NO_EXPUNGE)
            if self.context_running() and not self._lost:
                self._held_reply = (state, tag, message)  # CONTEXT's updates first (context.py)
                return
            flush = False  # just done
        self._respond_now(state, tag, message, final, flush)

    def release_reply(self) -> None:
        held, self._held_reply = self._held_reply, None
        if held is not None and not self._lost:
            self._respond_now(*held, True, True)

    def _respond_now(self, state: bytes, tag: bytes | None, message: bytes | None,
                     final: bool, flush: bool) -> None:
        if flush:
            self.flush_updates(allow_expunge=self._command not in _NO_EXPUNGE)
        super()._respond(state, tag, message)
        if final:
            self._in_flight = False
            self._resume_reading()

    def flush_updates(self, allow_expunge: bool = True) -> None:
        """Send the EXISTS / EXPUNGE / FETCH FLAGS owed to the client."""
        if self.view is not None and not self._lost:
            for update in (self.context_before()  # CONTEXT's ADDTO, REMOVEFROM (context.py)
                           + self.view.take_updates(allow_expunge=allow_expunge)
                           + self.context_after()):
                self.sendLine(b"* " + update)
        self.notify_flush()  # NOTIFY's notifications that waited (notify.py)

    # -- any state (CAPABILITY, ID, ENABLE, NAMESPACE: general.GeneralCommands) -----------------
    @states("unauth", "auth", "select")
    def cmd_LOGOUT(self, tag: bytes, args: Cursor) -> None:
        # nothing but the tagged OK may follow BYE: the mailbox is let go first, so no update
        # owed to the client (EXISTS, FETCH FLAGS) and no autologout comes after it
        self.setTimeout(None)
        self._notify_stop()  # no NOTIFY STATUS or LIST after BYE either
        self._close_view()
        self.sendUntaggedResponse(b"BYE Logging out")
        self.sendPositiveResponse(tag, b"Logout completed.")
        if self.user is not None and not self._logged_out:
            self._logged_out = True
            self.maillog.write(
                f"imap({self.user})",
                f"Logged out in={self._bytes_in} out={self._bytes_out}, "
                f"user=<{self.user}>, rip={self._rip()}",
            )
        self.limits_release()  # the session is over (a TLS close may take longer)
        self.uncork()
        self.transport.loseConnection()

    @states("unauth", "auth", "select")
    async def cmd_NOOP(self, tag: bytes, args: Cursor) -> None:
        args.end()
        if self.view is not None:
            await self.view.mailbox.refresh()
        self.sendPositiveResponse(tag, self._command + b" completed.")

    @states("select")
    async def cmd_CHECK(self, tag: bytes, args: Cursor) -> None:
        await self.cmd_NOOP(tag, args)

    # -- not authenticated (the commands are ImapLogin's) ----------------------------------------
    async def prepare_session(self, avatar: Any) -> None:
        """Before a login's OK: the special-use folders exist from the first login (issue 3
        item 3). Best effort: a login that succeeded stays logged in when they cannot be made
        (an NSS account without a home, say); the next LIST tries again."""
        if isinstance(avatar, ImapAccount):
            try:
                await avatar.list_mailboxes()
            except defer.CancelledError:
                raise
            except Exception:  # StoreError, or OSError from the folder tree
                log.failure("listing the mailboxes of {user} failed", user=self.user)

    def _close_view(self) -> None:
        self.context_end()  # CONTEXT's UPDATE contexts end with the mailbox (context.py)
        if self.view is not None:
            view, self.view = self.view, None
            if self._idle_tag is not None:
                view.on_change = None
                self.idle_poller.remove(view.mailbox, self)
            if isinstance(self.account, ImapAccount):
                self.account.close_view(view)
            else:
                view.close()
        if self.state == "select":
            self.state = "auth"


class IMAPFactory(protocol.ServerFactory):
    """Builds ``IMAPServer`` connections (ports 143 and 993); ``clock``: tap.py's reactor."""

    protocol = IMAPServer

    def __init__(
        self,
        config: Config,
        portal: Any,
        maillog: Any,
        clock: Any,
        server_tls: Any = None,
        implicit_tls: bool = False,
        policy: Any = None,
        recent: RecentTracker | None = None,
        idle_poller: IdlePoller | None = None,
        limits: Limits | None = None,
    ) -> None:
        """``server_tls`` (a mailsuite.tls.ServerTLS) enables STARTTLS; ``implicit_tls`` marks
        the sessions of port 993, which tap.py wraps in TLS from the first byte; ``policy`` (a
        mailsuite.auth.policy.AuthPolicy) guards every login of the sessions. ``recent`` (which
        session a message is recent in) and ``idle_poller`` are shared by the sessions; the
        factories of one server must share them too (default: the factory makes its own), as
        ``limits`` (mailsuite.limits.Limits: process_limit and user+IP counts)."""
        self.config = config
        self.portal = portal
        self.maillog = maillog
        self.clock = clock
        self.server_tls = server_tls
        self.implicit_tls = implicit_tls
        self.policy = policy
        self.recent = RecentTracker() if recent is None else recent
        self.idle_poller = IdlePoller() if idle_poller is None else idle_poller
        self.limits = limits or Limits(config.mail, maillog, clock)

    def buildProtocol(self, addr: Any) -> IMAPServer:
        portal = self.portal
        if self.policy is not None:
            portal = self.policy.guard(portal, host_of(addr), "imap")
        # not abstract: what the mixins declare in session.Session, IMAP4Server provides (mypy
        # sees that Protocol first: a base of the mixins, at type-checking time only)
        proto = IMAPServer(  # type: ignore[abstract]
            self.config, portal, self.maillog, self.clock, self.recent, self.idle_poller)
        proto.factory = self
        proto.server_tls, proto.secure = self.server_tls, self.implicit_tls
        proto.limits = self.limits
        return proto
