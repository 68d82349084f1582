"""Spam into Junk against the real, privilege-separated daemon (issue 12 item 4): a message
with ``X-Spam: Yes`` (what rspamd's milter adds) lands in ~/mail/Junk, made with the user's
rights, whichever door it came by (SMTP, sendmail); IMAP shows it in Junk, POP3 does not list
it; other mail stays in INBOX."""

from __future__ import annotations

import os
import poplib

from twisted.trial import unittest

from tests.integration.test_commands import MTASite, read, wait_for
from tests.integration.test_end_to_end import Clients

SPAM = b"From: <x@spam.test>\nSubject: cheap pills\nX-Spam: Yes\n\nbuy now\n"
HAM = b"From: <a@remote.test>\nSubject: lunch\n\nat noon\n"


class SpamIntoJunkTests(unittest.TestCase):
    def test_spam_in_junk_not_in_pop3(self) -> None:
        """SMTP and sendmail spam in ~/mail/Junk (the user's file); IMAP lists both there,
        INBOX and POP3 have only the other message."""
        site = MTASite(self, "postmaster: boss\n")
        site.start()
        clients = Clients(site)
        clients.send(SPAM, ["boss@example.test"])
        clients.send(HAM, ["boss@example.test"])
        p = site.run("sendmail", "-i", "boss", stdin=SPAM.replace(b"cheap", b"local"))
        self.assertEqual(p.returncode, 0, p.stderr)
        junk = os.path.join(site.home("boss"), "mail", "Junk")
        wait_for("two in Junk", lambda: read(junk).count("buy now") == 2)
        wait_for("lunch in INBOX", lambda: "at noon" in read(site.inbox("boss")))
        self.assertNotIn("buy now", read(site.inbox("boss")))
        self.assertEqual(os.stat(junk).st_uid, os.stat(site.home("boss")).st_uid)

        m = clients.imap()
        try:
            typ, data = m.select("Junk")
            self.assertEqual((typ, data), ("OK", [b"2"]))
            typ, got = m.fetch("1:2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects = b"".join(part[1] for part in got if isinstance(part, tuple))
            self.assertIn(b"cheap pills", subjects)
            self.assertIn(b"local pills", subjects)
            self.assertEqual(m.select("INBOX"), ("OK", [b"1"]))
        finally:
            m.logout()

        pop: poplib.POP3 = clients.pop3()
        try:
            count, _ = pop.stat()
            self.assertEqual(count, 1)
            self.assertIn(b"Subject: lunch", b"\n".join(pop.retr(1)[1]))
        finally:
            pop.quit()
