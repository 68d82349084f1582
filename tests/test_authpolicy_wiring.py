"""The brute-force policy as the login doors apply it: POP3, IMAP and SMTP AUTH factories take
``policy=`` and every login of their sessions goes through it."""

from __future__ import annotations

import base64

from twisted.cred import checkers, credentials, portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite.auth.policy import AuthPolicy
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.pop3 import server as pop3
from mailsuite.store.memory import MemoryStore
from tests import test_imap_server as imap_test
from tests import test_sasl_smtp
from tests.fakes import NoDelayTransport
from tests.test_pop3 import SERVER, Realm, make_config

ATTACKER = IPv4Address("TCP", "203.0.113.9", 40000)
NEIGHBOUR = IPv4Address("TCP", "203.0.113.10", 40000)
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
HASH_TIME = 0.5


class SlowChecker:
    """Gives ``inner``'s verdict HASH_TIME seconds later on ``clock``, as a password hash in a
    thread does; counts the passwords it was asked about."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, inner, clock):
        self.inner, self.clock, self.asked = inner, clock, 0

    def requestAvatarId(self, creds):
        self.asked += 1
        d = defer.Deferred()
        self.clock.callLater(HASH_TIME, lambda: defer.maybeDeferred(
            self.inner.requestAvatarId, creds).chainDeferred(d))
        return d


def slow_down(the_portal, clock):
    """Make ``the_portal``'s password checks take HASH_TIME; the SlowChecker."""
    slow = SlowChecker(the_portal.checkers[credentials.IUsernamePassword], clock)
    the_portal.registerChecker(slow)
    return slow


class BurstMixin:
    """S6 and 12 of issue 9, alike for the three protocols: ``start(password, peer)`` begins a
    login on a new connection and returns a function giving its last reply line (or None)."""

    ok = wrong = blocked = ""

    def test_parallel_burst_stops_at_the_limit(self):
        """20 wrong passwords at once over 20 connections, the right one last: the passwords
        are checked one after another with the penalty between them, only login_max_failures
        of them; the rest, the right one included, get the temporary error."""
        slow = slow_down(self.portal, self.clock)
        replies = [self.start(b"wrong%d" % i) for i in range(20)] + [self.start(b"secret")]
        self.clock.advance(HASH_TIME)
        self.assertEqual(slow.asked, 1)
        for _ in range(100):
            self.clock.advance(0.5)
        self.assertEqual(slow.asked, 3)
        self.assertEqual([r() for r in replies[:3]], [self.wrong] * 3)
        self.assertEqual([r() for r in replies[3:]], [self.blocked] * 18)

    def test_loopback_is_never_delayed(self):
        """From loopback a wrong password is answered at once, and so is the next attempt."""
        for _ in range(2):
            self.assertEqual(self.start(b"wrong", LOOPBACK)(), self.wrong)
        self.assertEqual(self.start(b"secret", LOOPBACK)(), self.ok)

    def test_failure_delay_follows_auth_failure_delay(self):
        """From elsewhere a failure is answered at once; the next attempt's password waits
        auth_failure_delay (3 s here), not a fixed 2 s."""
        self.policy.failure_delay = 3.0
        self.assertEqual(self.start(b"wrong")(), self.wrong)
        reply = self.start(b"secret")
        self.clock.advance(2.9)
        self.assertIsNone(reply())
        self.clock.advance(0.1)
        self.assertEqual(reply(), self.ok)


class Pop3PolicyTests(BurstMixin, unittest.TestCase):
    ok, wrong = "+OK Logged in.", "-ERR [AUTH] Authentication failed."
    blocked = "-ERR [SYS/TEMP] Temporary authentication failure."
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.maillog = MailLog(None, "mail.example.test", now=self.clock.seconds)
        checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")
        self.portal = portal.Portal(Realm(MemoryStore()), [checker])
        self.policy = AuthPolicy(clock=self.clock, maillog=self.maillog, failure_delay=2.0,
                                 max_failures=3, block_time=600.0)
        self.factory = pop3.POP3Factory(make_config(disable_plaintext_auth=False), self.portal,
                                        self.maillog, clock=self.clock, policy=self.policy)

    def session(self, peer=ATTACKER):
        proto = self.factory.buildProtocol(peer)
        transport = NoDelayTransport(hostAddress=SERVER, peerAddress=peer)
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def start(self, password, peer=ATTACKER):
        proto, transport = self.session(peer)
        proto.dataReceived(b"USER boss\r\nPASS " + password + b"\r\n")
        return lambda: (transport.value().decode().splitlines()[1:] or [None])[-1]

    def login(self, password, peer=ATTACKER):
        """USER/PASS on a new connection; the clock runs through every delay."""
        proto, transport = self.session(peer)
        proto.dataReceived(b"USER boss\r\nPASS " + password + b"\r\n")
        self.clock.advance(30)  # every delay, within login_idle_timeout
        return transport.value().decode().splitlines()[-1]

    def test_failure_is_counted_and_logged(self):
        """A wrong POP3 password counts against the address and writes the fail2ban line."""
        self.assertEqual(self.login(b"wrong"), "-ERR [AUTH] Authentication failed.")
        self.assertEqual(self.policy.failures("203.0.113.9"), 1)
        self.assertTrue(any("dovecot: auth: " in line and "(boss,203.0.113.9,<pop3>)" in line
                            for line in self.maillog.lines))

    def test_next_attempt_waits_for_the_penalty(self):
        """After a failure the password of the next PASS is checked only after the delay."""
        self.login(b"wrong")
        proto, transport = self.session()
        proto.dataReceived(b"USER boss\r\nPASS secret\r\n")
        self.assertEqual(transport.value(), b"+OK\r\n")
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"+OK\r\n+OK Logged in.\r\n")
        self.assertEqual(self.policy.failures("203.0.113.9"), 0)

    def test_blocked_address_gets_a_temporary_error(self):
        """At login_max_failures the address is refused with -ERR [SYS/TEMP], even with the
        right password; a neighbour address still logs in."""
        for _ in range(3):
            self.login(b"wrong")
        self.assertEqual(self.login(b"secret"), "-ERR [SYS/TEMP] Temporary authentication failure.")
        self.assertEqual(self.login(b"secret", NEIGHBOUR), "+OK Logged in.")

    def test_without_policy_nothing_changes(self):
        """policy=None (the default) leaves the factory as it was: no counting, no guard."""
        factory = pop3.POP3Factory(make_config(disable_plaintext_auth=False), self.portal,
                                   self.maillog, clock=self.clock)
        self.assertIs(factory.buildProtocol(ATTACKER).portal, self.portal)


class ImapPolicyTests(BurstMixin, unittest.TestCase):
    ok, wrong = "a OK", "a NO [AUTHENTICATIONFAILED] Authentication failed."
    blocked = "a NO [UNAVAILABLE] Temporary authentication failure."
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.maillog = MailLog(None, "mail.example.test", now=self.clock.seconds)
        self.portal, _ = imap_test.make_portal(MemoryStore())
        self.policy = AuthPolicy(clock=self.clock, maillog=self.maillog, failure_delay=2.0,
                                 max_failures=3, block_time=600.0)
        self.factory = IMAPFactory(imap_test.make_config(disable_plaintext_auth=False),
                                   self.portal, self.maillog, self.clock, policy=self.policy)

    def start(self, password, peer=ATTACKER):
        proto = self.factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 143),
                                    peerAddress=peer)
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(b"a LOGIN boss " + password + b"\r\n")

        def reply():
            lines = transport.value().decode().splitlines()
            if lines and lines[-1].startswith("a OK"):
                return lines[-1][:4]
            return (lines or [None])[-1]
        return reply

    def login(self, password, peer=ATTACKER, command=b"a LOGIN boss "):
        proto = self.factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 143),
                                    peerAddress=peer)
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(command + password + b"\r\n")
        self.clock.advance(30)  # every delay, within login_idle_timeout
        return transport.value().decode().splitlines()[-1]

    def test_failure_is_counted_and_logged(self):
        """A wrong IMAP password counts against the address and writes the fail2ban line."""
        self.assertEqual(self.login(b"wrong"), "a NO [AUTHENTICATIONFAILED] Authentication failed.")
        self.assertEqual(self.policy.failures("203.0.113.9"), 1)
        self.assertTrue(any("(boss,203.0.113.9,<imap>)" in line for line in self.maillog.lines))

    def test_authenticate_plain_is_guarded_too(self):
        """AUTHENTICATE PLAIN goes through the same guard as LOGIN."""
        initial = base64.b64encode(b"\0boss\0wrong")
        line = self.login(initial, command=b"a AUTHENTICATE PLAIN ")
        self.assertIn("AUTHENTICATIONFAILED", line)
        self.assertEqual(self.policy.failures("203.0.113.9"), 1)

    def test_commands_behind_a_delayed_sasl_login_wait(self):
        """A login the policy delays (after a failure) holds back what was pipelined behind the
        last AUTHENTICATE answer: CAPABILITY is read only after the login's tagged reply, and
        so lists the post-login capabilities."""
        self.login(b"wrong")
        proto = self.factory.buildProtocol(ATTACKER)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 143),
                                    peerAddress=ATTACKER)
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(b"a AUTHENTICATE LOGIN\r\n" + base64.b64encode(b"boss") + b"\r\n"
                           + base64.b64encode(b"secret") + b"\r\nb CAPABILITY\r\n")
        self.assertNotIn(b"a OK", transport.value())
        self.assertNotIn(b"CAPABILITY", transport.value())
        self.clock.advance(60)
        out = transport.value().decode()
        self.assertLess(out.index("a OK [CAPABILITY"), out.index("* CAPABILITY"))
        self.assertNotIn("AUTH=", out[out.index("* CAPABILITY"):])
        self.assertTrue(out.endswith("b OK Capability completed.\r\n"), out)

    def test_blocked_address_gets_unavailable(self):
        """At login_max_failures: NO [UNAVAILABLE] even with the right password, no traceback
        logged; another address still logs in."""
        for _ in range(3):
            self.login(b"wrong")
        self.assertEqual(self.login(b"secret"),
                         "a NO [UNAVAILABLE] Temporary authentication failure.")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIn("a OK", self.login(b"secret", NEIGHBOUR))


class SmtpPolicyTests(BurstMixin, test_sasl_smtp.SmtpAuthCase):
    """SMTP AUTH on 465 (TLS from the first byte) with a policy on the factory."""

    service = "smtps"
    implicit = True

    def setUp(self):
        super().setUp()
        self.policy = AuthPolicy(clock=self.clock, maillog=self.maillog, failure_delay=2.0,
                                 max_failures=3, block_time=600.0)
        self.factory.policy = self.policy
        self.portal = self.factory.portal

    ok, wrong = "235 2.7.0 Authentication successful", "535 5.7.8 Error: authentication failed"
    blocked = "454 4.7.0 Temporary authentication failure"

    def start(self, password, peer=ATTACKER):
        self.connect(peer.host)
        self.ehlo()
        transport = self.transport
        transport.clear()
        self.proto.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"\0boss\0" + password) + b"\r\n")
        return lambda: (transport.value().decode().splitlines() or [None])[-1]

    def attempt(self, plain, peer=None):
        self.connect(peer)
        self.ehlo()
        self.transport.clear()
        self.proto.dataReceived(b"AUTH PLAIN " + plain + b"\r\n")
        self.clock.advance(60)
        return self.transport.value().decode().splitlines()[-1]

    def test_failure_logged_for_postfix_filter(self):
        """A failed AUTH counts and writes Postfix's SASL warning under a postfix-* tag, with
        the client's name, the mechanism and the user."""
        self.assertEqual(self.attempt(test_sasl_smtp.PLAIN_BAD),
                         "535 5.7.8 Error: authentication failed")
        self.assertEqual(self.policy.failures(test_sasl_smtp.REMOTE), 1)
        self.assertIn(f"postfix/smtps/smtpd[{self.maillog.pid}]: warning: "
                      f"client.example[{test_sasl_smtp.REMOTE}]: SASL PLAIN authentication failed: "
                      "authentication failure, sasl_username=boss", self.log_text())

    def test_blocked_address_gets_454(self):
        """At login_max_failures AUTH answers 454 4.7.0 (Postfix's temporary failure), even
        with the right password, and logs no traceback."""
        for _ in range(3):
            self.attempt(test_sasl_smtp.PLAIN_BAD)
        self.assertEqual(self.attempt(test_sasl_smtp.PLAIN_OK),
                         "454 4.7.0 Temporary authentication failure")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.attempt(test_sasl_smtp.PLAIN_OK, "192.0.2.99"),
                         "235 2.7.0 Authentication successful")
