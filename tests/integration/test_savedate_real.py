"""SAVEDATE (RFC 8514) with the stdlib's imaplib on a real loopback socket (port 0) against the
mbox store: advertised, FETCH SAVEDATE, SEARCH SAVEDSINCE and SAVEDATESUPPORTED."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, reactor, threads

from tests.test_imap_savedate import DEC27, DEC29, MboxServerCase, local_text
from tests.test_imap_server import MESSAGE


class SaveDateImaplibTests(MboxServerCase):
    """imaplib on a real loopback socket (port 0) against the mbox store."""

    def _client(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port) as c:
            c.login("boss", "secret")
            out["caps"] = c.capabilities
            c.select("INBOX")
            out["fetch"] = c.fetch("1:*", "(SAVEDATE)")
            out["search"] = c.search(None, "SAVEDSINCE", "28-Dec-2014")
            out["supported"] = c.search(None, "SAVEDATESUPPORTED")
            c.logout()
        return out

    @defer.inlineCallbacks
    def test_imaplib(self):  # type: ignore[no-untyped-def]
        """imaplib sees SAVEDATE advertised, FETCHes it and SEARCHes by it."""
        yield self.store.deliver(self.account, MESSAGE, "a@example.test")
        self.now = DEC29
        yield self.store.deliver(self.account, b"Subject: two\n\nsecond\n", "a@example.test")
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        out = yield threads.deferToThread(self._client, port.getHost().port)
        self.assertIn("SAVEDATE", out["caps"])
        status, data = out["fetch"]
        self.assertEqual(status, "OK")
        self.assertEqual(data, [b"1 (SAVEDATE %s)" % local_text(DEC27),
                                b"2 (SAVEDATE %s)" % local_text(DEC29)])
        self.assertEqual(out["search"], ("OK", [b"2"]))
        self.assertEqual(out["supported"], ("OK", [b"1 2"]))
        yield self.store.settle()
