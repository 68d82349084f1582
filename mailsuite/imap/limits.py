"""Dovecot's IMAP limits for ``mailsuite.imap.server.IMAPServer`` (a mixin; the state is
mailsuite.limits', shared by 143 and 993):

- ``[imap] process_limit``: sessions at once (Dovecot's ``service imap { process_limit }``);
  one more gets ``* BYE [UNAVAILABLE]`` instead of the greeting;
- ``[imap] mail_max_userip_connections``: logged-in sessions of one user from one address;
  the login past it gets Dovecot's ``* BYE Maximum number of connections from user+IP
  exceeded`` and the connection ends, the other sessions go on;
- before login, Dovecot imap-login's limit of ``LOGIN_MAX_BAD_COMMANDS`` invalid commands, and
  at most ``LOGIN_MAX_COMMANDS`` commands in all (mailsuite's own, as Postfix's
  smtpd_junk_command_limit): then ``* BYE`` and the end of the connection.

Line length and literal sizes are the command reader's (server.py: ``imap_max_line_length``,
8k before login, APPEND up to ``message_size_limit``, all checked before a literal is read).
Refusals are logged once per client (or service) per minute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsuite.limits import Slot, userip_exceeded

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

LOGIN_MAX_BAD_COMMANDS = 3  # Dovecot's CLIENT_MAX_BAD_COMMANDS
LOGIN_MAX_COMMANDS = 100


class ImapLimits(_Base):
    """The limits of one IMAP session; ``limits`` (a mailsuite.limits.Limits) is set by the
    factory (None: a session on its own, unlimited)."""

    limits: Any = None
    slot: Slot | None = None
    _bad_before_login = 0
    _commands_before_login = 0

    def limits_connect(self) -> bool:
        """Before the greeting: False once refused (BYE sent, closing)."""
        if self.limits is None:
            return True
        self.slot = Slot(self.limits, "imap", self._rip())
        if self.slot.enter(self.config.imap.process_limit):
            return True
        self._bye(b"[UNAVAILABLE] Maximum number of connections reached, try again later.")
        return False

    def limits_release(self) -> None:
        """At LOGOUT and connectionLost (the first one counts)."""
        if self.slot is not None:
            self.slot.release()

    def limits_login(self, name: str, method: str) -> bool:
        """At a successful login: False (BYE sent, closing) when the user has
        mail_max_userip_connections sessions from this address already."""
        limit = self.config.imap.mail_max_userip_connections
        if self.slot is None or self.slot.login(name, limit):
            return True
        text = userip_exceeded(limit)
        self.limits.warn(("userip", "imap", name, self.slot.ip), "imap-login",
                         f"{text}: user=<{name}>, method={method}, rip={self._rip()},"
                         f" lip={self._lip()}")
        self._bye(text.encode())
        return False

    def limits_command(self) -> bool:
        """A command before login: False once there were too many (BYE sent, closing)."""
        if self.state != "unauth":
            return True
        self._commands_before_login += 1
        if self._commands_before_login <= LOGIN_MAX_COMMANDS:
            return True
        self._bye(b"Too many commands before login.")
        return False

    def sendBadResponse(self, tag: bytes | None = None, message: bytes = b"") -> None:
        super().sendBadResponse(tag, message)  # type: ignore[safe-super]  # IMAP4Server's
        # (an AUTHENTICATE that failed is not an invalid command: the login policy counts it)
        if self.state == "unauth" and not self._lost and self._command != b"AUTHENTICATE":
            self._bad_before_login += 1
            if self._bad_before_login >= LOGIN_MAX_BAD_COMMANDS:
                self._bye(b"Too many invalid IMAP commands.")

    def _bye(self, text: bytes) -> None:
        self.sendLine(b"* BYE " + text)
        self.uncork()
        self.transport.loseConnection()
