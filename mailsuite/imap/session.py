"""What the IMAP command mixins (``login.ImapLogin``, ``folders.FolderCommands``,
``selected.SelectedCommands``) use of the connection they are mixed into.

``server.IMAPServer`` provides all of it (from Twisted's ``IMAP4Server`` and its own code); the
mixins are typed against this ``Session`` instead of against the server, so no module imports
``server`` for its types and the server stays the one place that puts the pieces together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from mailsuite.config import Config
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.recent import RecentTracker
from mailsuite.maillog import MailLog


def states(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a ``cmd_*`` handler with the states it is allowed in."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.imap_states = names  # type: ignore[attr-defined]
        return f

    return mark


class Session(Protocol):
    """One IMAP connection as its command handlers see it."""

    # -- the connection ----------------------------------------------------------------------
    transport: Any  # an ITransport (ITLSTransport for STARTTLS)
    config: Config  # [imap] and [auth] are read
    portal: Any  # a twisted.cred Portal (guarded by the login policy)
    maillog: MailLog
    clock: Any  # an IReactorTime
    recent: RecentTracker  # \Recent, shared by every IMAP session of the server
    POSTAUTH_TIMEOUT: int
    _lost: bool  # the connection is gone: send nothing more
    _buffer: bytes  # received, not yet read (LineReceiver's)
    _command: bytes  # the name of the running command (``UID FETCH``)
    delimiter: bytes  # LineReceiver's
    line_mode: int  # LineReceiver's
    _login_deadlines: Any  # a mailsuite.deadline.LoginDeadlines, until login
    idle_poller: Any  # the idle.IdlePoller the server's sessions share

    # -- the state of the session --------------------------------------------------------------
    state: str  # unauth, auth, select
    parseState: str  # command, idle, sasl
    account: ImapAccount  # set by a login, before any command of the auth state runs
    user: str | None
    enabled: set[bytes]  # what ENABLE turned on (general.GeneralCommands)
    utf8_names: bool  # ENABLE UTF8=ACCEPT: mailbox names in UTF-8 (utf8.Utf8Commands)
    _onLogout: Any  # the realm's logout of the avatar, once logged in
    view: ImapMailboxView | None  # the selected mailbox

    # -- answering -------------------------------------------------------------------------------
    def sendLine(self, line: bytes) -> None: ...

    def _write(self, data: bytes) -> None: ...

    def uncork(self) -> None: ...

    def sendUntaggedResponse(self, message: bytes, isAsync: bool | None = None) -> None: ...

    def sendPositiveResponse(self, tag: bytes | None = None, message: bytes = b"") -> None: ...

    def sendNegativeResponse(self, tag: bytes | None = None, message: bytes = b"") -> None: ...

    def sendBadResponse(self, tag: bytes | None = None, message: bytes = b"") -> None: ...

    def sendContinuationRequest(self, msg: bytes = b"Ready for additional command text") -> None:
        ...

    def listCapabilities(self) -> list[bytes]: ...

    def flush_updates(self, allow_expunge: bool = True) -> None: ...

    def login_capabilities(self) -> dict[bytes, Any]: ...

    def _failed(self, failure: Any, tag: bytes) -> None: ...

    def search_charset_refused(self, tag: bytes, charset: str | None) -> bool: ...

    # -- the connection's life ---------------------------------------------------------------------
    def setTimeout(self, period: float | None) -> Any: ...

    def resetTimeout(self) -> None: ...

    def callLater(self, period: float, func: Callable[[], Any]) -> Any: ...

    # -- reading commands (reader.CommandReader, and the handlers it gives lines to) --------------
    def setRawMode(self) -> None: ...

    def _dispatch(self, command: bytes) -> None: ...

    def _pause_while_busy(self) -> None: ...

    def _resume_reading(self) -> None: ...

    def release_reply(self) -> None: ...

    def _idle_line(self, line: bytes) -> None: ...

    def sasl_line(self, line: bytes) -> None: ...

    def timeoutConnection(self) -> None: ...

    def _close_view(self) -> None: ...

    # -- hooks of condstore.CondstoreCommands in the other commands ------------------------------
    def select_parameters(self, params: list[Any]) -> Callable[[ImapMailboxView], None]: ...

    def fetch_modifiers(
        self, text: bytes, uid: bool
    ) -> tuple[Any, Callable[[list[Any], list[tuple[int, int]]], list[tuple[int, int]]]]: ...

    def search_result(self, key: Any, found: list[int], uid: bool) -> bytes: ...

    def _esearch_modseq(self, key: Any, options: list[bytes], found: list[int],
                        uid: bool) -> bytes: ...

    async def select_replies(self, name: str) -> Any: ...  # a rev2.SelectReplies

    # -- hooks of context.ContextCommands (RFC 5267 UPDATE, PARTIAL) -----------------------------
    def search_context(self, tag: bytes, uid: bool, options: list[bytes], key: Any,
                       numbers: list[int], sort: Any = None) -> bytes: ...

    def check_update_tag(self, tag: bytes, options: list[bytes] | None) -> None: ...

    def context_before(self) -> list[bytes]: ...

    def context_after(self) -> list[bytes]: ...

    def context_end(self) -> None: ...

    def _targets(self, ranges: list[Any], uid: bool) -> list[tuple[int, int]]: ...

    def _send_flags_update(self) -> None: ...

    def _rip(self) -> str: ...

    def _lip(self) -> str: ...
