"""The IMAP server on a real TCP port (127.0.0.1, port 0) talking to the stdlib's imaplib."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from mailsuite.imap.server import IMAPFactory, IMAPServer
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore
from tests.test_imap_server import BOSS, MESSAGE, make_config, make_portal


class _TrackedServer(IMAPServer):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.nodelay = self.transport.getTcpNoDelay()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.lost.callback(None)


class ImaplibTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        portal, _ = make_portal(self.store)
        self.factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"))
        self.factory.protocol = _TrackedServer
        self.factory.lost = defer.Deferred()
        self.factory.buildProtocol = self._build  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _build(self, addr: Any) -> IMAPServer:
        proto = _TrackedServer(self.factory.config, self.factory.portal, self.factory.maillog)
        proto.factory = self.factory
        return proto

    def _client_session(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port) as client:
            out["login"] = client.login("boss", "secret")[0]
            out["select"] = client.select("INBOX")
            out["uids"] = client.uid("SEARCH", None, "ALL")
            out["fetch"] = client.uid("FETCH", "1", "(UID RFC822.SIZE BODY.PEEK[])")
            out["store"] = client.store("1", "+FLAGS", "(\\Seen)")
            out["unseen"] = client.search(None, "UNSEEN")
            out["logout"] = client.logout()[0]
        return out

    @defer.inlineCallbacks
    def test_imaplib_session(self):  # type: ignore[no-untyped-def]
        """imaplib logs in, selects, UID SEARCHes, fetches the exact bytes, stores, searches UNSEEN
        and logs out against the server on a real socket; TCP_NODELAY is set on the connection."""
        yield self.store.deliver(BOSS, MESSAGE, "bob@example.org")
        yield self.store.deliver(BOSS, b"Subject: two\n\nsecond\n", "bob@example.org")
        out = yield threads.deferToThread(self._client_session, self.port.getHost().port)
        yield self.factory.lost
        self.assertEqual(out["login"], "OK")
        self.assertEqual(out["select"], ("OK", [b"2"]))
        self.assertEqual(out["uids"], ("OK", [b"1 2"]))
        status, data = out["fetch"]
        wire = MESSAGE.replace(b"\n", b"\r\n")
        self.assertEqual(status, "OK")
        self.assertEqual(data[0][1], wire)
        self.assertIn(b"RFC822.SIZE %d" % len(wire), data[0][0])
        self.assertEqual(out["store"][0], "OK")
        self.assertEqual(out["unseen"], ("OK", [b"2"]))
        self.assertEqual(out["logout"], "BYE")
        self.assertTrue(self.factory.nodelay)
