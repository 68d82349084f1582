"""Brute-force defence (mailsuite.authpolicy): delays, blocks, decay, exemptions, log lines."""

from __future__ import annotations

import ipaddress

from twisted.cred import checkers, credentials, portal
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.mail import smtp
from twisted.trial import unittest
from zope.interface import directlyProvides

from mailsuite.authpolicy import (
    MAX_PENALTY,
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
        self.assertIsNone(self.successResultOf(policy.check("192.0.2.7")))

    def test_delay_after_a_failure(self):
        """After one failure the next login waits auth_failure_delay, not a moment less."""
        policy, clock, _ = make_policy()
        policy.failed("192.0.2.7", "boss", "imap")
        d = policy.check("192.0.2.7")
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))

    def test_delay_doubles_and_is_capped(self):
        """The delay doubles with each failure (2, 4, 8 s) and never exceeds 15 s."""
        policy, _, _ = make_policy(max_failures=0)
        delays = []
        for _ in range(6):
            policy.failed("192.0.2.7", "boss", "pop3")
            delays.append(policy.penalty("192.0.2.7"))
        self.assertEqual(delays[:3], [2.0, 4.0, 8.0])
        self.assertEqual(delays[3:], [MAX_PENALTY] * 3)

    def test_zero_delay_turns_it_off(self):
        """auth_failure_delay = 0: failures are counted but nobody waits."""
        policy, _, _ = make_policy(failure_delay=0)
        policy.failed("192.0.2.7", "boss", "pop3")
        self.assertEqual(policy.failures("192.0.2.7"), 1)
        self.successResultOf(policy.check("192.0.2.7"))

    def test_block_at_max_failures_then_released(self):
        """login_max_failures failures block the address for login_block_time, then it may
        try again; the block is logged once."""
        policy, clock, maillog = make_policy()
        for _ in range(5):
            policy.failed("192.0.2.7", "boss", "imap")
        failure = self.failureResultOf(policy.check("192.0.2.7"), LoginBlocked)
        self.assertEqual(failure.value.seconds, 600.0)
        self.assertEqual(sum("logins refused for 600 secs" in line for line in maillog.lines), 1)
        clock.advance(599)
        self.failureResultOf(policy.check("192.0.2.7"), LoginBlocked)
        clock.advance(1)
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)
        self.assertEqual(policy.failures("192.0.2.7"), 0)
        self.successResultOf(policy.check("192.0.2.7"))

    def test_failures_while_blocked_do_not_extend_the_block(self):
        """A block ends login_block_time after it began, however often the client retries."""
        policy, clock, _ = make_policy()
        for _ in range(5):
            policy.failed("192.0.2.7", "boss", "imap")
        clock.advance(300)
        policy.failed("192.0.2.7", "boss", "imap")
        clock.advance(300)
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)

    def test_never_block_with_zero(self):
        """login_max_failures = 0: delays only, no blocks."""
        policy, _, _ = make_policy(max_failures=0)
        for _ in range(50):
            policy.failed("192.0.2.7", "boss", "imap")
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)

    def test_failures_decay(self):
        """Failures are forgotten at max_failures per block_time: 5 per 600 s = one per 120 s,
        so occasional typos never add up to a block."""
        policy, clock, _ = make_policy()
        for _ in range(4):
            policy.failed("192.0.2.7", "boss", "imap")
        clock.advance(120)
        self.assertEqual(policy.failures("192.0.2.7"), 3)
        clock.advance(360)
        self.assertEqual(policy.failures("192.0.2.7"), 0)
        for _ in range(4):
            policy.failed("192.0.2.7", "boss", "imap")
        self.assertEqual(policy.blocked_for("192.0.2.7"), 0)

    def test_counted_across_protocols(self):
        """Failures over IMAP, POP3 and SMTP from one address add up."""
        policy, _, _ = make_policy()
        for proto in ("imap", "pop3", "smtp", "submission", "imap"):
            policy.failed("192.0.2.7", "boss", proto)
        self.failureResultOf(policy.check("192.0.2.7"), LoginBlocked)

    def test_ipv6_neighbours_share_a_count(self):
        """Two addresses of one /64 are one client; another /64 is not affected."""
        policy, _, _ = make_policy()
        for i in range(5):
            policy.failed(f"2001:db8:0:1::{i + 1}", "boss", "imap")
        self.failureResultOf(policy.check("2001:db8:0:1::99"), LoginBlocked)
        self.successResultOf(policy.check("2001:db8:0:2::1"))

    def test_other_addresses_unaffected(self):
        """A blocked address does not slow down anyone else."""
        policy, _, _ = make_policy()
        for _ in range(5):
            policy.failed("192.0.2.7", "boss", "imap")
        self.successResultOf(policy.check("192.0.2.8"))

    def test_success_clears_the_count(self):
        """A successful login forgets the address's failures (Dovecot's auth penalty)."""
        policy, _, _ = make_policy()
        policy.failed("192.0.2.7", "boss", "imap")
        policy.failed("192.0.2.7", "boss", "imap")
        policy.succeeded("192.0.2.7")
        self.assertEqual(policy.failures("192.0.2.7"), 0)
        self.successResultOf(policy.check("192.0.2.7"))

    def test_success_does_not_lift_a_block(self):
        """succeeded() during a block (a login that started before it) leaves the block."""
        policy, _, _ = make_policy()
        for _ in range(5):
            policy.failed("192.0.2.7", "boss", "imap")
        policy.succeeded("192.0.2.7")
        self.failureResultOf(policy.check("192.0.2.7"), LoginBlocked)

    def test_delay_can_be_cancelled(self):
        """A client that disconnects while waiting: its Deferred cancels cleanly."""
        policy, clock, _ = make_policy()
        policy.failed("192.0.2.7", "boss", "imap")
        d = policy.check("192.0.2.7")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])


class ExemptTests(unittest.TestCase):
    def test_loopback_is_exempt(self):
        """The machine itself is never delayed or blocked (webmail, local scripts)."""
        policy, _, _ = make_policy()
        for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            for _ in range(10):
                policy.failed(ip, "boss", "imap")
            self.successResultOf(policy.check(ip))

    def test_trusted_networks_are_exempt_but_logged(self):
        """mynetworks / login_trusted_networks: never blocked, but every failure is logged."""
        net = ipaddress.ip_network("10.0.0.0/8")
        policy, _, maillog = make_policy(trusted=[net])
        for _ in range(10):
            policy.failed("10.1.2.3", "boss", "imap")
        self.successResultOf(policy.check("10.1.2.3"))
        self.assertEqual(sum("dovecot[" in line for line in maillog.lines), 10)

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
        policy.failed("192.0.2.7", b"boss", "pop3")
        self.assertRegex(maillog.lines[-1], r" dovecot\[\d+\]: auth: shadow\(boss,192\.0\.2\.7,"
                                            r"<pop3>\): Password mismatch")

    def test_pam_passdb_line(self):
        """With passdb = pam the line is Dovecot's pam_authenticate() failure."""
        policy, _, maillog = make_policy(passdb="pam")
        policy.failed("192.0.2.7", "boss", "imap")
        self.assertIn("auth: pam(boss,192.0.2.7,<imap>): pam_authenticate() failed: "
                      "Authentication failure (password mismatch?)", maillog.lines[-1])

    def test_postfix_line_for_smtp_auth(self):
        """SMTP AUTH failures also write Postfix's SASL warning (filter postfix[mode=auth]):
        LOGIN ends with the base64 'Password:' challenge, as Postfix logs it."""
        policy, _, maillog = make_policy()
        policy.failed("192.0.2.7", "boss", "submission", mechanism="LOGIN", client_name="unknown")
        self.assertRegex(
            maillog.lines[-1],
            r" postfix-mailsuite/submission/smtpd\[\d+\]: warning: unknown\[192\.0\.2\.7\]: "
            r"SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=boss$")
        policy.failed("2001:db8::1", "boss", "smtp", mechanism="plain")
        self.assertIn("postfix-mailsuite/smtpd[", maillog.lines[-1])
        self.assertIn("unknown[2001:db8::1]: SASL PLAIN authentication failed: authentication "
                      "failure", maillog.lines[-1])

    def test_no_postfix_line_for_imap(self):
        """IMAP and POP3 failures write only the Dovecot line."""
        policy, _, maillog = make_policy()
        policy.failed("192.0.2.7", "boss", "imap")
        self.assertEqual(len(maillog.lines), 1)

    def test_user_name_cannot_move_the_address(self):
        """A user name crafted to carry another address (commas, brackets, spaces, CR/LF)
        is neutralised, so fail2ban reads the real client's address."""
        policy, _, maillog = make_policy()
        policy.failed("192.0.2.7", "x,198.51.100.1,y\r\nfoo bar>[1.1.1.1]", "smtp")
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
        return self.guard.login(credentials.UsernamePassword(user, password), None, smtp.IMessageDelivery)

    def test_success_passes_through(self):
        """A right password logs in as with the bare portal and clears the count."""
        self.policy.failed("192.0.2.7", "boss", "imap")
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
            self.policy.failed("192.0.2.7", "boss", "imap")
        self.failureResultOf(self.login(b"secret"), LoginBlocked)

    def test_other_errors_are_not_counted(self):
        """A checker error (database down) is passed on and is not the client's failure."""
        self.failureResultOf(self.login(b"boom"), RuntimeError)
        self.assertEqual(self.policy.failures("192.0.2.7"), 0)

    def test_anonymous_passes_straight_through(self):
        """MX traffic (anonymous) is never delayed or blocked by password failures."""
        for _ in range(5):
            self.policy.failed("192.0.2.7", "boss", "imap")
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
                             error.errors):
            self.assertIn(f"[auth] {key}:", line)

    def test_passdb_pam_accepted(self):
        """passdb = pam is a supported choice now."""
        self.assertEqual(self.parse("passdb = pam\npam_service = mail-test\n").auth.pam_service,
                         "mail-test")
