"""Brute-force defence (mailsuite.auth.policy): delays, blocks, decay, exemptions, log lines."""

from __future__ import annotations

import ipaddress

from twisted.cred import checkers, credentials, portal
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.python import failure
from twisted.mail import smtp
from twisted.trial import unittest
from zope.interface import directlyProvides

from mailsuite.auth.policy import (
    MAX_PENALTY,
    MAX_USERS_PER_ADDRESS,
    AuthPolicy,
    LoginBlocked,
    address_key,
    safe_name,
)
from mailsuite.config import parse_config
from mailsuite.maillog import MailLog


def make_policy(**kw):
    clock = task.Clock()
    clock.advance(1_000_000)
    maillog = MailLog(None, "mail.example.test", now=clock.seconds)
    args = {"clock": clock, "maillog": maillog, "failure_delay": 2.0, "max_failures": 5,
            "block_time": 600.0}
    args.update(kw)
    return AuthPolicy(**args), clock, maillog


def fail(policy, ip, user="boss", proto="imap", **kw):
    """One attempt from ``ip`` whose password was refused (at once: no penalty waited out);
    ignored, as the protocols do, while the address is blocked."""
    attempt = policy.attempt(ip, user, proto)
    attempt.ready.addErrback(lambda f: f.trap(LoginBlocked))
    attempt.failed(**kw)


def succeed(policy, ip, user="boss"):
    """One attempt from ``ip`` as ``user`` that succeeded (ignored while blocked)."""
    attempt = policy.attempt(ip, user, "imap")
    attempt.ready.addErrback(lambda f: f.trap(LoginBlocked))
    attempt.succeeded()


def check(policy, ip):
    """When a login from ``ip`` could have its password checked; then it is abandoned (neither
    success nor failure), so probing changes no count."""
    attempt = policy.attempt(ip, "probe", "imap")

    def end(result):
        attempt.abandoned()
        return result

    return attempt.ready.addBoth(end)


class AddressKeyTests(unittest.TestCase):
    def test_ipv4_is_its_own_key(self):
        """An IPv4 client is counted under its address."""
        self.assertEqual(address_key("192.0.2.7"), "192.0.2.7")

    def test_ipv6_counts_by_slash_64(self):
        """IPv6 clients are counted by /64: one host usually owns the whole /64."""
        self.assertEqual(address_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64")
        self.assertNotEqual(address_key("2001:db8:1:3::1"), "2001:db8:1:2::/64")

    def test_ipv4_mapped_counts_as_ipv4(self):
        """A dual-stack listener's ::ffff:a.b.c.d is the IPv4 client a.b.c.d."""
        self.assertEqual(address_key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_not_an_address(self):
        """A non-IP peer (a unix socket) has no key and is never counted."""
        self.assertIsNone(address_key("/run/sock"))


class DelayAndBlockTests(unittest.TestCase):
    def test_first_login_is_not_delayed(self):
        """An address without failures is checked at once."""
        policy, _, _ = make_policy()
        self.assertIsNone(self.successResultOf(check(policy, "192.0.2.7")))

    def test_delay_after_a_failure(self):
        """After one failure the next login waits auth_failure_delay, not a moment less."""
        policy, clock, _ = make_policy()
        fail(policy, "192.0.2.7", "boss", "imap")
        d = check(policy, "192.0.2.7")
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))

    def test_delay_doubles_and_is_capped(self):
        """The delay doubles with each failure (2, 4, 8 s) and never exceeds 15 s."""
        policy, _, _ = make_policy(max_failures=0)
        delays = []
        for _ in range(6):
            fail(policy, "192.0.2.7", "boss", "pop3")
            delays.append(policy.penalty("192.0.2.7"))
        self.assertEqual(delays[:3], [2.0, 4.0, 8.0])
        self.assertEqual(delays[3:], [MAX_PENALTY] * 3)

    def test_zero_delay_turns_it_off(self):
        """auth_failure_delay = 0: failures are counted but nobody waits."""
        policy, _, _ = make_policy(failure_delay=0)
        fail(policy, "192.0.2.7", "boss", "pop3")
        self.assertEqual(policy.failures("192.0.2.7"), 1)
        self.successResultOf(check(policy, "192.0.2.7"))

    def test_block_at_max_failures_then_released(self):
        """login_max_failures failures block the address for login_block_time, then it may
        try again; the block is logged once."""
        policy, clock, maillog = make_policy()
        for _ in range(5):
            fail(policy, "192.0.2.7", "boss", "imap")
        failure = self.failureResultOf(check(policy, "192.0.2.7"), LoginBlocked)
        self.assertEqual(failure.value.seconds, 600.0)
        self.assertEqual(sum("logins refused for 600 secs" in line for line in maillog.lines), 1)
        clock.advance(599)
        self.failureResultOf(check(policy, "192.0.2.7"), LoginBlocked)
        clock.advance(1)
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)
        self.assertEqual(policy.failures("192.0.2.7"), 0)
        self.successResultOf(check(policy, "192.0.2.7"))

    def test_failures_while_blocked_do_not_extend_the_block(self):
        """A block ends login_block_time after it began, however often the client retries."""
        policy, clock, _ = make_policy()
        for _ in range(5):
            fail(policy, "192.0.2.7", "boss", "imap")
        clock.advance(300)
        fail(policy, "192.0.2.7", "boss", "imap")
        clock.advance(300)
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)

    def test_never_block_with_zero(self):
        """login_max_failures = 0: delays only, no blocks."""
        policy, _, _ = make_policy(max_failures=0)
        for _ in range(50):
            fail(policy, "192.0.2.7", "boss", "imap")
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)

    def test_failures_decay(self):
        """Failures are forgotten at max_failures per block_time: 5 per 600 s = one per 120 s,
        so occasional typos never add up to a block."""
        policy, clock, _ = make_policy()
        for _ in range(4):
            fail(policy, "192.0.2.7", "boss", "imap")
        clock.advance(120)
        self.assertEqual(policy.failures("192.0.2.7"), 3)
        clock.advance(360)
        self.assertEqual(policy.failures("192.0.2.7"), 0)
        for _ in range(4):
            fail(policy, "192.0.2.7", "boss", "imap")
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)

    def test_counted_across_protocols(self):
        """Failures over IMAP, POP3 and SMTP from one address add up."""
        policy, _, _ = make_policy()
        for proto in ("imap", "pop3", "smtp", "submission", "imap"):
            fail(policy, "192.0.2.7", "boss", proto)
        self.failureResultOf(check(policy, "192.0.2.7"), LoginBlocked)

    def test_ipv6_neighbours_share_a_count(self):
        """Two addresses of one /64 are one client; another /64 is not affected."""
        policy, _, _ = make_policy()
        for i in range(5):
            fail(policy, f"2001:db8:0:1::{i + 1}", "boss", "imap")
        self.failureResultOf(check(policy, "2001:db8:0:1::99"), LoginBlocked)
        self.successResultOf(check(policy, "2001:db8:0:2::1"))

    def test_other_addresses_unaffected(self):
        """A blocked address does not slow down anyone else."""
        policy, _, _ = make_policy()
        for _ in range(5):
            fail(policy, "192.0.2.7", "boss", "imap")
        self.successResultOf(check(policy, "192.0.2.8"))

    def test_success_clears_the_count(self):
        """A successful login forgets the address's failures (Dovecot's auth penalty)."""
        policy, _, _ = make_policy()
        fail(policy, "192.0.2.7", "boss", "imap")
        fail(policy, "192.0.2.7", "boss", "imap")
        succeed(policy, "192.0.2.7")
        self.assertEqual(policy.failures("192.0.2.7"), 0)
        self.successResultOf(check(policy, "192.0.2.7"))

    def test_success_does_not_lift_a_block(self):
        """succeeded() during a block (a login that started before it) leaves the block."""
        policy, _, _ = make_policy()
        for _ in range(5):
            fail(policy, "192.0.2.7", "boss", "imap")
        succeed(policy, "192.0.2.7")
        self.failureResultOf(check(policy, "192.0.2.7"), LoginBlocked)

    def test_delay_can_be_cancelled(self):
        """A client that disconnects while waiting: its Deferred cancels cleanly."""
        policy, clock, _ = make_policy()
        fail(policy, "192.0.2.7", "boss", "imap")
        d = check(policy, "192.0.2.7")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])


class ExemptTests(unittest.TestCase):
    def test_loopback_is_exempt(self):
        """The machine itself is never delayed or blocked (webmail, local scripts)."""
        policy, _, _ = make_policy()
        for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            for _ in range(10):
                fail(policy, ip, "boss", "imap")
            self.successResultOf(check(policy, ip))

    def test_trusted_networks_are_exempt_but_logged(self):
        """mynetworks / login_trusted_networks: never blocked, but every failure is logged."""
        net = ipaddress.ip_network("10.0.0.0/8")
        policy, _, maillog = make_policy(trusted=[net])
        for _ in range(10):
            fail(policy, "10.1.2.3", "boss", "imap")
        self.successResultOf(check(policy, "10.1.2.3"))
        self.assertEqual(sum("dovecot: auth: " in line for line in maillog.lines), 10)

    def test_from_config(self):
        """from_config reads [auth] and exempts mynetworks plus login_trusted_networks."""
        cfg = parse_config(
            "[mail]\nmyhostname = mail.example.test\nmynetworks = 192.168.0.0/16\n"
            "[auth]\nlogin_trusted_networks = 10.0.0.0/8\nauth_failure_delay = 3s\n"
            "login_max_failures = 4\nlogin_block_time = 1h\n", "mail.ini")
        policy = AuthPolicy.from_config(cfg, MailLog(None, "mail"), clock=task.Clock())
        self.assertEqual((policy.failure_delay, policy.max_failures, policy.block_time),
                         (3.0, 4, 3600.0))
        self.assertTrue(policy.exempt("192.168.4.5"))
        self.assertTrue(policy.exempt("10.9.9.9"))
        self.assertFalse(policy.exempt("192.0.2.7"))


class LogLineTests(unittest.TestCase):
    def test_dovecot_auth_line_for_every_protocol(self):
        """Each failure writes the line of Dovecot's auth process (fail2ban filter dovecot)."""
        policy, _, maillog = make_policy()
        fail(policy, "192.0.2.7", b"boss", "pop3")
        self.assertRegex(maillog.lines[-1], r" dovecot: auth: shadow\(boss,192\.0\.2\.7,"
                                            r"<pop3>\): Password mismatch")

    def test_pam_passdb_line(self):
        """With passdb = pam the line is Dovecot's pam_authenticate() failure."""
        policy, _, maillog = make_policy(passdb="pam")
        fail(policy, "192.0.2.7", "boss", "imap")
        self.assertIn("auth: pam(boss,192.0.2.7,<imap>): pam_authenticate() failed: "
                      "Authentication failure (password mismatch?)", maillog.lines[-1])

    def test_postfix_line_for_smtp_auth(self):
        """SMTP AUTH failures also write Postfix's SASL warning (filter postfix[mode=auth]):
        LOGIN ends with the base64 'Password:' challenge, as Postfix logs it."""
        policy, _, maillog = make_policy()
        fail(policy, "192.0.2.7", "boss", "submission", mechanism="LOGIN", client_name="unknown")
        self.assertRegex(
            maillog.lines[-1],
            r" postfix/submission/smtpd\[\d+\]: warning: unknown\[192\.0\.2\.7\]: "
            r"SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=boss$")
        fail(policy, "2001:db8::1", "boss", "smtp", mechanism="plain")
        self.assertIn("postfix/smtpd[", maillog.lines[-1])
        self.assertIn("unknown[2001:db8::1]: SASL PLAIN authentication failed: authentication "
                      "failure", maillog.lines[-1])

    def test_no_postfix_line_for_imap(self):
        """IMAP and POP3 failures write only the Dovecot line."""
        policy, _, maillog = make_policy()
        fail(policy, "192.0.2.7", "boss", "imap")
        self.assertEqual(len(maillog.lines), 1)

    def test_user_name_cannot_move_the_address(self):
        """A user name crafted to carry another address (commas, brackets, spaces, CR/LF)
        is neutralised, so fail2ban reads the real client's address."""
        policy, _, maillog = make_policy()
        fail(policy, "192.0.2.7", "x,198.51.100.1,y\r\nfoo bar>[1.1.1.1]", "smtp")
        for line in maillog.lines:
            self.assertNotIn("198.51.100.1,", line)
            self.assertNotIn("[1.1.1.1]", line)
            self.assertNotIn("\n", line)
        self.assertEqual(safe_name("a(b)c d"), "a?b?c?d")

    def test_maillog_escapes_control_characters(self):
        """MailLog.emit/write keep one event on one line whatever a client sent."""
        maillog = MailLog(None, "mail")
        maillog.write("imap-login", "user=<a\r\nMay  1 00:00:00 mail dovecot: x>")
        self.assertEqual(len(maillog.lines), 1)
        self.assertIn("user=<a\\x0d\\x0aMay", maillog.lines[0])


class _Checker:
    """A password checker for the guard tests: 'secret' opens every name; 'boom' errors."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def requestAvatarId(self, creds):
        if creds.password == b"boom":
            return defer.fail(RuntimeError("database down"))
        if creds.password == b"secret":
            return defer.succeed(creds.username)
        return defer.fail(UnauthorizedLogin())


class _Realm:
    def requestAvatar(self, avatar_id, mind, *interfaces):
        return (interfaces[0], avatar_id, lambda: None)


def make_portal():
    realm = _Realm()
    directlyProvides(realm, portal.IRealm)
    return portal.Portal(realm, [_Checker(), checkers.AllowAnonymousAccess()])


class GuardedPortalTests(unittest.TestCase):
    def setUp(self):
        self.policy, self.clock, self.maillog = make_policy()
        self.guard = self.policy.guard(make_portal(), "192.0.2.7", "imap")

    def login(self, password, user=b"boss"):
        creds = credentials.UsernamePassword(user, password)
        return self.guard.login(creds, None, smtp.IMessageDelivery)

    def test_success_passes_through(self):
        """A right password logs in as with the bare portal and clears the count."""
        fail(self.policy, "192.0.2.7", "boss", "imap")
        d = self.login(b"secret")
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d)[1], b"boss")
        self.assertEqual(self.policy.failures("192.0.2.7"), 0)

    def test_failure_is_counted_and_logged(self):
        """UnauthorizedLogin reaches the caller unchanged and is recorded with the user name."""
        self.failureResultOf(self.login(b"wrong"), UnauthorizedLogin)
        self.assertEqual(self.policy.failures("192.0.2.7"), 1)
        self.assertIn("shadow(boss,192.0.2.7,<imap>)", self.maillog.lines[-1])

    def test_second_attempt_waits(self):
        """The password of the attempt after a failure is only checked after the delay."""
        self.failureResultOf(self.login(b"wrong"), UnauthorizedLogin)
        d = self.login(b"secret")
        self.assertNoResult(d)
        self.clock.advance(2)
        self.successResultOf(d)

    def test_blocked_address_never_reaches_the_checker(self):
        """A blocked address gets LoginBlocked even with the right password."""
        for _ in range(5):
            fail(self.policy, "192.0.2.7", "boss", "imap")
        self.failureResultOf(self.login(b"secret"), LoginBlocked)

    def test_other_errors_are_not_counted(self):
        """A checker error (database down) is passed on and is not the client's failure."""
        self.failureResultOf(self.login(b"boom"), RuntimeError)
        self.assertEqual(self.policy.failures("192.0.2.7"), 0)

    def test_anonymous_passes_straight_through(self):
        """MX traffic (anonymous) is never delayed or blocked by password failures."""
        for _ in range(5):
            fail(self.policy, "192.0.2.7", "boss", "imap")
        d = self.guard.login(credentials.Anonymous(), None, smtp.IMessageDelivery)
        self.assertIs(self.successResultOf(d)[1], checkers.ANONYMOUS)

    def test_smtp_login_mechanism_is_logged(self):
        """Twisted's SMTP LOGIN credentials are logged as SASL LOGIN."""
        guard = self.policy.guard(make_portal(), "192.0.2.7", "submission")
        creds = smtp.LOGINCredentials()
        creds.username, creds.password = b"boss", b"wrong"
        self.failureResultOf(guard.login(creds, None, smtp.IMessageDelivery), UnauthorizedLogin)
        self.assertIn("SASL LOGIN authentication failed", self.maillog.lines[-1])


class ConfigKeyTests(unittest.TestCase):
    def parse(self, auth):
        return parse_config("[mail]\nmyhostname = mail.example.test\n[auth]\n" + auth, "mail.ini")

    def test_defaults(self):
        """Defaults: 2 s delay, block after 10 failures for 15 minutes, PAM service mailsuite."""
        auth = self.parse("").auth
        self.assertEqual((auth.auth_failure_delay, auth.login_max_failures, auth.login_block_time,
                          auth.pam_service), (2.0, 10, 900.0, "mailsuite"))

    def test_time_spellings(self):
        """Dovecot-style times: bare seconds, s/m/h/d and the long words."""
        for text, want in [("5", 5.0), ("5s", 5.0), ("2 secs", 2.0), ("15m", 900.0),
                           ("1 hour", 3600.0), ("1d", 86400.0), ("0", 0.0)]:
            self.assertEqual(self.parse(f"login_block_time = {text}\n").auth.login_block_time, want)

    def test_bad_values_are_refused(self):
        """Bad times, counts and PAM service names are reported together, each with its key."""
        from mailsuite.config import ConfigError

        error = self.assertRaises(ConfigError, self.parse,
                                  "auth_failure_delay = soon\nlogin_max_failures = -1\n"
                                  "pam_service = ../etc/shadow\n")
        self.assertEqual(len(error.errors), 3, error.errors)
        for key, line in zip(["pam_service", "auth_failure_delay", "login_max_failures"],
                             error.errors, strict=True):
            self.assertIn(f"[auth] {key}:", line)

    def test_passdb_pam_accepted(self):
        """passdb = pam is a supported choice now."""
        self.assertEqual(self.parse("passdb = pam\npam_service = mail-test\n").auth.pam_service,
                         "mail-test")


class _HeldChecker:
    """A checker whose verdicts the test gives: each password waits in ``pending`` until
    ``answer()``; 'secret' is right for every name."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self):
        self.pending = []  # (username, password, Deferred), in the order they were asked
        self.asked = 0

    def requestAvatarId(self, creds):
        d = defer.Deferred()
        self.asked += 1
        self.pending.append((creds.username, creds.password, d))
        return d

    def answer(self):
        """Give the verdict on the oldest password waiting."""
        user, password, d = self.pending.pop(0)
        if password == b"secret":
            d.callback(user)
        else:
            d.errback(UnauthorizedLogin())


class ConcurrentAttemptTests(unittest.TestCase):
    """Attempts sent at once (many connections, or one after another in one) from one address
    see each other: counted when they start, checked one at a time (S6 of issue 9)."""

    def setUp(self):
        self.policy, self.clock, self.maillog = make_policy(max_failures=4)
        self.checker = _HeldChecker()
        realm = _Realm()
        directlyProvides(realm, portal.IRealm)
        self.portal = portal.Portal(realm, [self.checker])
        self.results = []

    def login(self, password, user=b"boss", ip="192.0.2.7"):
        """A login on a new connection from ``ip``; its outcome lands in ``self.results``."""
        guard = self.policy.guard(self.portal, ip, "imap")
        d = guard.login(credentials.UsernamePassword(user, password), None, smtp.IMessageDelivery)
        index = len(self.results)
        self.results.append(None)

        def done(result):
            self.results[index] = "ok" if not isinstance(result, failure.Failure) else (
                result.trap(UnauthorizedLogin, LoginBlocked).__name__)

        d.addBoth(done)
        return d

    def next_call(self):
        """Run the clock to the next delayed call; how far that was."""
        wait = min(c.getTime() for c in self.clock.getDelayedCalls()) - self.clock.seconds()
        self.clock.advance(wait)
        return wait

    def run_out(self, limit=200):
        """Answer every password as it reaches the checker, letting the clock run (bounded)."""
        for _ in range(limit):
            if self.checker.pending:
                self.checker.answer()
            elif self.clock.getDelayedCalls():
                self.next_call()
            else:
                return

    def test_attempt_counts_as_it_starts(self):
        """An attempt whose password is being checked already counts, and the next one from
        the address does not reach the checker before the first has its verdict."""
        self.login(b"wrong1")
        self.login(b"wrong2")
        self.assertEqual(self.policy.failures("192.0.2.7"), 1)
        self.assertEqual(self.checker.asked, 1)
        self.checker.answer()
        self.assertEqual(self.checker.asked, 1)  # now the penalty of one failure
        self.clock.advance(1.9)
        self.assertEqual(self.checker.asked, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.checker.asked, 2)

    def test_parallel_burst_is_checked_at_most_max_failures_times(self):
        """100 wrong passwords at once and the right one among them: only login_max_failures
        passwords are checked, each after the penalty of those before it; the block is logged
        before the last of them has its verdict; the right password is refused unchecked."""
        for i in range(100):
            self.login(b"secret" if i == 50 else b"wrong%d" % i)
        self.assertEqual(self.checker.asked, 1)
        waits = []
        for _ in range(3):
            self.checker.answer()
            waits.append(self.next_call())
        self.assertEqual(waits, [2, 4, 8])
        self.assertEqual(self.checker.asked, 4)
        self.assertIn("4 login attempts from 192.0.2.7", self.maillog.lines[-1])
        self.assertEqual(self.results[4:], ["LoginBlocked"] * 96)
        self.checker.answer()
        self.assertEqual(self.results[:4], ["UnauthorizedLogin"] * 4)
        self.run_out()
        self.assertEqual(self.checker.asked, 4)
        self.failureResultOf(check(self.policy, "192.0.2.7"), LoginBlocked)

    def test_same_connection_one_after_another(self):
        """Logins through one connection's guard are counted the same way."""
        guard = self.policy.guard(self.portal, "192.0.2.7", "imap")
        ds = [guard.login(credentials.UsernamePassword(b"boss", b"w%d" % i), None,
                          smtp.IMessageDelivery) for i in range(10)]
        self.run_out()
        self.assertEqual(self.checker.asked, 4)
        for d in ds[4:]:
            self.failureResultOf(d, LoginBlocked)
        for d in ds[:4]:
            self.failureResultOf(d, UnauthorizedLogin)

    def test_right_password_on_several_connections_does_not_wait(self):
        """A client opening five connections with the right password: each success takes its
        attempt back, so none waits a penalty."""
        for _ in range(5):
            self.login(b"secret")
        for _ in range(5):
            self.checker.answer()
        self.assertEqual(self.results, ["ok"] * 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.policy.failures("192.0.2.7"), 0)

    def test_success_keeps_other_users_attempts(self):
        """An attacker who owns an account cannot clear the count of the account under
        attack by logging in to their own between guesses."""
        for _ in range(3):
            self.login(b"wrong", user=b"boss")
            self.run_out()
        self.login(b"secret", user=b"mallory")
        self.run_out()
        self.assertEqual(self.results[-1], "ok")
        self.assertEqual(self.policy.failures("192.0.2.7"), 3)
        self.login(b"wrong", user=b"boss")
        self.run_out()
        self.failureResultOf(check(self.policy, "192.0.2.7"), LoginBlocked)

    def test_success_that_reached_the_limit_lifts_its_block(self):
        """The attempt that reaches the limit blocks the address as it starts; when it turns
        out to be right, the count is below the limit again and the block goes."""
        for _ in range(3):
            self.login(b"wrong")
            self.run_out()
        self.login(b"secret")
        self.assertGreater(self.policy.blocked_for("192.0.2.7"), 0)
        self.run_out()
        self.assertEqual(self.results[-1], "ok")
        self.assertEqual(self.policy.blocked_for("192.0.2.7"), 0)
        self.assertIn("accepted again", self.maillog.lines[-1])

    def test_names_kept_apart_are_bounded(self):
        """An address trying ever new names keeps at most MAX_USERS_PER_ADDRESS of them apart;
        the rest share one part, and a success among them takes back only its own attempt."""
        policy, _, _ = make_policy(max_failures=1000, block_time=10**9, failure_delay=0)
        for i in range(MAX_USERS_PER_ADDRESS + 10):
            fail(policy, "192.0.2.7", f"user{i}")
        record = policy._records["192.0.2.7"]
        self.assertEqual(len(record.users), MAX_USERS_PER_ADDRESS + 1)
        succeed(policy, "192.0.2.7", "user70")
        self.assertEqual(policy.failures("192.0.2.7"), MAX_USERS_PER_ADDRESS + 10)
        succeed(policy, "192.0.2.7", "user0")
        self.assertEqual(policy.failures("192.0.2.7"), MAX_USERS_PER_ADDRESS + 9)

    def test_cancelled_while_waiting_is_not_counted(self):
        """A client gone before its password was checked leaves no count and lets the next
        attempt have its turn."""
        self.login(b"wrong")
        self.checker.answer()
        waiting = self.login(b"wrong")
        self.login(b"secret", user=b"carol")
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertEqual(self.policy.failures("192.0.2.7"), 2)  # the first one and carol's
        self.clock.advance(2)
        self.checker.answer()
        self.assertEqual(self.results, ["UnauthorizedLogin", None, "ok"])
        self.assertEqual(self.policy.failures("192.0.2.7"), 1)
        self.assertEqual(self.checker.asked, 2)

    def test_exempt_addresses_do_not_take_turns(self):
        """Loopback logins are checked side by side, never counted."""
        for _ in range(20):
            self.login(b"wrong", ip="127.0.0.1")
        self.assertEqual(self.checker.asked, 20)
        self.run_out()
        self.assertEqual(self.results, ["UnauthorizedLogin"] * 20)
        self.assertEqual(self.policy.failures("127.0.0.1"), 0)

    def test_other_addresses_are_not_held_up(self):
        """Another address's logins do not wait behind this one's queue."""
        self.login(b"wrong")
        self.login(b"wrong")
        self.login(b"secret", ip="192.0.2.8")
        self.assertEqual(self.checker.asked, 2)
