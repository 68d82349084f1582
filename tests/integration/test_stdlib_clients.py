"""The stdlib's clients (smtplib, poplib) against the SMTP and POP3 servers on a real listening
socket on 127.0.0.1 with the real reactor. (imaplib: tests/integration/test_imap_real.py.)"""

from __future__ import annotations

import poplib
import smtplib
from typing import Any

from twisted.cred import checkers, portal
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from mailsuite import threads as mailsuite_threads
from mailsuite.maillog import MailLog
from mailsuite.pop3 import server as pop3
from mailsuite.store.memory import MemoryStore
from tests.test_delivery import BOSS, inbox
from tests.test_pop3 import Realm, make_config
from tests.test_smtp_server import build


class SmtplibTests(unittest.TestCase):
    """smtplib against a real listening port on 127.0.0.1."""

    def setUp(self) -> None:
        self.factory, self.store, self.maillog, _ = build(self, clock=reactor,
                                                          blocking=mailsuite_threads.InPool(reactor))
        self.factory.reverse_lookup = lambda ip: defer.succeed("localhost")
        self.lost: list[defer.Deferred[None]] = []
        build_protocol = self.factory.buildProtocol

        def tracked(addr: Any) -> Any:
            proto = build_protocol(addr)
            done: defer.Deferred[None] = defer.Deferred()
            lost = proto.connectionLost

            def connection_lost(reason: Any) -> None:
                lost(reason)
                done.callback(None)

            proto.connectionLost = connection_lost
            self.lost.append(done)
            return proto

        self.factory.buildProtocol = tracked
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def _send(self, recipients: list[str]) -> Any:
        with smtplib.SMTP("127.0.0.1", self.port.getHost().port, timeout=10) as client:
            return client.sendmail(
                "a@b.example", recipients, b"Subject: hi\r\n\r\n.leading dot\r\nbye\r\n"
            )

    @defer.inlineCallbacks
    def test_smtplib_sends(self) -> Any:
        """smtplib (EHLO, PIPELINING-less client) delivers to a local account over TCP."""
        refused = yield threads.deferToThread(self._send, ["boss@mail.example.com"])
        yield defer.gatherResults(self.lost)
        self.assertEqual(refused, {})
        (stored,) = inbox(self.store, BOSS)
        self.assertTrue(stored.endswith(b"Subject: hi\n\n.leading dot\nbye\n"))
        self.assertIn("disconnect from localhost[127.0.0.1]", self.maillog.lines[-1])

    @defer.inlineCallbacks
    def test_smtplib_refused(self) -> Any:
        """smtplib sees 550 for an unknown user and still delivers to the good one."""
        refused = yield threads.deferToThread(
            self._send, ["nobody@localhost", "boss@localhost"]
        )
        yield defer.gatherResults(self.lost)
        self.assertEqual(list(refused), ["nobody@localhost"])
        self.assertEqual(refused["nobody@localhost"][0], 550)
        self.assertEqual(len(inbox(self.store, BOSS)), 1)


class PoplibTests(unittest.TestCase):
    """The real reactor, a real socket on 127.0.0.1 and the stdlib poplib client."""

    def setUp(self):
        self.store = MemoryStore()
        self.maillog = MailLog(None, "mail.example.test")
        checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")
        self.lost = defer.Deferred()
        lost = self.lost

        class Server(pop3.POP3Server):
            def connectionLost(self, reason=None):
                super().connectionLost(reason)
                lost.callback(None)

        factory = pop3.POP3Factory(make_config(), portal.Portal(Realm(self.store), [checker]),
                                   self.maillog, reactor)
        factory.protocol = Server
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_poplib_session(self):
        """poplib logs in, lists, retrieves (with a dot-stuffed line and a NUL, sent as 0x80),
        deletes and
        quits; the sizes it is told equal the bytes it gets; the deletion is committed."""
        self.store.deliver(BOSS, b"Subject: one\n\n.dot\nnul\0here\n", "a@b")
        self.store.deliver(BOSS, b"Subject: two\n\nbody\n", "a@b")
        port = self.port.getHost().port

        def client():
            box = poplib.POP3("127.0.0.1", port, timeout=10)
            welcome = box.getwelcome()
            caps = box.capa()
            box.user("boss")
            box.pass_("secret")
            stat = box.stat()
            listing = box.list()[1]
            uidl = box.uidl()[1]
            _resp, lines, _octets = box.retr(1)
            top = box.top(2, 0)[1]
            box.dele(1)
            box.quit()
            return welcome, caps, stat, listing, uidl, lines, top

        welcome, caps, stat, listing, uidl, lines, top = yield threads.deferToThread(client)
        yield self.lost
        self.assertEqual(welcome, b"+OK mailsuite ready.")
        self.assertEqual(sorted(caps), ["AUTH-RESP-CODE", "IMPLEMENTATION", "PIPELINING",
                                        "RESP-CODES", "SASL", "TOP", "UIDL", "USER"])
        self.assertEqual(lines, [b"Subject: one", b"", b".dot", b"nul\x80here"])
        size = len(b"\r\n".join(lines) + b"\r\n")
        self.assertEqual(listing[0], b"1 %d" % size)
        self.assertEqual(stat, (2, size + 22))
        self.assertEqual(top, [b"Subject: two", b""])
        validity = self.store._box(BOSS, "INBOX", False).uid_validity
        self.assertEqual(uidl, [b"1 00000001%08x" % validity, b"2 00000002%08x" % validity])
        self.assertEqual([m.uid for m in self.store._box(BOSS, "INBOX", False).messages], [2])
        self.assertIn("Disconnected: Logged out top=1/16, retr=1/", self.maillog.lines[-1])
