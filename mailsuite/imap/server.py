"""The IMAP4rev1 server: Twisted's ``IMAP4Server`` with our own handlers for the selected state.

What is reused from Twisted: line/literal parsing, the dispatch tables, CAPABILITY, LOGOUT.
What is ours (and why, see ../shared/TWISTED.md): STARTTLS, LOGIN and AUTHENTICATE (login.py:
SASL-IR, LOGINDISABLED, logging), SELECT/EXAMINE
(response codes), FETCH (raw bytes, partials, \\Seen, RFC822.PEEK), STORE, SEARCH, EXPUNGE,
CLOSE, UNSELECT, LIST/LSUB, NOOP/CHECK (updates from other sessions), strict command ordering
(pipelined commands are answered in order: reading pauses while a command is running), and
clean-up on connectionLost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.mail import imap4

from mailsuite.imap.fetch import FetchItem, FetchSyntaxError, fetch_responses, parse_fetch_items
from mailsuite.imap.login import ImapLogin
from mailsuite.imap.mailbox import ImapAccount, ImapMailboxView, format_flags
from mailsuite.imap.search import (
    SearchSyntaxError,
    parse_search,
    parse_sequence_set,
    run_search,
    tokenize,
)
from mailsuite.net import host_of
from mailsuite.store.interfaces import SYSTEM_FLAGS, MailboxNotFound

log = Logger()

_NO_EXPUNGE = {b"FETCH", b"STORE", b"SEARCH"}  # RFC 3501 7.4.1: no EXPUNGE while answering these
_SYSTEM = {f.upper(): f for f in SYSTEM_FLAGS}


def _mailbox_name(raw: bytes) -> str:
    try:
        return raw.decode("imap4-utf-7")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


class IMAPServer(ImapLogin, imap4.IMAP4Server):
    """One IMAP connection. ``clock`` (an IReactorTime) drives the autologout timer; STARTTLS,
    LOGIN and AUTHENTICATE are ``ImapLogin``'s."""

    IDENT = b"mailsuite ready."
    timeOut = 30 * 60  # RFC 3501 5.4: an autologout timer must be at least 30 minutes
    POSTAUTH_TIMEOUT = 30 * 60

    def __init__(self, config: Any, portal: Any, maillog: Any, clock: Any = None) -> None:
        super().__init__()
        self.config = config
        self.portal = portal
        self.maillog = maillog
        if clock is not None:
            self.callLater = clock.callLater
        self.view: ImapMailboxView | None = None
        self.user: str | None = None
        self._in_flight = False
        self._command = b""
        self._lost = False
        self._logged_out = False
        self._auth_failures = 0
        self._bytes_in = 0
        self._bytes_out = 0

    # -- connection ----------------------------------------------------------------------------
    def connectionMade(self) -> None:
        if interfaces.ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        self.setTimeout(None)
        self._close_view()
        if self._onLogout:
            self._onLogout()
            self._onLogout = None
        if self.user is not None and not self._logged_out:
            self.maillog.write(
                "imap", f"Disconnected: Connection closed in={self._bytes_in} out={self._bytes_out}, "
                f"user=<{self.user}>, rip={self._rip()}",
            )

    def timeoutConnection(self) -> None:
        self.sendLine(b"* BYE Disconnected for inactivity.")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._bytes_in += len(data)
        super().dataReceived(data)

    def sendLine(self, line: bytes) -> None:
        self._write(line + b"\r\n")

    def _write(self, data: bytes) -> None:
        self._bytes_out += len(data)
        self.transport.write(data)

    def _rip(self) -> str:
        return host_of(self.transport.getPeer())

    def _lip(self) -> str:
        return host_of(self.transport.getHost())

    # -- one command at a time, answered in order ---------------------------------------------
    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self.parseState == "command":
            parts = line.split(None, 2)
            self._command = parts[1].upper() if len(parts) > 1 else b""
            if self._command == b"UID" and len(parts) > 2:
                self._command = b"UID " + parts[2].split(None, 1)[0].upper()
            if not line.strip():
                self.sendBadResponse(None, b"Empty command line")
                return
            self._in_flight = True
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:  # noqa: BLE001 - a bug answers BAD and the session goes on
            log.failure("IMAP command failed")
            self.parseState = "command"
            self._respond(b"BAD", line.split(b" ", 1)[0] or b"*", b"Internal server error")
        if self._in_flight and self.parseState == "command" and not self.paused and not self._lost:
            self.pauseProducing()

    def _respond(self, state: bytes, tag: bytes | None, message: bytes | None) -> None:
        final = tag not in (None, b"*") and state in (b"OK", b"NO", b"BAD")
        if final and self.view is not None:
            for update in self.view.take_updates(allow_expunge=self._command not in _NO_EXPUNGE):
                self.sendLine(b"* " + update)
        super()._respond(state, tag, message)
        if final:
            self._in_flight = False
            if self.paused and not self._lost:
                self.resumeProducing()

    def _run(self, tag: bytes, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run an async handler; an unexpected failure becomes a tagged NO, never a hang."""

        def failed(failure: Any) -> None:
            log.failure("IMAP {command} failed", failure, command=self._command)
            if not self._lost:
                self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error")

        defer.ensureDeferred(work(tag, *args)).addErrback(failed)

    # -- capabilities, greeting ----------------------------------------------------------------
    def capabilities(self) -> dict[bytes, Any]:
        caps: dict[bytes, Any] = self.login_capabilities()
        for name in (b"ID", b"NAMESPACE", b"UNSELECT", b"CHILDREN"):
            caps[name] = None
        return caps

    # -- any state -----------------------------------------------------------------------------
    def do_LOGOUT(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"BYE Logging out")
        self.sendPositiveResponse(tag, b"Logout completed.")
        if self.user is not None and not self._logged_out:
            self._logged_out = True
            self.maillog.write(
                "imap", f"Logged out in={self._bytes_in} out={self._bytes_out}, user=<{self.user}>, rip={self._rip()}"
            )
        self.transport.loseConnection()

    unauth_LOGOUT = auth_LOGOUT = select_LOGOUT = (do_LOGOUT,)

    def do_NOOP(self, tag: bytes) -> None:
        self._run(tag, self._noop)

    async def _noop(self, tag: bytes) -> None:
        if self.view is not None:
            await self.view.mailbox.refresh()
        self.sendPositiveResponse(tag, self._command + b" completed.")

    unauth_NOOP = auth_NOOP = select_NOOP = select_CHECK = (do_NOOP,)

    def do_ID(self, tag: bytes, args: bytes) -> None:
        self.sendUntaggedResponse(b'ID ("name" "mailsuite")')
        self.sendPositiveResponse(tag, b"ID completed.")

    unauth_ID = auth_ID = select_ID = (do_ID, imap4.IMAP4Server.arg_line)

    # -- authenticated -------------------------------------------------------------------------
    def do_NAMESPACE(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b'NAMESPACE (("" "/")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed.")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)

    def do_LIST(self, tag: bytes, ref: bytes, pattern: bytes, command: bytes) -> None:
        account: ImapAccount = self.account
        if command == b"LIST" and pattern == b"":
            self.sendUntaggedResponse(b'LIST (\\Noselect) "/" ""')
        else:
            for name, attributes in account.list_mailboxes(_mailbox_name(ref), _mailbox_name(pattern)):
                attrs = " ".join(attributes).encode("ascii")
                self.sendUntaggedResponse(b'%s (%s) "/" %s' % (command, attrs, name.encode("imap4-utf-7")))
        self.sendPositiveResponse(tag, command + b" completed.")

    _astring = imap4.IMAP4Server.arg_astring
    auth_LIST = select_LIST = (do_LIST, _astring, imap4.IMAP4Server.arg_finalastring, b"LIST")
    auth_LSUB = select_LSUB = (do_LIST, _astring, imap4.IMAP4Server.arg_finalastring, b"LSUB")

    def do_SELECT(self, tag: bytes, name: bytes, readonly: bool) -> None:
        self._run(tag, self._select, _mailbox_name(name), readonly)

    auth_SELECT = select_SELECT = (do_SELECT, imap4.IMAP4Server.arg_finalastring, False)
    auth_EXAMINE = select_EXAMINE = (do_SELECT, imap4.IMAP4Server.arg_finalastring, True)

    async def _select(self, tag: bytes, name: str, readonly: bool) -> None:
        self._close_view()
        account: ImapAccount = self.account
        try:
            view = await account.open_view(name, readonly)
        except MailboxNotFound:
            self.sendNegativeResponse(tag, b"Mailbox doesn't exist: " + name.encode("imap4-utf-7"))
            return
        if self._lost:
            account.close_view(view)
            return
        flags = format_flags(list(SYSTEM_FLAGS) + view.keywords())
        permanent = b"()" if readonly else flags[:-1] + b" \\*)"
        self.sendUntaggedResponse(b"FLAGS " + flags)
        self.sendUntaggedResponse(b"OK [PERMANENTFLAGS " + permanent + b"] Flags permitted.")
        self.sendUntaggedResponse(b"%d EXISTS" % view.count())
        self.sendUntaggedResponse(b"%d RECENT" % view.recent_count())
        unseen = view.first_unseen()
        if unseen is not None:
            self.sendUntaggedResponse(b"OK [UNSEEN %d] First unseen." % unseen)
        self.sendUntaggedResponse(b"OK [UIDVALIDITY %d] UIDs valid" % view.uid_validity)
        self.sendUntaggedResponse(b"OK [UIDNEXT %d] Predicted next UID" % view.uid_next)
        self.view, self.state = view, "select"
        mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
        self.sendPositiveResponse(tag, mode + (b" Examine" if readonly else b" Select") + b" completed.")

    def _close_view(self) -> None:
        if self.view is not None:
            view, self.view = self.view, None
            if isinstance(self.account, ImapAccount):
                self.account.close_view(view)
            else:
                view.close()
        if self.state == "select":
            self.state = "auth"

    # Commands not implemented yet answer "BAD Unsupported command" instead of half-working.
    auth_STATUS = select_STATUS = auth_APPEND = select_APPEND = select_COPY = None
    select_IDLE = None

    # -- selected ------------------------------------------------------------------------------
    def arg_seqset(self, line: bytes) -> tuple[Any, bytes]:
        text, _, rest = line.partition(b" ")
        try:
            return parse_sequence_set(text), rest
        except ValueError as e:
            raise imap4.IllegalClientResponse(str(e)) from None

    def do_UID(self, tag: bytes, command: bytes, line: bytes) -> None:
        command = command.upper()
        if command not in (b"FETCH", b"STORE", b"SEARCH"):
            self.sendBadResponse(tag, b"Unsupported UID command")
            return
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)

    def do_FETCH(self, tag: bytes, ranges: Any, text: bytes, uid: int = 0) -> None:
        self._run(tag, self._fetch, ranges, text, bool(uid))

    select_FETCH = (do_FETCH, arg_seqset, imap4.IMAP4Server.arg_line)

    def _targets(self, tag: bytes, ranges: Any, uid: bool) -> list[tuple[int, int]] | None:
        assert self.view is not None
        try:
            return self.view.resolve(ranges, uid)
        except ValueError:
            self.sendBadResponse(tag, b"Invalid messageset")
            return None

    async def _fetch(self, tag: bytes, ranges: Any, text: bytes, uid: bool) -> None:
        view = self.view
        assert view is not None
        try:
            items = parse_fetch_items(text)
        except FetchSyntaxError as e:
            self.sendBadResponse(tag, b"Error in FETCH: " + str(e).encode("ascii", "replace"))
            return
        targets = self._targets(tag, ranges, uid)
        if targets is None:
            return
        if uid and not any(i.name == "UID" for i in items):
            items.insert(0, FetchItem("UID"))
        seen_now: set[int] = set()
        if not view.readonly and any(i.sets_seen() for i in items):
            changes = {
                u: view.info(u).flags | {"\\Seen"}
                for _, u in targets
                if not view.is_expunged(u) and "\\Seen" not in view.info(u).flags
            }
            await view.set_flags(changes)
            seen_now = set(changes)
        missing = await fetch_responses(view, targets, items, seen_now, self._write, lambda: self._lost)
        label = b"UID FETCH" if uid else b"FETCH"
        if missing:
            self.sendNegativeResponse(tag, b"Some of the requested messages no longer exist.")
        else:
            self.sendPositiveResponse(tag, label + b" completed.")

    def do_STORE(self, tag: bytes, ranges: Any, mode: bytes, flags: bytes, uid: int = 0) -> None:
        self._run(tag, self._store, ranges, mode.upper(), flags, bool(uid))

    select_STORE = (do_STORE, arg_seqset, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)

    def _parse_flags(self, text: bytes) -> set[str]:
        text = text.strip()
        if text.startswith(b"(") and text.endswith(b")"):
            text = text[1:-1]
        flags: set[str] = set()
        for token in tokenize(text):
            value = token.value.decode("utf-8", "replace")
            if token.quoted or value in ("(", ")"):
                raise SearchSyntaxError(f"bad flag {value}")
            if value.startswith("\\"):
                if value.upper() == "\\RECENT":
                    continue  # \Recent cannot be set or cleared by a client
                if value.upper() not in _SYSTEM:
                    raise SearchSyntaxError(f"invalid system flag {value}")
                value = _SYSTEM[value.upper()]
            flags.add(value)
        return flags

    async def _store(self, tag: bytes, ranges: Any, mode: bytes, text: bytes, uid: bool) -> None:
        view = self.view
        assert view is not None
        silent = mode.endswith(b".SILENT")
        op = mode[: -len(b".SILENT")] if silent else mode
        if op not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            self.sendBadResponse(tag, b"Invalid STORE item")
            return
        try:
            flags = self._parse_flags(text)
        except SearchSyntaxError as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return
        if view.readonly:
            self.sendNegativeResponse(tag, b"Mailbox is read-only.")
            return
        targets = self._targets(tag, ranges, uid)
        if targets is None:
            return
        changes: dict[int, frozenset[str]] = {}
        for _, u in targets:
            if view.is_expunged(u):
                continue
            old = view.info(u).flags
            new = flags if op == b"FLAGS" else old | flags if op == b"+FLAGS" else old - flags
            if frozenset(new) != old:
                changes[u] = frozenset(new)
        await view.set_flags(changes)
        missing = False
        for seq, u in targets:
            if view.is_expunged(u):
                missing = True
            elif not silent:
                uid_part = b"UID %d " % u if uid else b""
                self._write(b"* %d FETCH (%sFLAGS %s)\r\n" % (seq, uid_part, format_flags(view.flags(u))))
        if missing:
            self.sendNegativeResponse(tag, b"Some of the requested messages no longer exist.")
        else:
            self.sendPositiveResponse(tag, (b"UID STORE" if uid else b"STORE") + b" completed.")

    def do_SEARCH(self, tag: bytes, text: bytes, uid: int = 0) -> None:
        self._run(tag, self._search, text, bool(uid))

    select_SEARCH = (do_SEARCH, imap4.IMAP4Server.arg_line)

    async def _search(self, tag: bytes, text: bytes, uid: bool) -> None:
        view = self.view
        assert view is not None
        try:
            charset, key = parse_search(text)
        except SearchSyntaxError as e:
            self.sendBadResponse(tag, b"Error in SEARCH: " + str(e).encode("utf-8", "replace"))
            return
        if charset not in (None, "UTF-8", "US-ASCII"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return
        found = await run_search(view, key, uid)
        self.sendUntaggedResponse(b"SEARCH" + b"".join(b" %d" % n for n in found))
        self.sendPositiveResponse(tag, (b"UID SEARCH" if uid else b"SEARCH") + b" completed.")

    def do_EXPUNGE(self, tag: bytes) -> None:
        self._run(tag, self._expunge)

    select_EXPUNGE = (do_EXPUNGE,)

    async def _expunge(self, tag: bytes) -> None:
        assert self.view is not None
        if self.view.readonly:
            self.sendNegativeResponse(tag, b"Mailbox is read-only.")
            return
        await self.view.expunge_deleted()
        self.sendPositiveResponse(tag, b"Expunge completed.")

    def do_CLOSE(self, tag: bytes) -> None:
        self._run(tag, self._close, True)

    def do_UNSELECT(self, tag: bytes) -> None:
        self._run(tag, self._close, False)

    select_CLOSE = (do_CLOSE,)
    select_UNSELECT = (do_UNSELECT,)

    async def _close(self, tag: bytes, expunge: bool) -> None:
        view = self.view
        assert view is not None
        if expunge and not view.readonly:
            await view.expunge_deleted()  # CLOSE sends no EXPUNGE responses
        self._close_view()
        self.sendPositiveResponse(tag, (b"Close" if expunge else b"Unselect") + b" completed.")


class IMAPFactory(protocol.ServerFactory):
    """Builds ``IMAPServer`` connections (port 143). ``clock`` defaults to the reactor."""

    protocol = IMAPServer

    def __init__(self, config: Any, portal: Any, maillog: Any, clock: Any = None,
                 server_tls: Any = None, implicit_tls: bool = False, policy: Any = None) -> None:
        """``server_tls`` (a mailsuite.tls.ServerTLS) enables STARTTLS; ``implicit_tls`` marks
        the sessions of port 993, which tap.py wraps in TLS from the first byte; ``policy`` (a
        mailsuite.authpolicy.AuthPolicy) guards every login of the sessions."""
        self.config = config
        self.portal = portal
        self.maillog = maillog
        self.clock = clock
        self.server_tls = server_tls
        self.implicit_tls = implicit_tls
        self.policy = policy

    def buildProtocol(self, addr: Any) -> IMAPServer:
        portal = self.portal
        if self.policy is not None:
            portal = self.policy.guard(portal, host_of(addr), "imap")
        proto = IMAPServer(self.config, portal, self.maillog, self.clock)
        proto.factory = self
        proto.server_tls, proto.secure = self.server_tls, self.implicit_tls
        return proto
