"""SMTP STARTTLS, AUTH PLAIN/LOGIN and the submission rules, shaped like Postfix smtpd +
Dovecot SASL.

A mixin of ``mailsuite.smtp.server.SMTPServer``. The factory says which service a session is:

- ``smtp`` (25): mail from the world for local domains, no AUTH needed. STARTTLS is offered when
  a certificate is configured; AUTH is offered (and accepted) only where plaintext logins are
  (``sasl.plaintext_ok``: after STARTTLS, from loopback or login_trusted_networks, or everywhere
  with ``disable_plaintext_auth = no``). ``ssl = required`` does not force TLS on 25: MX traffic
  from the world must keep flowing (Postfix's ``smtpd_tls_security_level = may`` on 25); it only
  keeps logins off plaintext.
- ``submission`` (587) and ``smtps`` (465, TLS from the first byte): MAIL needs AUTH first
  (``530 5.7.0 Authentication required``); with ``ssl = required`` nothing but EHLO/HELO,
  STARTTLS, NOOP, RSET, HELP and QUIT is accepted before TLS (Postfix's ``encrypt`` level).

An authenticated session's sender must be the user's (checked by the delivery avatar, which
AUTH replaces with ``delivery.avatar(user)``). Relay control is that avatar's too
(mta/accept.py): authenticated users and clients in ``mynetworks`` may send to any domain
(the message goes into the outbound queue), everybody else gets ``554 5.7.1 Relay access
denied`` for domains that are neither local nor in ``relay_domains``.

Every AUTH ends in ``_auth_login(attempt)`` then ``_auth_ok`` / ``_auth_failed``: the one place
where a login policy (brute-force defence) hooks in. Failures are logged as Postfix does
(``warning: host[ip]: SASL PLAIN authentication failed: ...``, which fail2ban's postfix filter
matches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailsuite.auth import sasl
from mailsuite.auth.policy import LoginBlocked
from mailsuite.smtp.reader import Reader

log = Logger()

#: What a submission port with ssl = required accepts before STARTTLS.
BEFORE_TLS = {b"EHLO", b"HELO", b"STARTTLS", b"NOOP", b"RSET", b"HELP", b"QUIT"}


class SmtpAuth(sasl.Conversation):
    """STARTTLS and AUTH for ``SMTPServer`` (which provides what is declared here)."""

    factory: Any
    transport: Any
    client_ip: str
    secure = False
    auth_user: str | None = None
    auth_method = ""
    reader: Reader
    _helo_name: str | None
    _sender: str | None
    _avatar: Any
    _logout: Callable[[], None] | None
    _reply: Callable[[int, str], None]
    _log: Callable[[str], None]
    _reset_transaction: Callable[[], None]
    limits_starttls: Callable[[], bool]
    client_name: str

    # -- what this session offers ----------------------------------------------------------------

    @property
    def submission(self) -> bool:
        return bool(self.factory.service in ("submission", "smtps"))

    def tls_offered(self) -> bool:
        return self.factory.server_tls is not None and not self.secure

    def tls_missing(self) -> bool:
        """A submission port with ssl = required before STARTTLS: only BEFORE_TLS commands."""
        return (self.submission and not self.secure
                and self.factory.config.tls.ssl == "required")

    def auth_offered(self) -> bool:
        if self.factory.portal is None or self.tls_missing():
            return False
        return sasl.plaintext_ok(self.factory.config, self.transport, self.secure)

    def ehlo_extensions(self) -> list[str]:
        """The EHLO keywords of STARTTLS and AUTH, as the session stands."""
        out = []
        if self.tls_offered():
            out.append("STARTTLS")
        if self.auth_offered() and self.auth_user is None:
            out.append("AUTH " + " ".join(m.decode() for m in sasl.MECHANISMS))
        return out

    def gate(self, verb: bytes) -> bool:
        """False (after replying) when ``verb`` must wait for TLS or AUTH on this port."""
        if self.tls_missing() and verb not in BEFORE_TLS:
            self._reply(530, "5.7.0 Must issue a STARTTLS command first")
            return False
        if verb == b"MAIL" and self.submission and self.auth_user is None:
            self._reply(530, "5.7.0 Authentication required")
            return False
        return True

    # -- STARTTLS --------------------------------------------------------------------------------

    def _cmd_starttls(self, arg: bytes) -> None:
        if self.factory.server_tls is None:
            self._reply(502, "5.5.1 Error: command not implemented")
        elif self.secure:
            self._reply(554, "5.5.1 Error: TLS already active")
        elif arg:
            self._reply(501, "5.5.4 Syntax: STARTTLS")
        elif self._sender is not None:
            self._reply(503, "5.5.1 Error: MAIL transaction in progress")
        elif self.limits_starttls():
            self._reply(220, "2.0.0 Ready to start TLS")
            self.reader.clear()  # commands pipelined behind STARTTLS were sent in clear: dropped
            self.transport.startTLS(self.factory.server_tls)
            self.secure = True
            self._helo_name = None  # RFC 3207: forget what the client said before TLS
            self._reset_transaction()

    # -- AUTH ------------------------------------------------------------------------------------

    def _cmd_auth(self, arg: bytes) -> Any:
        if not self.auth_offered():
            if self.tls_missing():
                return self._reply(530, "5.7.0 Must issue a STARTTLS command first")
            return self._reply(503, "5.5.1 Error: authentication not enabled")
        if self._helo_name is None:
            return self._reply(503, "5.5.1 Error: send HELO/EHLO first")
        if self.auth_user is not None:
            return self._reply(503, "5.5.1 Error: already authenticated")
        if self._sender is not None:
            return self._reply(503, "5.5.1 Error: MAIL transaction in progress")
        words = arg.split()
        if not 1 <= len(words) <= 2:
            return self._reply(501, "5.5.4 Syntax: AUTH mechanism")
        try:
            exchange = sasl.Exchange.start(words[0], words[1] if len(words) == 2 else None)
        except sasl.UnknownMechanism:
            return self._reply(504, "5.5.4 Unsupported authentication mechanism")
        return self.sasl_begin(exchange)

    # -- sasl.Framing: SMTP's (RFC 4954) ---------------------------------------------------------

    def sasl_challenge(self, encoded: bytes) -> None:
        self.transport.write(b"334 " + encoded + b"\r\n")

    def sasl_cancelled(self) -> None:
        self._reply(501, "5.7.0 Authentication aborted")

    def sasl_malformed(self, error: sasl.Malformed) -> None:
        text = "Cannot decode response" if isinstance(error, sasl.BadBase64) else str(error)
        self._reply(501, f"5.5.2 {text}")

    def sasl_attempt(self, attempt: sasl.Attempt) -> defer.Deferred[Any]:
        return self._auth_login(attempt)

    # -- the one login path ----------------------------------------------------------------------

    def _auth_login(self, attempt: sasl.Attempt) -> defer.Deferred[Any]:
        """Check ``attempt`` through the portal; every AUTH comes here."""
        portal = self.factory.portal
        if self.factory.policy is not None and not attempt.proxy:  # brute-force defence
            portal = self.factory.policy.guard(portal, self.client_ip, self.factory.service,
                                               self.client_name)  # (mailsuite.auth.policy)
        d = sasl.login(portal, attempt, smtp.IMessageDelivery)
        return d.addCallbacks(self._auth_ok, self._auth_failed,
                              callbackArgs=(attempt,), errbackArgs=(attempt,))

    def _auth_ok(self, result: tuple[Any, Any, Callable[[], None]], attempt: sasl.Attempt) -> None:
        _, avatar, logout = result
        if self._logout is not None:
            self._logout()
        self._avatar, self._logout = avatar, logout
        self.auth_user = attempt.username.decode("utf-8", "replace")
        self.auth_method = attempt.mechanism
        self._reply(235, "2.7.0 Authentication successful")

    def _auth_failed(self, failure: Failure, attempt: sasl.Attempt) -> None:
        if not failure.check(cred_error.UnauthorizedLogin, cred_error.LoginFailed):
            if not failure.check(LoginBlocked):  # too many failures from this address
                log.failure("SMTP AUTH of {user} failed", failure, user=attempt.username)
            self._reply(454, "4.7.0 Temporary authentication failure")
            return
        if self.factory.policy is None:  # else the policy writes Postfix's warning (auth.policy)
            self._log(f"warning: {self.client_name}[{self.client_ip}]: SASL {attempt.mechanism}"
                      " authentication failed: authentication failure")
        self._reply(535, "5.7.8 Error: authentication failed")

    def sasl_log(self) -> str:
        """The part Postfix adds to the ``client=`` line of an authenticated session."""
        if self.auth_user is None:
            return ""
        user = sasl.printable(self.auth_user.encode())
        return f", sasl_method={self.auth_method}, sasl_username={user}"

    def with_protocol(self, proto: str) -> str:
        """Received: ``with`` ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA (both), as Postfix."""
        if proto != "ESMTP":
            return proto
        return proto + ("S" if self.secure else "") + ("A" if self.auth_user else "")
