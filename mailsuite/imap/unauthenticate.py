"""UNAUTHENTICATE (RFC 8437): back to the not-authenticated state on the same connection.

The mailbox is closed without expunging, NOTIFY and everything ENABLE turned on are off, the
account is logged out (its views closed, its user+IP count released) and the login state is
as after the greeting (the login deadlines, the counts of commands and failures before
login); TLS (and compression) stay. No BYE. Offered only in the authenticated and selected
states, and only where the session can log in again: a session handed to a per-user agent
(mailsuite.privsep) runs as that user and cannot (``CAN_UNAUTHENTICATE`` False there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.deadline import LoginDeadlines
from mailsuite.imap.parser import Cursor
from mailsuite.imap.session import states

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object


class UnauthenticateCommands(_Base):
    CAN_UNAUTHENTICATE = True
    user: str | None
    _onLogout: Any

    def own_capabilities(self) -> dict[bytes, Any]:
        if self.CAN_UNAUTHENTICATE and self.state in ("auth", "select"):
            return {b"UNAUTHENTICATE": None}
        return {}

    @states("auth", "select")
    def cmd_UNAUTHENTICATE(self, tag: bytes, args: Cursor) -> None:
        args.end()
        if not self.CAN_UNAUTHENTICATE:
            self.sendBadResponse(tag, b"Unknown command.")
            return
        stop = getattr(self, "_notify_stop", None)
        if stop is not None:
            stop()
        self._close_view()
        if self._onLogout:
            self._onLogout()
            self._onLogout = None
        if self.user is not None:
            self.maillog.write(
                f"imap({self.user})",
                f"Logged out in={self._bytes_in} out={self._bytes_out}, "  # type: ignore[attr-defined]
                f"user=<{self.user}>, rip={self._rip()}",
            )
        slot = getattr(self, "slot", None)
        if slot is not None and slot._user is not None:  # the user+IP count (imap/limits.py)
            slot.limits.userip.remove(slot._user)
            slot._user = None
        self._reset_login()
        self.sendPositiveResponse(tag, b"UNAUTHENTICATE completed.")

    def _reset_login(self) -> None:
        self.user = None
        self.account = None  # type: ignore[assignment]
        self.enabled = set()
        self.utf8_names = False  # UTF8=ACCEPT and IMAP4rev2 end too (RFC 8437 4.1)
        self.state = "unauth"
        self.setTimeout(None)
        self._auth_failures = 0  # type: ignore[attr-defined]
        self._commands_before_login = 0  # type: ignore[attr-defined]
        self._bad_before_login = 0  # type: ignore[attr-defined]
        auth = self.config.auth
        self._login_deadlines = LoginDeadlines(
            self.clock, auth.login_idle_timeout, auth.login_timeout,
            self.login_timed_out)  # type: ignore[attr-defined]
