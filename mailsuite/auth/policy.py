"""Brute-force defence shared by every login door (POP3, IMAP, SMTP AUTH), and the log lines
fail2ban's stock filters act on.

One ``AuthPolicy`` per server counts login attempts per client address: an IPv4 address, or
the /64 an IPv6 address belongs to (one host usually owns a whole /64), counted across all
protocols. An attempt is counted when it starts, as a failure until it succeeds; a success takes
back the attempts of its own user from that address, not those of other users (an attacker who
owns one account cannot clear the count of the one under attack). Attempts are forgotten
gradually, ``login_max_failures`` of them per ``login_block_time`` (a leaky bucket), so an
occasional typo never adds up.

- Logins from one address take turns: one password is checked at a time; the next waits until
  the running one has its verdict, then ``auth_failure_delay`` if one attempt is counted,
  doubling with each further one, at most 15 seconds (Dovecot's auth penalty). So attempts sent
  at once, over many connections or pipelined in one, wait as if they came one after another.
  A client's several connections with the right password (Thunderbird opens five) do not wait:
  each success takes its attempt back before the next one's turn.
- The attempt that brings the count to ``login_max_failures`` blocks the address for
  ``login_block_time`` as it starts (logged then): the attempts waiting behind it and all later
  ones are refused without looking at the password, with a temporary error (IMAP ``NO
  [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``, SMTP ``454 4.7.0``), so mail clients keep the stored
  password instead of asking the user for a new one. (If that very attempt succeeds, the count
  is below the limit again and the block is lifted.)
- Loopback, ``mynetworks`` and ``login_trusted_networks`` are never delayed, counted, queued or
  blocked.

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
per-connection portal whose ``login`` is one ``attempt``: it waits for its turn and penalty,
refuses blocked addresses with ``LoginBlocked``, and records successes and failures.
"""  # noqa: E501 - the log line above is quoted whole, as fail2ban reads it

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from twisted.cred import checkers, credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.config import Config
from mailsuite.net import Network, in_networks, parse_ip

log = Logger()

#: Dovecot's AUTH_PENALTY_MAX_SECS: the longest wait before a password is checked.
MAX_PENALTY = 15.0
#: Addresses remembered at most; beyond that the least recently seen are forgotten first.
MAX_TRACKED = 100_000
#: Login names whose attempts one address keeps apart; attempts for further names are counted
#: together, and no success takes those back.
MAX_USERS_PER_ADDRESS = 64

#: Postfix's syslog tag for SMTP AUTH warnings, per listener (master.cf service names).
POSTFIX_IDENTS = {  # as Debian's master.cf names them (-o syslog_name=postfix/submission)
    "smtp": "smtpd",
    "submission": "submission/smtpd",
    "smtps": "smtps/smtpd",
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


def address_key(ip: str) -> str | None:
    """What failures are counted under: the IPv4 address, or the IPv6 /64; None if not an IP.

    ``::ffff:a.b.c.d`` (an IPv4 client of a dual-stack listener) counts as ``a.b.c.d``.
    """
    address = parse_ip(ip)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return None if address is None else str(address)


def safe_name(name: str | bytes) -> str:
    """A user name fit for a log line that fail2ban parses: printable ASCII without spaces,
    brackets, parentheses, commas or angle brackets (those become ``?``), at most 64 chars."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return _UNSAFE.sub("?", name[:64])


@dataclass
class _Record:
    """One address: its attempts not yet forgotten, who they were for, and its login queue."""

    score: float  # attempts not yet forgotten (counted when they start), as of ``when``
    when: float
    blocked_until: float = 0.0
    users: dict[str | None, float] = field(default_factory=dict)  # each name's part of score
    queue: deque[Attempt] = field(default_factory=deque)  # waiting for their turn
    active: Attempt | None = None  # waiting out its penalty, or its password being checked

    def busy(self) -> bool:
        return self.active is not None or bool(self.queue)

    def count(self) -> int:
        return math.ceil(self.score - 1e-9)  # an attempt counts until wholly forgotten

    def take_back(self, user: str | None, amount: float) -> None:
        """Remove up to ``amount`` of ``user``'s part (all of it: ``math.inf``)."""
        part = self.users.pop(user, 0.0)
        taken = min(part, amount)
        self.score = max(0.0, self.score - taken)
        if part - taken > 1e-9:
            self.users[user] = part - taken


class AuthPolicy:
    """Attempt counts, login queues and blocks per client address; all on the reactor thread.

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
        self._due: deque[str] = deque()  # addresses whose next attempt may start (_next_turn)
        self._turning = False

    @classmethod
    def from_config(cls, cfg: Config, maillog: Any, clock: Any) -> AuthPolicy:
        """The policy of a mail.ini: ``[auth]`` knobs; mynetworks and login_trusted_networks
        are exempt. ``clock``: an IReactorTime (tap.py's reactor)."""
        auth = cfg.auth
        return cls(
            clock=clock, maillog=maillog, failure_delay=auth.auth_failure_delay,
            max_failures=auth.login_max_failures, block_time=auth.login_block_time,
            trusted=[*cfg.mail.mynetworks, *auth.login_trusted_networks], passdb=auth.passdb,
        )

    # -- state ---------------------------------------------------------------------------------

    def exempt(self, ip: str) -> bool:
        """True for loopback and trusted networks: never delayed, counted or blocked."""
        return in_networks(ip, self.trusted, loopback=True)

    def _leak_rate(self) -> float:
        """Attempts forgotten per second."""
        return self.max_failures / self.block_time if self.block_time > 0 else math.inf

    def _current(self, key: str) -> _Record | None:
        """The record of ``key`` brought up to now; None (and forgotten) once it is empty."""
        record = self._records.get(key)
        if record is None:
            return None
        now = self.clock.seconds()
        before = record.score
        record.score = max(0.0, before - (now - record.when) * self._leak_rate())
        record.when = now
        if record.score < before:  # each user's part is forgotten in proportion
            kept = record.score / before
            record.users = {
                u: part * kept for u, part in record.users.items() if part * kept > 1e-9
            }
        if record.score <= 0 and record.blocked_until <= now and not record.busy():
            del self._records[key]
            return None
        return record

    def failures(self, ip: str) -> int:
        """Attempts from ``ip``'s address not yet forgotten (rounded up): the failed ones and
        those still running; a success takes back its user's."""
        key = address_key(ip)
        record = self._current(key) if key else None
        return record.count() if record else 0

    def blocked_for(self, ip: str) -> float:
        """Seconds until logins from ``ip`` are accepted again; 0 when not blocked."""
        key = address_key(ip)
        record = self._current(key) if key else None
        return max(0.0, record.blocked_until - self.clock.seconds()) if record else 0.0

    def penalty(self, ip: str) -> float:
        """Seconds the next login from ``ip`` waits, once its turn comes, before its password
        is checked."""
        if self.exempt(ip):
            return 0.0
        return self._penalty(self.failures(ip))

    def _penalty(self, count: int) -> float:
        if count == 0 or self.failure_delay <= 0:
            return 0.0
        return min(self.failure_delay * 2 ** min(count - 1, 16), MAX_PENALTY)

    # -- the API the login doors use -----------------------------------------------------------

    def attempt(self, ip: str, user: str | bytes, proto: str) -> Attempt:
        """A login from ``ip`` as ``user`` over ``proto`` (imap, pop3, smtp, submission, smtps)
        begins. Its ``ready`` fires (None) when the password may be checked; then the caller
        reports the outcome with ``failed``, ``succeeded`` or ``abandoned``.

        From a non-exempt address, attempts take turns: one at a time is checked, the next
        starts when it has ended, and is counted from that moment (a success takes its user's
        attempts back). Its password is checked after the penalty of the attempts counted
        before it. The attempt that reaches ``login_max_failures`` blocks the address at once:
        those waiting behind it and any later ones fail with ``LoginBlocked``.
        """
        name = user.decode("utf-8", "replace") if isinstance(user, bytes) else user
        attempt = Attempt(self, ip, name, proto)
        key = address_key(ip)
        if key is None or self.exempt(ip):
            attempt.ready.callback(None)
            return attempt
        record = self._current(key)
        if record is None:
            record = self._records[key] = _Record(0.0, self.clock.seconds())
            self._forget_oldest()
        self._records.move_to_end(key)
        attempt.key = key
        if record.blocked_until > self.clock.seconds():
            attempt.refuse(record.blocked_until - self.clock.seconds())
            return attempt
        record.queue.append(attempt)
        self._next_turn(key)
        return attempt

    def guard(
        self, portal: Any, ip: str, proto: str, client_name: str = "unknown"
    ) -> GuardedPortal:
        """A portal for one connection from ``ip`` that applies this policy to every login."""
        return GuardedPortal(portal, self, ip, proto, client_name)

    # -- internals -----------------------------------------------------------------------------

    def _next_turn(self, key: str) -> None:
        """Start the first waiting attempt of ``key`` unless one is running. A loop, not a
        recursion: attempts answered at once (a cached password) must not grow the stack."""
        self._due.append(key)
        if self._turning:
            return
        self._turning = True
        try:
            while self._due:
                self._start_next(self._due.popleft())
        finally:
            self._turning = False

    def _start_next(self, key: str) -> None:
        record = self._current(key)
        if record is None or record.active is not None or not record.queue:
            return
        now = self.clock.seconds()
        if record.blocked_until > now:
            waiting, record.queue = record.queue, deque()
            for attempt in waiting:
                attempt.refuse(record.blocked_until - now)
            return
        attempt = record.queue.popleft()
        record.active = attempt
        wait = self._penalty(record.count())
        record.score += 1  # counted as it starts: a failure until it is known to succeed
        if attempt.user not in record.users and len(record.users) >= MAX_USERS_PER_ADDRESS:
            attempt.counted_as = None
        record.users[attempt.counted_as] = record.users.get(attempt.counted_as, 0.0) + 1
        if self.max_failures and record.count() >= self.max_failures:
            self._block(key, record, attempt)
        attempt.start(wait)

    def _block(self, key: str, record: _Record, by: Attempt) -> None:
        """Refuse logins from ``key`` for ``block_time``; ``by`` (the attempt that reached the
        limit) still runs."""
        record.blocked_until = self.clock.seconds() + self.block_time
        by.started_block = True
        self.maillog.write(
            "auth", f"rip={by.ip}: {self.max_failures} login attempts from {key}, "
            f"logins refused for {math.ceil(self.block_time)} secs")
        waiting, record.queue = record.queue, deque()
        for attempt in waiting:
            attempt.refuse(self.block_time)

    def _finish(self, attempt: Attempt, take_back: float) -> None:
        """``attempt`` ended; ``take_back`` of its user's count is returned (0 for a failure,
        1 for an attempt whose password was never judged, everything for a success)."""
        assert attempt.key is not None
        record = self._current(attempt.key)
        if record is None:
            return
        if attempt in record.queue:  # abandoned before its turn: it was never counted
            record.queue.remove(attempt)
            return
        if record.active is not attempt:
            return
        record.active = None
        if take_back:
            if attempt.counted_as is None:  # counted with others: take back its own only
                take_back = min(take_back, 1.0)
            record.take_back(attempt.counted_as, take_back)
            if attempt.started_block and record.count() < self.max_failures:
                record.blocked_until = 0.0  # the limit was reached only by presuming a failure
                self.maillog.write(
                    "auth",
                    f"rip={attempt.ip}: the attempt that reached the limit "
                    f"did not fail, logins from {attempt.key} accepted again",
                )
        self._next_turn(attempt.key)

    def _forget_oldest(self) -> None:
        """Forget the least recently seen addresses beyond MAX_TRACKED (not those with logins
        under way: their queue must go on)."""
        for _ in range(len(self._records)):
            if len(self._records) <= MAX_TRACKED:
                return
            key, record = self._records.popitem(last=False)
            if record.busy():
                self._records[key] = record

    def _log_failure(self, ip: str, user: str, proto: str, mechanism: str, client: str) -> None:
        if self.passdb == "pam":
            reason = "pam_authenticate() failed: Authentication failure (password mismatch?)"
        else:
            reason = "Password mismatch or unknown user"
        self.maillog.write("auth", f"{self.passdb}({user},{ip},<{proto}>): {reason}")
        ident = POSTFIX_IDENTS.get(proto)
        if ident is not None:
            detail = _LOGIN_CHALLENGE if mechanism == "LOGIN" else "authentication failure"
            self.maillog.write(
                ident, f"warning: {safe_name(client)}[{ip}]: SASL {mechanism} authentication "
                f"failed: {detail}, sasl_username={user}")


class Attempt:
    """One login under the policy (made by ``AuthPolicy.attempt``): ``ready`` fires when its
    password may be checked (or fails with ``LoginBlocked``); cancelling it abandons the attempt.
    Exactly one of ``failed``, ``succeeded`` or ``abandoned`` reports how it ended (later calls
    are ignored)."""

    def __init__(self, policy: AuthPolicy, ip: str, user: str, proto: str) -> None:
        self.policy, self.ip, self.user, self.proto = policy, ip, user, proto
        self.key: str | None = None  # the address it is counted under; None when exempt
        self.counted_as: str | None = user  # its part of the count (None: the shared part)
        self.started_block = False
        self.ended = False
        self._wait: Any = None  # the IDelayedCall of the penalty
        self.ready: defer.Deferred[None] = defer.Deferred(lambda _: self.abandoned())

    def start(self, wait: float) -> None:
        """Its turn: the password may be checked after ``wait`` seconds."""
        if wait <= 0:
            self.ready.callback(None)
        else:
            self._wait = self.policy.clock.callLater(wait, self._waited)

    def _waited(self) -> None:
        self._wait = None
        self.ready.callback(None)

    def refuse(self, seconds: float) -> None:
        self.ended = True
        self.ready.errback(LoginBlocked(self.ip, seconds))

    def failed(self, *, mechanism: str = "PLAIN", client_name: str = "unknown") -> None:
        """The password was refused: log it for fail2ban; it stays counted."""
        if not self.ended:
            self.policy._log_failure(self.ip, safe_name(self.user), self.proto,
                                     mechanism.upper(), client_name)
        self._end(0.0)

    def succeeded(self) -> None:
        """The login succeeded: this user's attempts from the address are forgotten (not the
        other users')."""
        self._end(math.inf)

    def abandoned(self) -> None:
        """Ended without a verdict on the password (client gone, checker error): not counted."""
        self._end(1.0)

    def _end(self, take_back: float) -> None:
        if self.ended:
            return
        self.ended = True
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
            self._wait = None
        if self.key is not None:
            self.policy._finish(self, take_back)


def _mechanism_of(creds: Any) -> str:
    """PLAIN or LOGIN (Twisted's SMTP credential classes say which); PLAIN for LOGIN/USER+PASS,
    which Dovecot logs as method=PLAIN too."""
    explicit = getattr(creds, "sasl_mechanism", None)
    if explicit:
        return str(explicit)
    return "LOGIN" if type(creds).__name__.startswith("LOGIN") else "PLAIN"


class GuardedPortal:
    """``portal.login`` for one connection, with the policy applied to password logins.

    Anonymous logins (MX traffic) pass straight through. Anything else is an ``attempt`` of the
    policy: its password goes to the real portal when the policy says so; an
    ``UnauthorizedLogin`` is recorded as a failure, a success forgets this user's attempts.
    Other errors (a checker that cannot reach its database) and a cancelled login are passed on
    without counting.
    """

    def __init__(
        self, portal: Any, policy: AuthPolicy, ip: str, proto: str, client_name: str
    ) -> None:
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
        with contextlib.suppress(AttributeError):
            creds.client_ip = self.ip  # PAM_RHOST for the pam checker
            creds.service = self.proto  # what the privsep master is told (CheckPassword)
        attempt = self.policy.attempt(self.ip, getattr(creds, "username", b"") or b"", self.proto)

        def proceed(_: None) -> defer.Deferred[Any]:
            return defer.maybeDeferred(self.portal.login, creds, mind, *interfaces)

        def succeeded(result: Any) -> Any:
            attempt.succeeded()
            return result

        def failed(failure: Any) -> Any:
            if failure.check(UnauthorizedLogin):
                attempt.failed(mechanism=_mechanism_of(creds), client_name=self.client_name)
            else:
                attempt.abandoned()
            return failure

        d = attempt.ready
        d.addCallback(proceed)
        d.addCallbacks(succeeded, failed)
        return d
