"""POP3 server: Dovecot's behaviour, every POP3 defect of TWISTED.md fixed, OUTLOOK.md 19-21."""

from __future__ import annotations

import ipaddress
import poplib
from types import SimpleNamespace

from twisted.cred import checkers, portal
from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import pop3 as twisted_pop3
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailsuite import pop3
from mailsuite.accounts import Account
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore

BOSS = Account("boss", 1000, 1000, "/home/boss")
LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 110)
REMOTE = IPv4Address("TCP", "203.0.113.9", 40000)
PUBLIC = IPv4Address("TCP", "198.51.100.1", 110)


@implementer(portal.IRealm)
class Realm:
    """The POP3 part of MailRealm: the avatar is open_pop3_mailbox's maildrop."""

    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatar_id, mind, *interfaces):
        assert twisted_pop3.IMailbox in interfaces
        d = pop3.open_pop3_mailbox(self.store, Account(avatar_id.decode(), 1000, 1000, "/home"))
        return d.addCallback(lambda box: (twisted_pop3.IMailbox, box, box.logout))


def make_config(disable_plaintext_auth=True, trusted=()):
    return SimpleNamespace(auth=SimpleNamespace(
        disable_plaintext_auth=disable_plaintext_auth,
        login_trusted_networks=[ipaddress.ip_network(n) for n in trusted]))


class NoDelayTransport(StringTransport):
    nodelay = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


class Pop3TestCase(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore()
        self.maillog = MailLog(None, "mail.example.test", now=self.clock.seconds)
        checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")
        self.portal = portal.Portal(Realm(self.store), [checker])
        self.config = make_config()

    def deliver(self, data):
        self.successResultOf(self.store.deliver(BOSS, data, "sender@example.test"))

    def inbox(self):
        return self.store._box(BOSS, "INBOX", create=True)

    def connect(self, peer=LOOPBACK, host=SERVER):
        factory = pop3.POP3Factory(self.config, self.portal, self.maillog, clock=self.clock)
        proto = factory.buildProtocol(peer)
        transport = NoDelayTransport(hostAddress=host, peerAddress=peer)
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"+OK mailsuite ready.\r\n")
        transport.clear()
        return proto, transport

    def send(self, session, *lines):
        """Send lines at once (pipelined), let any message producer run, return the output."""
        proto, transport = session
        proto.dataReceived(b"".join(line + b"\r\n" for line in lines))
        while transport.producer is not None:
            transport.producer.resumeProducing()
        out = transport.value()
        transport.clear()
        return out

    def login(self, peer=LOOPBACK):
        session = self.connect(peer)
        self.assertEqual(self.send(session, b"USER boss", b"PASS secret"),
                         b"+OK\r\n+OK Logged in.\r\n")
        return session

    def retr(self, session, number):
        """RETR: (size announced, unstuffed message bytes as a client keeps them)."""
        out = self.send(session, b"RETR %d" % number)
        first, _, rest = out.partition(b"\r\n")
        self.assertTrue(first.startswith(b"+OK ") and first.endswith(b" octets"), first)
        self.assertTrue(rest.endswith(b"\r\n.\r\n") or rest == b".\r\n", rest[-20:])
        body = rest[:-3]
        lines = [line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n")]
        return int(first.split()[1]), b"\r\n".join(lines)

    def list_sizes(self, session):
        out = self.send(session, b"LIST")
        lines = out.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"+OK"))
        self.assertEqual(lines[-2:], [b".", b""])
        return {int(n): int(s) for n, s in (line.split() for line in lines[1:-2])}


class WireFormTests(unittest.TestCase):
    def test_wire_size_is_length_of_wire_form(self):
        """wire_size counts exactly what to_wire builds: NULs gone, LF and CRLF both -> CRLF,
        a final CRLF added when missing."""
        for stored in [b"", b"a\n", b"a", b"a\r\nb\n", b"a\0b\n", b"\r\0\n", b"x\r", b"\n\n.\n",
                       b"a\r\r\nb\n", b"\0"]:
            wire = pop3.to_wire(stored)
            self.assertEqual(pop3.wire_size(stored), len(wire), stored)
            self.assertNotIn(b"\0", wire)
            self.assertTrue(wire == b"" or wire.endswith(b"\r\n"), stored)
            if b"\r\r" not in stored:
                self.assertNotIn(b"\r\r\n", wire, stored)

    def test_dot_stuff(self):
        """Every line starting with a dot gets one more, the first line too."""
        self.assertEqual(pop3.dot_stuff(b".a\r\nb\r\n..c\r\n.\r\n"), b"..a\r\nb\r\n...c\r\n..\r\n")

    def test_top_of(self):
        """TOP takes the header block, the blank line and n body lines."""
        wire = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
        self.assertEqual(pop3.top_of(wire, 0), b"A: 1\r\nB: 2\r\n\r\n")
        self.assertEqual(pop3.top_of(wire, 2), b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n")
        self.assertEqual(pop3.top_of(wire, 9), wire)
        self.assertEqual(pop3.top_of(b"A: 1\r\n", 0), b"A: 1\r\n")
        self.assertEqual(pop3.top_of(b"\r\nbody\r\nmore\r\n", 1), b"\r\nbody\r\n")


class MailboxTests(Pop3TestCase):
    def test_implements_twisted_imailbox(self):
        """Pop3Mailbox is a twisted.mail.pop3.IMailbox: 0-based indexes, deleted -> size 0,
        getMessage gives the wire form, sync expunges, undeleteMessages undoes."""
        self.deliver(b"Subject: a\n\nA\0\n")
        self.deliver(b"Subject: b\n\nB\n")
        box = self.successResultOf(pop3.open_pop3_mailbox(self.store, BOSS))
        verifyObject(twisted_pop3.IMailbox, box)
        self.assertEqual(self.successResultOf(box.listMessages()), [17, 17])
        self.assertEqual(self.successResultOf(box.getMessage(0)).read(),
                         b"Subject: a\r\n\r\nA\r\n")
        self.assertEqual(box.getUidl(1), b"%08X%08X" % (self.inbox().uid_validity, 2))
        box.deleteMessage(0)
        self.assertEqual(self.successResultOf(box.listMessages()), [0, 17])
        self.failureResultOf(box.listMessages(0), ValueError)
        self.failureResultOf(box.getMessage(0), ValueError)
        self.assertRaises(ValueError, box.getUidl, 0)
        self.assertRaises(ValueError, box.deleteMessage, 5)
        box.undeleteMessages()
        box.deleteMessage(1)
        self.assertEqual(self.successResultOf(box.sync()), [2])
        self.assertEqual([m.uid for m in self.inbox().messages], [1])
        box.logout()
        box.logout()
        self.assertEqual(self.inbox().users, 0)

    def test_sizes_measured_once_per_store(self):
        """A second session does not read the messages again to know their sizes."""
        self.deliver(b"Subject: a\n\nA\n")
        box = self.successResultOf(pop3.open_pop3_mailbox(self.store, BOSS))
        self.successResultOf(box.wire_sizes())
        box.logout()
        reads = []
        original = self.inbox().read
        self.patch(self.inbox(), "read", lambda uid: reads.append(uid) or original(uid))
        box = self.successResultOf(pop3.open_pop3_mailbox(self.store, BOSS))
        self.assertEqual(self.successResultOf(box.wire_sizes()), [17])
        self.assertEqual(reads, [])
        box.logout()


class AuthorizationTests(Pop3TestCase):
    def test_greeting_and_nodelay(self):
        """The greeting is Dovecot's with our name; TCP_NODELAY is set at once (TWISTED.md)."""
        _proto, transport = self.connect()
        self.assertTrue(transport.nodelay)

    def test_capa(self):
        """CAPA lists exactly what is accepted: no SASL, STLS or APOP until TLS lands."""
        out = self.send(self.connect(), b"CAPA")
        self.assertEqual(out, b"+OK\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n"
                              b"USER\r\nIMPLEMENTATION mailsuite\r\n.\r\n")
        session = self.login()
        self.assertIn(b"\r\nUSER\r\n", self.send(session, b"CAPA"))

    def test_plaintext_refused_from_untrusted_network(self):
        """disable_plaintext_auth: no USER/PASS without TLS from a remote untrusted address, and
        CAPA does not offer USER there."""
        session = self.connect(REMOTE, PUBLIC)
        self.assertNotIn(b"USER", self.send(session, b"CAPA"))
        out = self.send(session, b"USER boss", b"PASS secret", b"STAT")
        refused = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) "
                   b"connections.\r\n")
        self.assertEqual(out, refused * 2 + b"-ERR Unknown command: not logged in.\r\n")

    def test_plaintext_allowed_when_trusted_or_enabled(self):
        """login_trusted_networks and disable_plaintext_auth = no allow USER/PASS without TLS."""
        self.config = make_config(trusted=["203.0.113.0/24"])
        self.login(REMOTE)
        self.config = make_config(disable_plaintext_auth=False)
        self.login(IPv4Address("TCP", "192.0.2.1", 4000))

    def test_login_logged(self):
        """A login writes Dovecot's pop3-login line."""
        self.login()
        self.assertTrue(self.maillog.lines[-1].endswith(
            "mailsuite/pop3-login[%d]: Login: user=<boss>, method=PLAIN, rip=127.0.0.1, "
            "lip=127.0.0.1" % self.maillog.pid), self.maillog.lines)

    def test_wrong_password(self):
        """A wrong password is answered with Dovecot's words after a 2 s delay; the session goes
        on; the disconnect logs the fail2ban line of Dovecot."""
        proto, transport = session = self.connect()
        self.assertEqual(self.send(session, b"USER boss", b"PASS wrong", b"NOOP"), b"+OK\r\n")
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(transport.value(), b"-ERR [AUTH] Authentication failed.\r\n"
                                            b"-ERR Unknown command: not logged in.\r\n")
        transport.clear()
        self.assertEqual(self.send(session, b"USER boss", b"PASS secret"),
                         b"+OK\r\n+OK Logged in.\r\n")
        proto.connectionLost(None)
        self.assertNotIn("auth failed", "\n".join(self.maillog.lines))

        proto, transport = session = self.connect()
        self.send(session, b"USER boss", b"PASS wrong")
        self.clock.advance(2)
        proto.connectionLost(None)
        self.assertTrue(self.maillog.lines[-1].endswith(
            "mailsuite/pop3-login[%d]: Disconnected (auth failed, 1 attempts in 2 secs): "
            "user=<boss>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1" % self.maillog.pid))

    def test_three_failures_disconnect(self):
        """After three failed logins the connection is closed."""
        _proto, transport = session = self.connect()
        for _ in range(3):
            self.send(session, b"USER boss", b"PASS wrong")
            self.assertFalse(transport.disconnecting)
            self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_drop_during_failure_delay(self):
        """A connection dropped during the failure delay leaves no pending call behind."""
        proto, _transport = session = self.connect()
        self.send(session, b"USER boss", b"PASS wrong")
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("auth failed, 1 attempts in 0 secs", self.maillog.lines[-1])

    def test_commands_before_login(self):
        """Transaction commands, APOP, AUTH and junk before login get -ERR; the session goes on;
        PASS without USER is refused."""
        out = self.send(self.connect(), b"STAT", b"APOP boss x", b"AUTH PLAIN", b"", b"PASS x",
                        b"USER", b"NOOP")
        self.assertEqual(out, b"-ERR Unknown command: not logged in.\r\n" + b"-ERR Unknown command.\r\n"
                         * 3 + b"-ERR No username given.\r\n" * 2
                         + b"-ERR Unknown command: not logged in.\r\n")

    def test_quit_before_login(self):
        """QUIT before login says goodbye and closes; the disconnect is logged."""
        proto, transport = session = self.connect()
        self.assertEqual(self.send(session, b"QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertIn("Disconnected (no auth attempts in 0 secs): user=<>, rip=127.0.0.1",
                      self.maillog.lines[-1])

    def test_idle_timeout(self):
        """Ten minutes without a command end the session (Dovecot's timeout), logged."""
        proto, transport = self.login()
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertIn("mailsuite/pop3[", self.maillog.lines[-1])
        self.assertIn(": Disconnected for inactivity top=0/0", self.maillog.lines[-1])
