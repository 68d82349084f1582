"""LIST-EXTENDED, LIST-STATUS, STATUS=SIZE, OBJECTID and CREATE-SPECIAL-USE through the stdlib's
imaplib against the server on a real TCP port (127.0.0.1, port 0)."""

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
            out["create"] = client._simple_command("CREATE", "Drafts2 (USE (\\Drafts))")
            out["create_code"] = client.untagged_responses.pop("MAILBOXID", None)
            out["status_id"] = client.status("Drafts2", "(MAILBOXID)")
            out["special"] = client._simple_command("LIST", '(SPECIAL-USE) "" Drafts2')
            out["special_data"] = client.untagged_responses.pop("LIST", None)
            client.select("INBOX")
            out["emailid"] = client.fetch("1", "(EMAILID THREADID)")
            client.logout()
        return out

    @defer.inlineCallbacks
    def test_imaplib(self):  # type: ignore[no-untyped-def]
        """imaplib sees LIST-EXTENDED LIST-STATUS STATUS=SIZE OBJECTID CREATE-SPECIAL-USE, gets
        CHILDINFO for an unsubscribed parent, a STATUS after each LIST line, STATUS SIZE; CREATE
        with USE answers the MAILBOXID STATUS gives and LIST shows the use; FETCH EMAILID."""
        yield self.store.deliver(BOSS, MESSAGE, "bob@example.org")
        out = yield threads.deferToThread(self._session, self.port.getHost().port)
        for cap in ("LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "OBJECTID",
                    "CREATE-SPECIAL-USE"):
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
        self.assertEqual(out["create"][0], "OK")
        created = out["create_code"][-1].strip(b"()")  # imaplib keeps each CREATE's code
        self.assertIn(b"[MAILBOXID (%s)]" % created, out["create"][1][0])
        self.assertEqual(out["status_id"], ("OK", [b"Drafts2 (MAILBOXID (%s))" % created]))
        self.assertEqual(out["special_data"], [b'(\\HasNoChildren \\Drafts) "/" Drafts2'])
        typ, data = out["emailid"]
        self.assertEqual(typ, "OK")
        self.assertRegex(
            data[0], rb"\A1 \(EMAILID \(M[0-9a-f]{24}\) THREADID \(T[0-9a-f]{24}\)\)\Z")
