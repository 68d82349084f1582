"""IMAP's not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE (SASL-IR), the login capabilities.

A mixin of ``mailsuite.imap.server.IMAPServer`` (typed against ``session.Session``): ``cmd_*``
handlers for its command reader (so a LOGIN argument or an AUTHENTICATE initial response may be
a literal), and AUTHENTICATE's continuation lines come back through that reader (``sasl_line``).
The replies are Dovecot's. One rule (``sasl.plaintext_ok``) decides both what CAPABILITY says
(``LOGINDISABLED`` and no ``AUTH=``, or ``AUTH=PLAIN AUTH=LOGIN``) and what LOGIN / AUTHENTICATE
accept, so the two always agree.

STARTTLS drops whatever the client pipelined behind it in clear (no command injection); the
implicit-TLS port (993) marks its sessions ``secure`` from the start.

Every login goes through ``_login(tag, attempt)`` and ends in ``_logged_in`` or
``_login_failed``: the one place where a login policy (brute-force defence) hooks in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.auth import sasl
from mailsuite.auth.policy import LoginBlocked
from mailsuite.deadline import LoginDeadlines
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.parser import Cursor, ParseError

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()

PRIVACY_REQUIRED = (b"[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure "
                    b"(SSL/TLS) connections.")


class ImapLogin(sasl.Conversation, _Base):
    """STARTTLS, LOGIN, AUTHENTICATE for ``IMAPServer`` (what they use of it: ``Session``)."""

    server_tls: Any = None  # a mailsuite.tls.ServerTLS, or None when ssl = no
    secure = False  # TLS is on (implicit port, or after STARTTLS)
    _handed_off = False  # the session went on in an agent (mailsuite.privsep)
    _auth_failures = 0
    _sasl_tag = b""
    _login_deadlines: LoginDeadlines  # [auth] login_idle_timeout and login_timeout
    _started = 0.0  # when the connection was made (clock seconds)
    user: str | None  # set by a login (the server starts it at None)
    _onLogout: Callable[[], None] | None  # the realm's logout of the avatar, once logged in
    limits_login: Callable[[str, str], bool]  # limits.ImapLimits': mail_max_userip_connections

    def plaintext_ok(self) -> bool:
        return sasl.plaintext_ok(self.config, self.transport, self.secure)

    def login_capabilities(self) -> dict[bytes, Any]:
        """The capabilities of the not-authenticated state (none after login)."""
        if self.state != "unauth":
            return {}
        caps: dict[bytes, Any] = {b"SASL-IR": None}
        if self.server_tls is not None and not self.secure:
            caps[b"STARTTLS"] = None
        if self.plaintext_ok():
            caps[b"AUTH"] = list(sasl.MECHANISMS)
        else:
            caps[b"LOGINDISABLED"] = None
        return caps

    # -- STARTTLS ------------------------------------------------------------------------------
    def cmd_STARTTLS(self, tag: bytes, args: Cursor) -> None:
        args.end()
        if self.secure:
            self.sendBadResponse(tag, b"TLS is already active.")
            return
        if self.server_tls is None:
            self.sendBadResponse(tag, b"TLS support isn't enabled.")
            return
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now.")
        self._buffer = b""  # lines pipelined behind STARTTLS were sent in clear: dropped
        self.uncork()
        self.transport.startTLS(self.server_tls)
        self.secure = True

    cmd_STARTTLS.imap_states = ("unauth",)  # type: ignore[attr-defined]

    # -- LOGIN ---------------------------------------------------------------------------------
    def cmd_LOGIN(self, tag: bytes, args: Cursor) -> None:
        args.sp()
        user = args.astring()
        args.sp()
        passwd = args.astring()
        args.end()
        if not self.plaintext_ok():
            self.sendNegativeResponse(tag, PRIVACY_REQUIRED)
            return
        self._login(tag, sasl.Attempt("PLAIN", bytes(user), bytes(passwd)))

    cmd_LOGIN.imap_states = ("unauth",)  # type: ignore[attr-defined]

    # -- AUTHENTICATE --------------------------------------------------------------------------
    def cmd_AUTHENTICATE(self, tag: bytes, args: Cursor) -> None:
        """``AUTHENTICATE mech [initial-response]``; the initial response may also be a quoted
        string or a literal (the reader has assembled it)."""
        try:
            args.sp()
            mechanism = args.atom()
            initial: bytes | None = None
            if args.maybe_sp() and not args.at_end():
                initial = bytes(args.astring()) if args.peek() in (b'"', b"{") else args.token()
            args.end()
        except ParseError:
            self.sendBadResponse(tag, b"Invalid arguments.")
            return
        try:
            exchange = sasl.Exchange.start(mechanism, initial)
        except sasl.UnknownMechanism:
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism.")
            return
        if not self.plaintext_ok():
            self.sendNegativeResponse(tag, PRIVACY_REQUIRED)
            return
        self._sasl_tag = tag
        self.sasl_begin(exchange)

    cmd_AUTHENTICATE.imap_states = ("unauth",)  # type: ignore[attr-defined]

    def sasl_line(self, line: bytes) -> None:
        """A line the client sent in answer to an AUTHENTICATE challenge."""
        self.parseState = "command"
        if self._sasl is not None:
            self.sasl_response(line.rstrip(b"\r"))

    # -- sasl.Framing: IMAP's (RFC 3501, SASL-IR RFC 4959), for the AUTHENTICATE of _sasl_tag --
    def sasl_challenge(self, encoded: bytes) -> None:
        # the reader hands the client's next line to sasl_line, not to the command parser
        self.parseState = "sasl"
        self.sendLine(b"+ " + encoded)

    def sasl_cancelled(self) -> None:
        self.sendBadResponse(self._sasl_tag, b"Authentication aborted by client.")

    def sasl_malformed(self, error: sasl.Malformed) -> None:
        self.sendBadResponse(self._sasl_tag, str(error).encode("ascii") + b".")

    def sasl_attempt(self, attempt: sasl.Attempt) -> None:
        self._login(self._sasl_tag, attempt)

    # -- the one login path --------------------------------------------------------------------
    def _login(self, tag: bytes, attempt: sasl.Attempt) -> None:
        """Check ``attempt`` through the portal; LOGIN and AUTHENTICATE both come here."""
        name = attempt.username.decode("utf-8", "replace")
        d = sasl.login(self.portal, attempt, IImapAccount,
                       {"tag": tag, "method": attempt.mechanism, "secure": bool(self.secure),
                        "rip": self._rip(), "lip": self._lip()})
        args = (tag, name, attempt.mechanism)
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=args, errbackArgs=args)
        d.addErrback(self._failed, tag)

    def _login_line(self, name: str, method: str) -> str:
        tls = ", TLS" if self.secure else ""
        return (f"user=<{sasl.printable(name.encode())}>, method={method}, rip={self._rip()}, "
                f"lip={self._lip()}{tls}")

    def login_timed_out(self) -> None:
        """No login within login_timeout, or no complete command within login_idle_timeout:
        BYE, and imap-login's line as Dovecot logs it."""
        secs = int(self.clock.seconds() - self._started)
        tried = (f"auth failed, {self._auth_failures} attempts" if self._auth_failures
                 else "no auth attempts")
        self.maillog.write("imap-login", f"Disconnected: Inactivity ({tried} in {secs} secs): "
                                         f"user=<>, rip={self._rip()}, lip={self._lip()}")
        self.timeoutConnection()

    async def prepare_session(self, avatar: Any) -> None:
        """Work to finish before the tagged OK of a login (the server lists the folders)."""

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]], tag: bytes, name: str,
                   method: str) -> defer.Deferred[None] | None:
        _, avatar, logout = result
        if self._lost or not self.limits_login(name, method):
            logout()
            return None
        self._login_deadlines.stop()
        self.maillog.write("imap-login", "Login: " + self._login_line(name, method))
        handoff = getattr(avatar, "hand_off", None)
        if handoff is not None:  # privilege separation: an agent of the user runs the rest
            self._handed_off = True
            handoff(self, self._rip(), self._lip())
            return None
        return self.resume_session(tag, name, avatar, logout)

    def resume_session(self, tag: bytes, name: str, avatar: Any,
                       logout: Callable[[], None]) -> defer.Deferred[None]:
        """Enter the authenticated state as ``name`` and answer the login's ``tag`` (here, or
        in the agent that a privilege-separated server hands the session to)."""
        self.account = avatar
        self._onLogout = logout
        self.user = name
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        return defer.ensureDeferred(self._welcome(tag, avatar))

    async def _welcome(self, tag: bytes, avatar: Any) -> None:
        await self.prepare_session(avatar)
        if not self._lost:
            caps = b" ".join(self.listCapabilities())
            self.sendPositiveResponse(tag, b"[CAPABILITY " + caps + b"] Logged in")

    def _login_failed(self, failure: Any, tag: bytes, name: str, method: str) -> None:
        if failure.check(UnauthorizedLogin, LoginFailed):
            # fail2ban's dovecot filter matches "(auth failed, N attempts...): user=<>, ... rip=".
            self._auth_failures += 1
            self.maillog.write(
                "imap-login",
                f"Aborted login (auth failed, {self._auth_failures} attempts): "
                + self._login_line(name, method),
            )
            self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] Authentication failed.")
        else:
            if not failure.check(LoginBlocked):  # LoginBlocked: too many failures (auth.policy)
                log.failure("login of {user} failed", failure, user=name)
            self.sendNegativeResponse(tag, b"[UNAVAILABLE] Temporary authentication failure.")
