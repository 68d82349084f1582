"""Postfix smtpd's limits for ``mailsuite.smtp.server.SMTPServer`` (a mixin), with Postfix's
replies and warnings (the keys are [mail]'s, see etc/mail.ini):

- at connect, before the greeting: the sessions of the service (``default_process_limit``,
  Postfix's master.cf process limit; the client gets postscreen's ``421 4.3.2 All server ports
  are busy``), and per client address through anvil (mailsuite.limits): connections open
  (``smtpd_client_connection_count_limit``), connections per time unit
  (``smtpd_client_connection_rate_limit``), and on port 465 new TLS sessions;
- MAIL (``smtpd_client_message_rate_limit``), RCPT (``smtpd_client_recipient_rate_limit``) and
  STARTTLS (``smtpd_client_new_tls_session_rate_limit``) per client and time unit;
- errors per session: after ``smtpd_soft_error_limit`` each command waits
  ``smtpd_error_sleep_time`` (a timer, the reactor goes on), at ``smtpd_hard_error_limit`` the
  session ends with ``421 4.7.0``; after ``smtpd_junk_command_limit`` NOOP, RSET and VRFY
  count as errors. A delivered message starts the count again, as in Postfix.

Clients in ``smtpd_client_event_limit_exceptions`` ($mynetworks) are exempt from the anvil
limits (connections, rates), as in Postfix; nobody is exempt from the others. Each warning is
logged at most once per client per minute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

JUNK_COMMANDS = frozenset({b"NOOP", b"RSET", b"VRFY"})


class SmtpLimits:
    """The limits of one SMTP session (``SMTPServer`` provides what is declared here)."""

    factory: Any
    transport: Any
    client_ip: str
    _command_name: str
    _reply: Callable[[int, str], None]
    _log: Callable[[str], None]

    _entered = False  # counted among the sessions of the service
    _in_anvil = False  # counted by anvil (not exempt)
    _errors = 0
    _junk = 0
    _slept = False

    if TYPE_CHECKING:
        @property
        def client(self) -> str: ...

    def _over(self, what: str, count: int) -> None:
        """Log ``what limit exceeded`` for this client, at most once a minute."""
        service = self.factory.service
        self.factory.limits.warn((what, service, self.client_ip), "smtpd",
                                 f"warning: {what} limit exceeded: {count} from {self.client}"
                                 f" for service {service}")

    def _refuse(self, line: str) -> bool:
        self.transport.write(line.encode() + b"\r\n")
        self.transport.loseConnection()
        return False

    def limits_connect(self) -> bool:
        """Count a new connection; False once it is refused (421 sent, closing)."""
        limits, mail, service = self.factory.limits, self.factory.config.mail, self.factory.service
        if not limits.enter(service, mail.default_process_limit):
            limits.warn(("process_limit", service), "master",
                        f'warning: service "{service}" has reached its process limit'
                        f' "{mail.default_process_limit}": new clients may experience'
                        " noticeable delays")
            return self._refuse("421 4.3.2 All server ports are busy")
        self._entered = True
        if limits.exempt(self.client_ip):
            return True
        self._in_anvil = True
        count, rate = limits.anvil.connect(service, self.client_ip)
        too_many = f"421 4.7.0 {self.factory.hostname} Error: too many connections from" \
                   f" {self.client_ip}"
        if 0 < mail.smtpd_client_connection_count_limit < count:
            self._over("Connection concurrency", count)
            return self._refuse(too_many)
        if 0 < mail.smtpd_client_connection_rate_limit < rate:
            self._over("Connection rate", rate)
            return self._refuse(too_many)
        if self.factory.implicit_tls and not self._tls_ok():
            return self._refuse(f"421 4.7.0 {self.factory.hostname} Error: too many new TLS"
                                f" sessions from {self.client_ip}")
        return True

    def limits_release(self) -> None:
        """At QUIT and connectionLost (the first one counts): the connection no longer counts."""
        if self._entered:
            self._entered = False
            self.factory.limits.sessions.remove(self.factory.service)
        if self._in_anvil:
            self._in_anvil = False
            self.factory.limits.anvil.disconnect(self.factory.service, self.client_ip)

    def _rate_ok(self, kind: str, limit: int, what: str) -> bool:
        if not limit or not self._in_anvil:
            return True
        rate = self.factory.limits.anvil.event(kind, self.factory.service, self.client_ip)
        if rate <= limit:
            return True
        self._over(what, rate)
        return False

    def _tls_ok(self) -> bool:
        limit = self.factory.config.mail.smtpd_client_new_tls_session_rate_limit
        return self._rate_ok("tls", limit, "New TLS session rate")

    def _within(self, kind: str, limit: int, what: str, code: int, text: str) -> bool:
        """A rate check at a command: False after the reply ``code text``."""
        if self._rate_ok(kind, limit, what):
            return True
        self._reply(code, f"{text} from {self.client_ip}")
        return False

    def limits_starttls(self) -> bool:
        """Before STARTTLS's 220: False after ``454 4.7.0`` (the session goes on in clear)."""
        limit = self.factory.config.mail.smtpd_client_new_tls_session_rate_limit
        return self._within("tls", limit, "New TLS session rate", 454,
                            "4.7.0 Error: too many new TLS sessions")

    def limits_mail(self) -> bool:
        """At MAIL: False after ``450 4.7.1`` when the client sent too many messages."""
        return self._within("message", self.factory.config.mail.smtpd_client_message_rate_limit,
                            "Message delivery request rate", 450, "4.7.1 Error: too much mail")

    def limits_rcpt(self) -> bool:
        """At RCPT: False after ``450 4.7.1`` when the client gave too many recipients."""
        limit = self.factory.config.mail.smtpd_client_recipient_rate_limit
        return self._within("recipient", limit, "Recipient address rate", 450,
                            "4.7.1 Error: too many recipients")

    # -- errors ----------------------------------------------------------------------------------

    def limits_error(self) -> None:
        """One more error (a 4xx/5xx reply, or junk past its limit): at smtpd_hard_error_limit
        the session ends."""
        self._errors += 1
        if self._errors >= self.factory.config.mail.smtpd_hard_error_limit \
                and not self.transport.disconnecting:
            self.transport.write(
                f"421 4.7.0 {self.factory.hostname} Error: too many errors\r\n".encode())
            self._log(f"too many errors after {self._command_name.upper()} from {self.client}")
            self.transport.loseConnection()

    def limits_junk(self, verb: bytes) -> None:
        """NOOP, RSET and VRFY past smtpd_junk_command_limit count as errors."""
        if verb in JUNK_COMMANDS:
            self._junk += 1
            if self._junk > self.factory.config.mail.smtpd_junk_command_limit:
                self.limits_error()

    def limits_delivered(self) -> None:
        """A message was delivered: its client starts again with no errors."""
        self._errors = 0

    def limits_delay(self) -> defer.Deferred[None] | None:
        """Before a command: after smtpd_soft_error_limit errors, a Deferred that fires after
        smtpd_error_sleep_time (the command runs then); None: run it now."""
        mail = self.factory.config.mail
        if self._slept or self._errors < mail.smtpd_soft_error_limit \
                or not mail.smtpd_error_sleep_time:
            self._slept = False
            return None
        self._slept = True
        return task.deferLater(self.factory.clock, mail.smtpd_error_sleep_time, lambda: None)
