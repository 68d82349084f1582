"""POP3 server: Dovecot's behaviour, every POP3 defect of TWISTED.md fixed, OUTLOOK.md 19-21."""

from __future__ import annotations

import ipaddress

from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.mail import pop3 as twisted_pop3
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailsuite.accounts import Account
from mailsuite.maillog import MailLog
from mailsuite.pop3 import server as pop3
from mailsuite.pop3.mailbox import open_pop3_mailbox
from mailsuite.store.memory import MemoryStore
from mailsuite.wire import to_wire
from tests.configs import real_config
from tests.fakes import NoDelayTransport

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
        d = open_pop3_mailbox(self.store, Account(avatar_id.decode(), 1000, 1000, "/home"))
        return d.addCallback(lambda box: (twisted_pop3.IMailbox, box, box.logout))


def make_config(disable_plaintext_auth=True, trusted=(), ssl="yes"):
    return real_config(
        auth={"disable_plaintext_auth": disable_plaintext_auth,
              "login_trusted_networks": [ipaddress.ip_network(n) for n in trusted]},
        tls={"ssl": ssl})


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
        box = self.successResultOf(open_pop3_mailbox(self.store, BOSS))
        verifyObject(twisted_pop3.IMailbox, box)
        self.assertEqual(box.listMessages(), [18, 17])
        self.assertEqual(self.successResultOf(box.getMessage(0)).read(),
                         b"Subject: a\r\n\r\nA\x80\r\n")
        self.assertEqual(box.getUidl(1), b"%08x%08x" % (2, self.inbox().uid_validity))
        box.deleteMessage(0)
        self.assertEqual(box.listMessages(), [0, 17])
        self.assertEqual(box.listMessages(0), 0)
        self.assertRaises(ValueError, box.listMessages, 2)
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

    def test_snapshot_is_not_a_copy_and_keeps_its_length(self):
        """The maildrop is the store's list and a count (O(1) per login, no copy of 100,000
        entries); mail delivered after login, appended to that list in place, is not in it."""
        self.deliver(b"Subject: a\n\nA\n")
        box = self.successResultOf(open_pop3_mailbox(self.store, BOSS))
        self.assertIs(box.messages._messages, self.inbox().messages)
        self.deliver(b"Subject: b\n\nB\n")
        self.assertEqual(len(self.inbox().messages), 2)
        self.assertEqual((len(box), len(box.listMessages()), list(box.sizes)), (1, 1, [17]))
        self.assertEqual([m.uid for m in box.messages], [1])
        self.assertRaises(ValueError, box.check_index, 1)

    def test_sizes_are_the_store_sizes(self):
        """The maildrop's sizes are the store's MessageInfo.size: no message is read for them."""
        self.deliver(b"Subject: a\n\nA\n")
        self.inbox().external_append(b"Subject: b\r\n\r\nB\0\r\nno end", verbatim=True)
        self.inbox().refresh()
        reads = []
        self.patch(self.inbox(), "read", lambda uid: reads.append(uid))
        box = self.successResultOf(open_pop3_mailbox(self.store, BOSS))
        self.assertEqual(list(box.sizes), [m.size for m in self.inbox().messages])
        self.assertEqual(box.listMessages(), [17, 26])
        self.assertEqual(reads, [])
        box.logout()


class AuthorizationTests(Pop3TestCase):
    def test_greeting_and_nodelay(self):
        """The greeting is Dovecot's with our name; TCP_NODELAY is set at once (TWISTED.md)."""
        _proto, transport = self.connect()
        self.assertTrue(transport.no_delay)

    def test_capa(self):
        """CAPA lists exactly what is accepted (no STLS without a certificate, no APOP)."""
        out = self.send(self.connect(), b"CAPA")
        self.assertEqual(out, b"+OK\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
                              b"AUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\n"
                              b"IMPLEMENTATION mailsuite\r\n.\r\n")
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
            "dovecot: pop3-login: Login: user=<boss>, method=PLAIN, "
            "rip=127.0.0.1, lip=127.0.0.1"), self.maillog.lines)

    def test_wrong_password(self):
        """A wrong password is answered at once with Dovecot's words (any penalty is the
        login policy's, before the next attempt); the session goes on; the disconnect logs
        the fail2ban line of Dovecot."""
        proto, _transport = session = self.connect()
        self.assertEqual(self.send(session, b"USER boss", b"PASS wrong", b"NOOP"),
                         b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
                         b"-ERR Unknown command: not logged in.\r\n")
        self.assertEqual(self.send(session, b"USER boss", b"PASS secret"),
                         b"+OK\r\n+OK Logged in.\r\n")
        proto.connectionLost(None)
        self.assertNotIn("auth failed", "\n".join(self.maillog.lines))

        proto, _transport = session = self.connect()
        self.send(session, b"USER boss", b"PASS wrong")
        self.clock.advance(2)
        proto.connectionLost(None)
        self.assertTrue(self.maillog.lines[-1].endswith(
            "dovecot: pop3-login: Disconnected (auth failed, 1 attempts in "
            "2 secs): user=<boss>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1"))

    def test_three_failures_disconnect(self):
        """After three failed logins the connection is closed."""
        _proto, transport = session = self.connect()
        for _ in range(3):
            self.assertFalse(transport.disconnecting)
            out = self.send(session, b"USER boss", b"PASS wrong", b"CAPA")
        self.assertTrue(transport.disconnecting)
        self.assertTrue(out.endswith(b"-ERR [AUTH] Authentication failed.\r\n"), out)

    def test_drop_after_a_failure(self):
        """A connection dropped after a failed login leaves no pending call behind."""
        proto, _transport = session = self.connect()
        self.send(session, b"USER boss", b"PASS wrong")
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("auth failed, 1 attempts in 0 secs", self.maillog.lines[-1])

    def test_commands_before_login(self):
        """Transaction commands, APOP, unknown SASL mechanisms and junk before login get -ERR;
        the session goes on (up to Dovecot's three invalid commands, test_pop3_limits); PASS
        without USER is refused."""
        out = self.send(self.connect(), b"STAT", b"APOP boss x", b"AUTH CRAM-MD5", b"PASS x",
                        b"USER")
        self.assertEqual(out, b"-ERR Unknown command: not logged in.\r\n"
                         + b"-ERR Unknown command.\r\n"
                         + b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"
                         + b"-ERR No username given.\r\n" * 2)
        out = self.send(self.connect(), b"", b"NOOP")
        self.assertEqual(out, b"-ERR Unknown command.\r\n"
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
        self.assertIn("dovecot: pop3(boss): ", self.maillog.lines[-1])
        self.assertIn(": Disconnected for inactivity top=0/0", self.maillog.lines[-1])


class TransactionTests(Pop3TestCase):
    def test_sizes_equal_retr_bytes(self):
        """STAT, LIST and LIST n give exactly the bytes RETR sends: CRLF line ends, NULs
        replaced by 0x80 (Outlook hangs on them), CRLF stored by another program, no final
        newline, a lone final CR; and STAT and LIST read no message to know that."""
        self.deliver(b"Subject: lf\n\nline\n")
        self.deliver(b"Subject: nul\n\na\0b\0\n\0")
        box = self.inbox()
        for raw in [b"Subject: crlf\r\n\r\nbody\0\r\nbare\n\0",  # written by another program
                    b"Subject: cr\r\n\r\n.dot\r\nlone CR\r"]:
            box.external_append(raw, verbatim=True)
        box.refresh()
        self.deliver(b"Subject: no end\n\nlast line")
        session = self.login()
        original, reads = box.read, []
        self.patch(box, "read", lambda uid: reads.append(uid) or original(uid))
        sizes = self.list_sizes(session)
        stat = self.send(session, b"STAT")
        self.assertEqual(reads, [])
        total = 0
        for number in range(1, 6):
            announced, data = self.retr(session, number)
            self.assertEqual((announced, sizes[number]), (len(data), len(data)))
            self.assertEqual(self.send(session, b"LIST %d" % number),
                             b"+OK %d %d\r\n" % (number, len(data)))
            self.assertNotIn(b"\0", data)
            self.assertNotIn(b"\r\r\n", data)
            self.assertTrue(data.endswith(b"\r\n"))
            total += len(data)
        self.assertEqual(stat, b"+OK 5 %d\r\n" % total)
        self.assertEqual(self.retr(session, 2)[1],
                         b"Subject: nul\r\n\r\na\x80b\x80\r\n\x80\r\n")
        self.assertEqual(self.retr(session, 3)[1],
                         b"Subject: crlf\r\n\r\nbody\x80\r\nbare\r\n\x80\r\n")
        self.assertEqual(self.retr(session, 4)[1], b"Subject: cr\r\n\r\n.dot\r\nlone CR\r\n")

    def test_dot_stuffing_first_line_and_chunk_boundaries(self):
        """A dot at the start of the first line, of a line at the 16 KiB boundary of the stock
        FileSender and at our 64 KiB chunk boundary is doubled on the wire and comes back intact."""
        body = b"Subject: x\n\n"
        body += b"a" * (16384 - len(body) - 1) + b"\n.at 16k\n"
        self.assertEqual(body.index(b".at 16k"), 16384)  # the stock FileSender's chunk boundary
        wire = pop3.dot_stuff(to_wire(body))
        body += b"b" * (pop3.CHUNK_SIZE - len(wire) - 2) + b"\n.at 64k\n.\n"
        stuffed = pop3.dot_stuff(to_wire(body))
        self.assertEqual(stuffed.index(b"..at 64k"), pop3.CHUNK_SIZE)  # our chunk boundary
        self.deliver(body)
        self.deliver(b".first: line\n\n.\n")
        session = self.login()
        out = self.send(session, b"RETR 1")
        self.assertTrue(out.startswith(b"+OK %d octets\r\n" % len(to_wire(body))))
        wire = out[out.index(b"\r\n") + 2:]
        self.assertTrue(wire.endswith(b"\r\n..at 64k\r\n..\r\n.\r\n"), wire[-40:])
        self.assertIn(b"\r\n..at 16k\r\n", wire)
        self.assertEqual(wire, stuffed + b".\r\n")
        self.assertEqual(self.retr(session, 1)[1], to_wire(body))
        self.assertEqual(self.send(session, b"RETR 2"), b"+OK 19 octets\r\n"
                         b"..first: line\r\n\r\n..\r\n.\r\n")

    def test_top(self):
        """TOP n 0 sends the headers and the blank line; TOP n k adds k body lines; bad
        arguments get -ERR and the session goes on."""
        self.deliver(b"From: a@b\nSubject: t\n\n.one\ntwo\nthree\n")
        session = self.login()
        self.assertEqual(self.send(session, b"TOP 1 0"),
                         b"+OK\r\nFrom: a@b\r\nSubject: t\r\n\r\n.\r\n")
        self.assertEqual(self.send(session, b"TOP 1 2"),
                         b"+OK\r\nFrom: a@b\r\nSubject: t\r\n\r\n..one\r\ntwo\r\n.\r\n")
        self.assertEqual(self.send(session, b"TOP 1 -1", b"TOP 1 x", b"TOP 1", b"TOP 2 0",
                                   b"TOP x 0", b"NOOP"),
                         b"-ERR Invalid number of lines: -1\r\n-ERR Invalid number of lines: x\r\n"
                         b"-ERR Wrong number of arguments.\r\n-ERR There's no message 2.\r\n"
                         b"-ERR Invalid message number: x\r\n+OK\r\n")

    def test_bad_message_numbers(self):
        """LIST, UIDL, RETR, DELE with bad numbers answer -ERR; the session goes on (the stock
        DELE crashed the connection)."""
        self.deliver(b"Subject: a\n\nA\n")
        session = self.login()
        for command in [b"LIST", b"UIDL", b"RETR", b"DELE"]:
            out = self.send(session, command + b" 0", command + b" 2", command + b" x",
                            command + b" -1", command + b" 1 2", b"NOOP")
            self.assertEqual(out, b"-ERR There's no message 0.\r\n-ERR There's no message 2.\r\n"
                             b"-ERR Invalid message number: x\r\n"
                             b"-ERR Invalid message number: -1\r\n"
                             b"-ERR Wrong number of arguments.\r\n+OK\r\n", command)
        self.assertEqual(self.send(session, b"RETR", b"DELE", b"STAT 1", b"FOO"),
                         b"-ERR Wrong number of arguments.\r\n" * 3 + b"-ERR Unknown command.\r\n")

    def test_deleted_messages_not_counted(self):
        """After DELE 2, STAT/LIST/UIDL leave message 2 out and keep the other numbers; LIST,
        UIDL, RETR, TOP and DELE of it answer -ERR; RSET brings it back."""
        for n in range(3):
            self.deliver(b"Subject: %d\n\nbody\n" % n)
        validity = self.inbox().uid_validity
        session = self.login()
        self.assertEqual(self.send(session, b"DELE 2"), b"+OK Marked to be deleted.\r\n")
        self.assertEqual(self.send(session, b"STAT"), b"+OK 2 40\r\n")
        self.assertEqual(self.send(session, b"LIST"), b"+OK 2 messages:\r\n1 20\r\n3 20\r\n.\r\n")
        self.assertEqual(self.send(session, b"UIDL"), b"+OK\r\n1 00000001%08x\r\n"
                         b"3 00000003%08x\r\n.\r\n" % (validity, validity))
        for command in [b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0", b"DELE 2"]:
            self.assertEqual(self.send(session, command), b"-ERR Message is deleted.\r\n")
        self.assertEqual(self.send(session, b"RSET", b"STAT"), b"+OK\r\n+OK 3 60\r\n")
        self.assertEqual(self.send(session, b"LIST 2", b"NOOP"), b"+OK 2 20\r\n+OK\r\n")

    def test_uidl_stable(self):
        """UIDL is Dovecot's default %08Xu%08Xv (lower-case hex) and gives the same IDs in every
        session, also after another message was deleted and new mail came (leave a copy on
        server)."""
        self.deliver(b"Subject: 1\n\n1\n")
        self.deliver(b"Subject: 2\n\n2\n")
        validity = self.inbox().uid_validity
        session = self.login()
        first = self.send(session, b"UIDL")
        self.assertEqual(first, b"+OK\r\n1 00000001%08x\r\n2 00000002%08x\r\n.\r\n"
                         % (validity, validity))
        self.send(session, b"DELE 1", b"QUIT")
        self.deliver(b"Subject: 3\n\n3\n")
        session = self.login()
        self.assertEqual(self.send(session, b"UIDL"), b"+OK\r\n1 00000002%08x\r\n"
                         b"2 00000003%08x\r\n.\r\n" % (validity, validity))
        self.assertEqual(self.send(session, b"UIDL 1"), b"+OK 1 00000002%08x\r\n" % validity)

    def test_quit_commits(self):
        """QUIT expunges the DELE'd messages and answers +OK only afterwards; the mailbox is
        closed; the disconnect is logged like Dovecot's."""
        self.deliver(b"Subject: 1\n\n1\n")
        self.deliver(b"Subject: 2\n\n2\n")
        proto, transport = session = self.login()
        self.retr(session, 2)
        self.assertEqual(self.send(session, b"DELE 1", b"QUIT", b"NOOP"),
                         b"+OK Marked to be deleted.\r\n+OK Logging out, messages deleted.\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual([m.uid for m in self.inbox().messages], [2])
        proto.connectionLost(None)
        self.assertEqual(self.inbox().users, 0)
        self.assertTrue(self.maillog.lines[-1].endswith(
            "dovecot: pop3(boss): Disconnected: Logged out top=0/0, retr=1/17, "
            "del=1/2, size=34, user=<boss>, rip=127.0.0.1"), self.maillog.lines[-1])

    def test_quit_waits_for_expunge(self):
        """+OK comes only when the expunge fired; a failed expunge gives -ERR and deletes
        nothing."""
        self.deliver(b"Subject: 1\n\n1\n")
        box = self.inbox()
        pending = defer.Deferred()
        self.patch(box, "expunge", lambda uids: pending)
        _proto, transport = session = self.login()
        self.assertEqual(self.send(session, b"DELE 1", b"QUIT"), b"+OK Marked to be deleted.\r\n")
        self.assertFalse(transport.disconnecting)
        pending.errback(OSError("disk full"))
        self.assertEqual(transport.value(),
                         b"-ERR [SYS/TEMP] Couldn't delete the messages; none were deleted.\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(box.messages), 1)

    def test_dropped_connection_commits_nothing(self):
        """DELE followed by a lost connection deletes nothing; the mailbox is closed."""
        self.deliver(b"Subject: 1\n\n1\n")
        proto, _transport = session = self.login()
        self.send(session, b"DELE 1")
        proto.connectionLost(None)
        self.assertEqual(len(self.inbox().messages), 1)
        self.assertEqual(self.inbox().users, 0)
        self.assertIn("Disconnected: Connection closed top=0/0, retr=0/0, del=0/1",
                      self.maillog.lines[-1])

    def test_new_mail_survives_quit(self):
        """Mail that arrives during a session is not part of it and is kept by its QUIT."""
        self.deliver(b"Subject: old\n\nold\n")
        session = self.login()
        self.deliver(b"Subject: new\n\nnew\n")
        self.inbox().external_append(b"Subject: mutt\n\nmutt\n")
        self.assertEqual(self.send(session, b"STAT"), b"+OK 1 21\r\n")
        self.send(session, b"DELE 1", b"QUIT")
        self.assertEqual([m.uid for m in self.inbox().messages], [2, 3])

    def test_message_expunged_by_another_client(self):
        """A message IMAP expunged during the session: RETR answers -ERR, the session goes on."""
        self.deliver(b"Subject: 1\n\n1\n")
        session = self.login()
        self.successResultOf(self.inbox().expunge([1]))
        self.assertEqual(self.send(session, b"RETR 1", b"NOOP"), b"-ERR Message is no longer "
                         b"available (deleted by another client).\r\n+OK\r\n")

    def test_pipelined_commands_answered_in_order(self):
        """Commands sent while a store read is in flight wait and are answered in order."""
        self.deliver(b"Subject: 1\n\n1\n")
        box = self.inbox()
        pending = defer.Deferred()
        self.patch(box, "read", lambda uid: pending)
        _proto, transport = session = self.login()
        self.assertEqual(self.send(session, b"RETR 1", b"NOOP", b"UIDL 1"), b"")
        pending.callback(b"Subject: 1\n\n1\n")
        while transport.producer is not None:
            transport.producer.resumeProducing()
        self.assertEqual(transport.value(), b"+OK 17 octets\r\nSubject: 1\r\n\r\n1\r\n.\r\n"
                         b"+OK\r\n+OK 1 00000001%08x\r\n" % box.uid_validity)

    def test_long_pipelined_burst(self):
        """Thousands of commands pipelined behind a slow one are answered in order without
        recursion; reading from the client is paused while the backlog is long."""
        self.deliver(b"Subject: 1\n\n1\n")
        box = self.inbox()
        pending, original = defer.Deferred(), box.read
        reads = [pending]
        self.patch(box, "read", lambda uid: reads.pop() if reads else original(uid))
        _proto, transport = session = self.login()
        self.assertEqual(self.send(session, b"RETR 1", *[b"STAT"] * 3000), b"")
        self.assertEqual(transport.producerState, "paused")
        pending.callback(b"Subject: 1\n\n1\n")
        while transport.producer is not None:
            transport.producer.resumeProducing()
        self.assertEqual(transport.value(), b"+OK 17 octets\r\nSubject: 1\r\n\r\n1\r\n.\r\n"
                         + b"+OK 1 17\r\n" * 3000)
        self.assertEqual(transport.producerState, "producing")

    def test_connection_lost_during_retr(self):
        """A connection lost while a message is being sent stops the sending, commits nothing
        and closes the mailbox."""
        self.deliver(b"Subject: big\n\n" + b"x" * 200000 + b"\n")
        proto, transport = session = self.login()
        self.send(session, b"DELE 1", b"RSET")
        proto.dataReceived(b"RETR 1\r\nDELE 1\r\n")
        self.assertIsNotNone(transport.producer)
        transport.producer.resumeProducing()
        proto.connectionLost(None)
        self.assertTrue(len(transport.value()) < 100000)
        self.assertEqual(len(self.inbox().messages), 1)
        self.assertEqual(self.inbox().users, 0)

    def test_stalled_reader_is_aborted(self):
        """A client that stops reading in the middle of a message is cut off after the idle
        timeout (abort: a clean close would wait for the unread data forever)."""
        self.deliver(b"Subject: big\n\n" + b"x" * 200000 + b"\n")
        _proto, transport = session = self.login()
        session[0].dataReceived(b"RETR 1\r\n")
        transport.producer.resumeProducing()
        self.clock.advance(599)
        transport.producer.resumeProducing()
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_bare_lf_commands(self):
        """Commands ending in a bare LF (telnet, nc) work too."""
        _proto, transport = self.connect()
        _proto.dataReceived(b"USER boss\nPASS secret\nNOOP\n")
        self.assertEqual(transport.value(), b"+OK\r\n+OK Logged in.\r\n+OK\r\n")

    def test_noop_and_timeout_during_transaction(self):
        """NOOP answers +OK and keeps the session alive past the idle timeout."""
        _proto, transport = session = self.login()
        self.clock.advance(500)
        self.assertEqual(self.send(session, b"NOOP"), b"+OK\r\n")
        self.clock.advance(500)
        self.assertFalse(transport.disconnecting)
