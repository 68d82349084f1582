"""POP3's AUTHORIZATION state: CAPA, STLS, USER/PASS and AUTH (SASL PLAIN and LOGIN).

A mixin of ``mailsuite.pop3.server.POP3Server``; the replies are Dovecot's. What is offered follows
one rule (``sasl.plaintext_ok``): USER and ``SASL PLAIN LOGIN`` appear in CAPA exactly when they are
accepted, ``STLS`` while the session is not yet encrypted and a certificate is configured.

Every login, whatever the command, goes through ``_login(attempt)`` and ends in ``_logged_in`` or
``_login_failed``: the one place where a login policy (brute-force defence) hooks in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure

from mailsuite.auth import sasl
from mailsuite.auth.policy import LoginBlocked
from mailsuite.config import Config
from mailsuite.limits import Slot, userip_exceeded

log = Logger()

MAX_AUTH_ATTEMPTS = 3  # then the connection is closed
LOGIN_MAX_BAD_COMMANDS = 3  # Dovecot pop3-login's CLIENT_MAX_BAD_COMMANDS
LOGIN_MAX_COMMANDS = 100  # commands before login (mailsuite's own, as IMAP's)

PLAINTEXT_REFUSED = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) "
                     b"connections.")


class Pop3Login(sasl.Conversation):
    """CAPA, STLS, USER, PASS, AUTH for ``POP3Server`` (which sets the attributes used here)."""

    transport: Any
    mbox: Any
    portal: Any
    maillog: Any
    clock: Any
    config: Config
    server_tls: Any = None  # a mailsuite.tls.ServerTLS, or None when ssl = no
    secure = False  # TLS is on (implicit port, or after STLS)
    rip = lip = ""
    handed_off = False  # the session went on in an agent (mailsuite.privsep)
    reply: Callable[[bytes | str], None]
    limits: Any = None  # the factory's mailsuite.limits.Limits (None: unlimited)
    slot: Slot | None = None

    def _init_login(self) -> None:
        self._user = b""
        self._login_user = ""
        self._login_method = "PLAIN"
        self._failures = 0
        self._logout: Callable[[], None] | None = None
        self._tls_cut = False  # input after STLS in the same read is discarded (no injection)
        self._quit = False
        self._queue: list[bytes] = []
        self._bad_before_login = self._commands_before_login = 0

    # -- limits (Dovecot's, see mailsuite.limits) --

    def limits_connect(self) -> bool:
        """[pop3] process_limit (110 and 995 together): False once refused (closing)."""
        if self.limits is None:
            return True
        self.slot = Slot(self.limits, "pop3", self.rip)
        if self.slot.enter(self.config.pop3.process_limit):
            return True
        return self._refuse(b"-ERR [SYS/TEMP] Maximum number of connections reached, try again"
                            b" later.")

    def limits_command(self, valid: bool) -> bool:
        """Before login: at most LOGIN_MAX_BAD_COMMANDS invalid and LOGIN_MAX_COMMANDS
        commands in all; False once the connection is closing."""
        if self.mbox is not None or self._sasl is not None:
            return True
        self._commands_before_login += 1
        self._bad_before_login += not valid
        if self._commands_before_login > LOGIN_MAX_COMMANDS:
            return self._refuse(b"-ERR Too many commands before login.")
        if self._bad_before_login >= LOGIN_MAX_BAD_COMMANDS:
            return self._refuse(b"-ERR Too many bad commands.")
        return True

    def _limits_login(self) -> bool:
        """mail_max_userip_connections: False once the login is refused (closing)."""
        limit = self.config.pop3.mail_max_userip_connections
        if self.slot is None or self._lost:  # type: ignore[attr-defined]  # (gone: uncounted)
            return True
        if self.slot.login(self._login_user, limit):
            return True
        text = userip_exceeded(limit)
        self.limits.warn(("userip", "pop3", self._login_user, self.rip), "pop3-login",
                         f"{text}: user=<{self._login_user}>, method={self._login_method},"
                         f" rip={self.rip}, lip={self.lip}{self._tls_note()}")
        return self._refuse(f"-ERR [IN-USE] {text}".encode())

    def _refuse(self, line: bytes) -> bool:
        self.reply(line)
        self._quit = True
        self.transport.loseConnection()
        return False

    def plaintext_ok(self) -> bool:
        return sasl.plaintext_ok(self.config, self.transport, self.secure)

    def listCapabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE"]
        if self.mbox is None and self.server_tls is not None and not self.secure:
            caps.append(b"STLS")
        if self.plaintext_ok():
            caps += [b"USER", b"SASL " + b" ".join(sasl.MECHANISMS)]
        return [*caps, b"IMPLEMENTATION mailsuite"]

    def do_CAPA(self, *_: bytes) -> None:
        self.transport.write(
            b"".join(c + b"\r\n" for c in [b"+OK", *self.listCapabilities(), b"."])
        )

    # -- STLS --

    def do_STLS(self, *args: bytes) -> None:
        if self.server_tls is None:
            return self.reply(b"-ERR TLS support isn't enabled.")
        if self.secure:
            return self.reply(b"-ERR [IN-USE] TLS is already active.")
        if args:
            return self.reply(b"-ERR Wrong number of arguments.")
        self.reply(b"+OK Begin TLS negotiation now.")
        self._queue.clear()
        self._buffer = b""  # and a partial line, also when STLS waited behind a slow command
        self._tls_cut = True
        self._user = b""
        self.transport.startTLS(self.server_tls)
        self.secure = True

    # -- USER / PASS --

    def _plaintext_refused(self) -> bool:
        if self.plaintext_ok():
            return False
        self.reply(PLAINTEXT_REFUSED)
        return True

    def do_USER(self, *args: bytes) -> None:
        if self._plaintext_refused():
            return
        if len(args) != 1:
            return self.reply(b"-ERR No username given.")
        self._user = args[0]
        self.reply(b"+OK")

    def do_PASS(self, password: bytes) -> Any:
        if self._plaintext_refused():
            return None
        if not self._user:
            return self.reply(b"-ERR No username given.")
        user, self._user = self._user, b""
        return self._login(sasl.Attempt("PLAIN", user, password))

    # -- AUTH --

    def do_AUTH(self, *args: bytes) -> Any:
        if not args:  # the mechanism list of the SASL draft Outlook Express used
            mechanisms = list(sasl.MECHANISMS) if self.plaintext_ok() else []
            self.transport.write(b"".join(x + b"\r\n" for x in [b"+OK", *mechanisms, b"."]))
            return None
        if len(args) > 2:
            return self.reply(b"-ERR Wrong number of arguments.")
        try:
            exchange = sasl.Exchange.start(args[0], args[1] if len(args) == 2 else None)
        except sasl.UnknownMechanism:
            return self.reply(b"-ERR [AUTH] Unsupported authentication mechanism.")
        if self._plaintext_refused():
            return None
        return self.sasl_begin(exchange)

    # -- sasl.Framing: POP3's (RFC 5034) --

    def sasl_challenge(self, encoded: bytes) -> None:
        self.reply(b"+ " + encoded)

    def sasl_cancelled(self) -> None:
        self.reply(b"-ERR Authentication aborted by client.")

    def sasl_malformed(self, error: sasl.Malformed) -> None:
        self.reply(f"-ERR {error}.")

    def sasl_attempt(self, attempt: sasl.Attempt) -> defer.Deferred[Any]:
        return self._login(attempt)

    # -- the one login path --

    def _login(self, attempt: sasl.Attempt) -> defer.Deferred[Any]:
        """Check ``attempt`` through the portal; every login of every command comes here."""
        self._login_user = sasl.printable(attempt.username)
        self._login_method = attempt.mechanism
        d = sasl.login(self.portal, attempt, pop3.IMailbox,
                       {"tag": b"", "method": attempt.mechanism, "secure": bool(self.secure),
                        "rip": self.rip, "lip": self.lip})
        d.addCallbacks(self._logged_in, self._login_failed)
        return d

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> Any:
        _iface, avatar, logout = result
        if not self._limits_login():
            logout()
            return None
        self._login_deadlines.stop()  # type: ignore[attr-defined]
        self.maillog.write("pop3-login", f"Login: user=<{self._login_user}>, "
                                         f"method={self._login_method}, "
                                         f"rip={self.rip}, lip={self.lip}{self._tls_note()}")
        handoff = getattr(avatar, "hand_off", None)
        if handoff is not None:  # privilege separation: an agent of the user runs the rest
            self.handed_off = True
            handoff(self, self.rip, self.lip)
            return defer.Deferred()  # never fires: this side runs no more commands
        self.mbox, self._logout = avatar, logout
        self.setTimeout(self.timeOut)  # type: ignore[attr-defined]
        self.reply(b"+OK Logged in.")

    def _tls_note(self) -> str:
        return ", TLS" if self.secure else ""

    def _login_failed(self, failure: Failure) -> Any:
        if failure.check(LoginBlocked):  # too many failures from this address (auth.policy)
            return self.reply(b"-ERR [SYS/TEMP] Temporary authentication failure.")
        if not failure.check(cred_error.UnauthorizedLogin, cred_error.LoginFailed):
            log.failure("POP3 login of {user} failed", failure, user=self._login_user)
            return self.reply(b"-ERR [SYS/TEMP] Temporary authentication failure.")
        self._failures += 1
        if self._lost:  # type: ignore[attr-defined]
            return None
        # No delay of its own: the next attempt from a non-exempt address waits its turn and
        # auth_failure_delay (auth.policy), as over IMAP and SMTP.
        self.reply(b"-ERR [AUTH] Authentication failed.")
        if self._failures >= MAX_AUTH_ATTEMPTS:
            self._quit = True
            self.transport.loseConnection()
        return None
