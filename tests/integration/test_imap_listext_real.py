"""LIST-EXTENDED, LIST-STATUS and STATUS=SIZE through the stdlib's imaplib against the server on
a real TCP port (127.0.0.1, port 0)."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore
from mailsuite.wire import to_wire
from tests.test_imap_server import BOSS, MESSAGE, make_config, make_portal


class ImaplibListTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        portal, _ = make_portal(self.store)
        factory = IMAPFactory(make_config(), portal, MailLog(None, "mail"), reactor)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def _session(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port) as client:
            client.login("boss", "secret")
            out["caps"] = client.capabilities
            client.create("Work/2026")
            client.subscribe("Work/2026")
            out["recursive"] = client._simple_command(  # imaplib has no LIST options
                "LIST", '(SUBSCRIBED RECURSIVEMATCH) "" "%"')
            out["recursive_data"] = client._untagged_response(*out["recursive"], "LIST")
            typ, _ = client._simple_command("LIST", '"" ("INBOX" "Work/*") RETURN '
                                               "(STATUS (MESSAGES SIZE))")
            out["list_status"] = (typ, client.untagged_responses.pop("LIST", None),
                                  client.untagged_responses.pop("STATUS", None))
            out["status"] = client.status("INBOX", "(SIZE)")
            client.logout()
        return out

    @defer.inlineCallbacks
    def test_imaplib(self):  # type: ignore[no-untyped-def]
        """imaplib sees LIST-EXTENDED LIST-STATUS STATUS=SIZE, gets CHILDINFO for an unsubscribed
        parent, a STATUS after each LIST line, and STATUS SIZE."""
        yield self.store.deliver(BOSS, MESSAGE, "bob@example.org")
        out = yield threads.deferToThread(self._session, self.port.getHost().port)
        for cap in ("LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE"):
            self.assertIn(cap, out["caps"])
        self.assertEqual(out["recursive"][0], "OK")
        self.assertIn(b'(\\HasChildren) "/" Work ("CHILDINFO" ("SUBSCRIBED"))',
                      out["recursive_data"][1])
        typ, lists, statuses = out["list_status"]
        self.assertEqual(typ, "OK")
        self.assertEqual(lists, [b'(\\HasNoChildren) "/" INBOX',
                                 b'(\\HasNoChildren) "/" Work/2026'])
        size = len(to_wire(MESSAGE))
        self.assertEqual(statuses, [b"INBOX (MESSAGES 1 SIZE %d)" % size,
                                    b"Work/2026 (MESSAGES 0 SIZE 0)"])
        self.assertEqual(out["status"], ("OK", [b"INBOX (SIZE %d)" % size]))
