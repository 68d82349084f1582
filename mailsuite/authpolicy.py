"""Brute-force defence shared by every login door (POP3, IMAP, SMTP AUTH), and the log lines
fail2ban's stock filters act on.

One ``AuthPolicy`` per server counts failed logins per client address: an IPv4 address, or the
/64 an IPv6 address belongs to (one host usually owns a whole /64), counted across all
protocols. Failures are forgotten gradually, ``login_max_failures`` of them per
``login_block_time`` (a leaky bucket), so an occasional typo never adds up.

- After failures, the next login from that address waits before its password is checked:
  ``auth_failure_delay`` after one failure, doubling with each further one, at most 15 seconds
  (Dovecot's auth penalty). A success clears the count, as in Dovecot.
- When the count reaches ``login_max_failures`` the address is blocked for ``login_block_time``:
  its logins are refused without looking at the password, with a temporary error (IMAP ``NO
  [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``, SMTP ``454 4.7.0``), so mail clients keep the stored
  password instead of asking the user for a new one.
- Loopback, ``mynetworks`` and ``login_trusted_networks`` are never delayed, counted or blocked.

Every failure, exempt or not, is logged in the shapes the stock fail2ban filters match (tested
with ``fail2ban-regex``): for all protocols the line Dovecot's auth process writes, under the tag
``dovecot`` (filter ``dovecot``, jail ``[dovecot]``)::

    dovecot[4242]: auth: shadow(boss,192.0.2.7,<imap>): Password mismatch or unknown user

and for SMTP AUTH also Postfix's, under the tag ``postfix-mailsuite/smtpd`` (filter
``postfix[mode=auth]``, jail ``[postfix-sasl]``; ``postfix-NAME`` is Postfix's own multi-instance
naming, which the filter accepts)::

    postfix-mailsuite/submission/smtpd[4242]: warning: unknown[192.0.2.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=boss

(The protocols' own ``mailsuite/imap-login`` lines are not matched by the stock filters, so
each failure counts exactly once per jail.)

The protocols need no code of their own for this: ``policy.guard(portal, ip, proto)`` gives a
per-connection portal whose ``login`` waits out the penalty, refuses blocked addresses with
``LoginBlocked``, and records successes and failures.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.cred import checkers, credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger()

#: Dovecot's AUTH_PENALTY_MAX_SECS: the longest wait before a password is checked.
MAX_PENALTY = 15.0
#: Addresses remembered at most; beyond that the least recently seen are forgotten first.
MAX_TRACKED = 100_000

#: Postfix's syslog tag for SMTP AUTH warnings, per listener (master.cf service names).
POSTFIX_IDENTS = {
    "smtp": "postfix-mailsuite/smtpd",
    "submission": "postfix-mailsuite/submission/smtpd",
    "smtps": "postfix-mailsuite/smtps/smtpd",
}
#: Postfix logs the last base64 challenge after a failed LOGIN ("Password:").
_LOGIN_CHALLENGE = "UGFzc3dvcmQ6"
#: Characters that could let a user name move the address fail2ban reads from a log line.
_UNSAFE = re.compile(r"[^\x21-\x7e]|[(),<>\[\]]")


class LoginBlocked(Exception):
    """Logins from this address are refused for ``seconds`` more seconds (too many failures)."""

    def __init__(self, ip: str, seconds: float) -> None:
        super().__init__(f"too many failed logins from {ip}; blocked for {math.ceil(seconds)} s")
        self.ip = ip
        self.seconds = seconds


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_key(ip: str) -> str | None:
    """What failures are counted under: the IPv4 address, or the IPv6 /64; None if not an IP.

    ``::ffff:a.b.c.d`` (an IPv4 client of a dual-stack listener) counts as ``a.b.c.d``.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def safe_name(name: str | bytes) -> str:
    """A user name fit for a log line that fail2ban parses: printable ASCII without spaces,
    brackets, parentheses, commas or angle brackets (those become ``?``), at most 64 chars."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return _UNSAFE.sub("?", name[:64])


@dataclass
class _Record:
    score: float  # failures not yet forgotten, as of ``when``
    when: float
    blocked_until: float = 0.0


class AuthPolicy:
    """Failure counts and blocks per client address; all methods run on the reactor thread.

    ``clock`` is an IReactorTime (a ``task.Clock`` in tests); ``maillog`` a MailLog;
    ``passdb`` ("shadow" or "pam") names the password database in the Dovecot-shaped lines.
    """

    def __init__(
        self,
        *,
        clock: Any,
        maillog: Any,
        failure_delay: float = 2.0,
        max_failures: int = 10,
        block_time: float = 900.0,
        trusted: list[Network] | tuple[Network, ...] = (),
        passdb: str = "shadow",
    ) -> None:
        self.clock = clock
        self.maillog = maillog
        self.failure_delay = failure_delay
        self.max_failures = max_failures
        self.block_time = block_time
        self.trusted = list(trusted)
        self.passdb = passdb
        self._records: OrderedDict[str, _Record] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: Any, maillog: Any, clock: Any = None) -> AuthPolicy:
        """The policy of a mail.ini: ``[auth]`` knobs; mynetworks and login_trusted_networks
        are exempt."""
        if clock is None:
            from twisted.internet import reactor as clock
        auth = cfg.auth
        return cls(
            clock=clock, maillog=maillog, failure_delay=auth.auth_failure_delay,
            max_failures=auth.login_max_failures, block_time=auth.login_block_time,
            trusted=[*cfg.mail.mynetworks, *auth.login_trusted_networks], passdb=auth.passdb,
        )

    # -- state ---------------------------------------------------------------------------------

    def exempt(self, ip: str) -> bool:
        """True for loopback and trusted networks: never delayed, counted or blocked."""
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or any(address in net for net in self.trusted)

    def _leak_rate(self) -> float:
        """Failures forgotten per second."""
        return self.max_failures / self.block_time if self.block_time > 0 else math.inf

    def _current(self, key: str) -> _Record | None:
        """The record of ``key`` brought up to now; None (and forgotten) once it is empty."""
        record = self._records.get(key)
        if record is None:
            return None
        now = self.clock.seconds()
        record.score = max(0.0, record.score - (now - record.when) * self._leak_rate())
        record.when = now
        if record.score <= 0 and record.blocked_until <= now:
            del self._records[key]
            return None
        return record

    def failures(self, ip: str) -> int:
        """Failures from ``ip``'s address not yet forgotten (rounded up)."""
        key = address_key(ip)
        record = self._current(key) if key else None
        return math.ceil(record.score - 1e-9) if record else 0

    def blocked_for(self, ip: str) -> float:
        """Seconds until logins from ``ip`` are accepted again; 0 when not blocked."""
        key = address_key(ip)
        record = self._current(key) if key else None
        return max(0.0, record.blocked_until - self.clock.seconds()) if record else 0.0

    def penalty(self, ip: str) -> float:
        """Seconds a login from ``ip`` waits before its password is checked."""
        if self.exempt(ip):
            return 0.0
        count = self.failures(ip)
        if count == 0 or self.failure_delay <= 0:
            return 0.0
        return min(self.failure_delay * 2 ** min(count - 1, 16), MAX_PENALTY)

    # -- the API the login doors use -----------------------------------------------------------

    def check(self, ip: str) -> defer.Deferred[None]:
        """Fires (None) when a login from ``ip`` may proceed: at once, or after the penalty.
        Fails with ``LoginBlocked`` while the address is blocked. Cancellable."""
        if not self.exempt(ip):
            left = self.blocked_for(ip)
            if left > 0:
                return defer.fail(LoginBlocked(ip, left))
        wait = self.penalty(ip)
        if wait <= 0:
            return defer.succeed(None)
        return task.deferLater(self.clock, wait, lambda: None)

    def failed(
        self, ip: str, user: str | bytes, proto: str, *, mechanism: str = "PLAIN",
        client_name: str = "unknown",
    ) -> None:
        """A login from ``ip`` as ``user`` over ``proto`` (imap, pop3, smtp, submission, smtps)
        was refused: log it for fail2ban, count it, block the address at the limit."""
        self._log_failure(ip, safe_name(user), proto, mechanism.upper(), client_name)
        key = address_key(ip)
        if key is None or self.exempt(ip):
            return
        now = self.clock.seconds()
        record = self._current(key)
        if record is None:
            record = self._records[key] = _Record(0.0, now)
            self._forget_oldest()
        self._records.move_to_end(key)
        record.score += 1
        count = math.ceil(record.score - 1e-9)  # a failure counts until wholly forgotten
        if self.max_failures and count >= self.max_failures and record.blocked_until <= now:
            record.blocked_until = now + self.block_time
            self.maillog.write(
                "auth", f"rip={ip}: {self.max_failures} failed logins from {key}, "
                f"logins refused for {math.ceil(self.block_time)} secs")

    def succeeded(self, ip: str) -> None:
        """A login from ``ip`` succeeded: its failures are forgotten (as Dovecot's penalty)."""
        key = address_key(ip)
        record = self._current(key) if key else None
        if record is not None and record.blocked_until <= self.clock.seconds():
            del self._records[key]  # type: ignore[arg-type]

    def guard(self, portal: Any, ip: str, proto: str, client_name: str = "unknown") -> GuardedPortal:
        """A portal for one connection from ``ip`` that applies this policy to every login."""
        return GuardedPortal(portal, self, ip, proto, client_name)

    # -- internals -----------------------------------------------------------------------------

    def _forget_oldest(self) -> None:
        while len(self._records) > MAX_TRACKED:
            self._records.popitem(last=False)

    def _log_failure(self, ip: str, user: str, proto: str, mechanism: str, client: str) -> None:
        if self.passdb == "pam":
            reason = "pam_authenticate() failed: Authentication failure (password mismatch?)"
        else:
            reason = "Password mismatch or unknown user"
        self.maillog.emit("dovecot", f"auth: {self.passdb}({user},{ip},<{proto}>): {reason}")
        ident = POSTFIX_IDENTS.get(proto)
        if ident is not None:
            detail = _LOGIN_CHALLENGE if mechanism == "LOGIN" else "authentication failure"
            self.maillog.emit(
                ident, f"warning: {safe_name(client)}[{ip}]: SASL {mechanism} authentication "
                f"failed: {detail}, sasl_username={user}")


def _mechanism_of(creds: Any) -> str:
    """PLAIN or LOGIN (Twisted's SMTP credential classes say which); PLAIN for LOGIN/USER+PASS,
    which Dovecot logs as method=PLAIN too."""
    explicit = getattr(creds, "sasl_mechanism", None)
    if explicit:
        return str(explicit)
    return "LOGIN" if type(creds).__name__.startswith("LOGIN") else "PLAIN"


class GuardedPortal:
    """``portal.login`` for one connection, with the policy applied to password logins.

    Anonymous logins (MX traffic) pass straight through. Anything else first waits for
    ``policy.check``; an ``UnauthorizedLogin`` from the real portal is recorded as a failure,
    a success clears the address's count. Other errors (a checker that cannot reach its
    database) are passed on without counting.
    """

    def __init__(self, portal: Any, policy: AuthPolicy, ip: str, proto: str, client_name: str) -> None:
        self.portal = portal
        self.policy = policy
        self.ip = ip
        self.proto = proto
        self.client_name = client_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.portal, name)  # listCredentialsInterfaces, realm, ...

    def login(self, creds: Any, mind: Any, *interfaces: Any) -> defer.Deferred[Any]:
        if creds is checkers.ANONYMOUS or credentials.IAnonymous.providedBy(creds):
            return defer.maybeDeferred(self.portal.login, creds, mind, *interfaces)
        user = getattr(creds, "username", b"") or b""
        try:
            creds.client_ip = self.ip  # PAM_RHOST for the pam checker
        except AttributeError:
            pass

        def proceed(_: None) -> defer.Deferred[Any]:
            return defer.maybeDeferred(self.portal.login, creds, mind, *interfaces)

        def succeeded(result: Any) -> Any:
            self.policy.succeeded(self.ip)
            return result

        def failed(failure: Any) -> Any:
            if failure.check(UnauthorizedLogin):
                self.policy.failed(self.ip, user, self.proto, mechanism=_mechanism_of(creds),
                                   client_name=self.client_name)
            return failure

        d = self.policy.check(self.ip)
        d.addCallback(proceed)
        d.addCallbacks(succeeded, failed)
        return d
