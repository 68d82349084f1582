"""IMAP4rev2 (RFC 9051) from the stdlib's imaplib against the IMAP server on a real TCP port
(127.0.0.1, port 0), over an mbox store in a temporary directory: ENABLE IMAP4rev2, SELECT's
LIST and no RECENT, SEARCH answered with ESEARCH, UTF-8 folder names, STATUS DELETED SIZE;
an imaplib session that does not enable it gets IMAP4rev1's replies on the same server."""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer, threads

from tests.integration.test_imap_sort_real import MboxImapCase

CAFE = "Café".encode()


class ImaplibRev2Tests(MboxImapCase):
    def _rev2(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port, timeout=30) as client:
            out["caps"] = client.capabilities
            client.login("boss", "secret")
            for n in range(3):
                client.append("INBOX", None, None, b"Subject: m%d\r\n\r\nbody\r\n" % n)
            out["enable"] = client.enable("IMAP4rev2")
            out["select"] = client.select("INBOX")
            out["list"] = client.response("LIST")
            out["recent"] = client.response("RECENT")
            out["fetch"] = client.fetch("1", "(FLAGS)")
            client.store("2", "+FLAGS", "(\\Deleted)")
            out["search"] = client.search(None, "ALL")
            out["esearch"] = client.response("ESEARCH")
            out["uid search"] = client.uid("SEARCH", "DELETED")
            out["uid esearch"] = client.response("ESEARCH")
            out["create"] = client.create(b'"' + CAFE + b'"')[0]
            out["listed"] = client.list('""', "*")
            out["status"] = client.status("INBOX", "(MESSAGES DELETED SIZE)")
            out["logout"] = client.logout()[0]
        with imaplib.IMAP4("127.0.0.1", port, timeout=30) as client:
            client.login("boss", "secret")
            client.select("INBOX")
            out["rev1 recent"] = client.response("RECENT")
            out["rev1 search"] = client.search(None, "ALL")
            out["rev1 list"] = client.list('""', "Caf*")
            client.logout()
        return out

    @defer.inlineCallbacks
    def test_imaplib_rev2(self):  # type: ignore[no-untyped-def]
        """imaplib enables IMAP4rev2 and gets RFC 9051's replies; a second imaplib session,
        which does not, gets RFC 3501's (RECENT, SEARCH, modified UTF-7 names)."""
        out = yield threads.deferToThread(self._rev2, self.port.getHost().port)
        self.assertIn("IMAP4REV2", out["caps"])
        self.assertIn("IMAP4REV1", out["caps"])
        self.assertEqual(out["enable"], ("OK", [b"Enabled."]))
        self.assertEqual(out["select"], ("OK", [b"3"]))
        self.assertEqual(out["list"], ("LIST", [b'(\\HasNoChildren) "/" INBOX']))
        self.assertEqual(out["recent"], ("RECENT", [None]))
        self.assertEqual(out["fetch"], ("OK", [b"1 (FLAGS ())"]))
        self.assertEqual(out["search"], ("OK", [None]))  # no SEARCH response
        self.assertEqual(out["esearch"], ("ESEARCH", [b'(TAG "%s") ALL 1:3' % (
            out["esearch"][1][0].split(b'"')[1])]))
        self.assertEqual(out["uid esearch"][1][0].split(b") ")[1], b"UID ALL 2")
        self.assertEqual(out["create"], "OK")
        self.assertIn(b'(\\HasNoChildren) "/" "' + CAFE + b'"', out["listed"][1])
        self.assertRegex(out["status"][1][0], rb"^INBOX \(MESSAGES 3 DELETED 1 SIZE \d+\)$")
        self.assertEqual(out["logout"], "BYE")
        self.assertEqual(out["rev1 recent"][1], [b"3"])  # appended: left recent by rev2
        self.assertEqual(out["rev1 search"], ("OK", [b"1 2 3"]))
        self.assertEqual(out["rev1 list"][1], [b'(\\HasNoChildren) "/" Caf&AOk-'])
