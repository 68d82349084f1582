"""Two IMAP sessions on one mailbox of the real server (twistd, mbox store): RFC 3501 points a
scripted compliance run found us wrong on."""

from __future__ import annotations

import re

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_outlook import Imap


class PendingExpungeFetchTests(unittest.TestCase):
    def test_uid_of_message_expunged_elsewhere(self) -> None:
        """Session B may still FETCH UID/FLAGS of a message session A expunged, until B is told
        of the EXPUNGE (RFC 3501 7.4.1 keeps B's numbering): OK with the data, then the NOOP
        reports the EXPUNGE."""
        site = Site(self)
        site.start()
        a, b = Imap(site.ports["imap"]), Imap(site.ports["imap"])
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        for c in (a, b):
            c.cmd("LOGIN boss secret")
        for n in range(3):
            a.append("APPEND INBOX", b"Subject: %d\r\n\r\nbody\r\n" % n)
        a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        uid = re.search(rb"UID (\d+)", b.cmd("FETCH 3 UID")).group(1)  # type: ignore[union-attr]
        a.cmd("STORE 3 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"* 3 EXPUNGE", a.cmd("EXPUNGE"))
        out = b.cmd("FETCH 3 (UID FLAGS)")
        self.assertRegex(out, rb"\* 3 FETCH \(UID " + uid + rb" FLAGS \([^)]*\)\)\r\n\S+ OK")
        self.assertNotIn(b"EXPUNGE", out)
        self.assertIn(b"* 3 EXPUNGE", b.cmd("NOOP"))
