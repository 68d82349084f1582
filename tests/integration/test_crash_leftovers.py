"""The real server after ``kill -9`` in the middle of a locked operation (issue 9, items 18 and
19): the dotlock it held (``/var/mail/boss.lock`` with its pid) and the new file of a rewrite
(``.boss.mailsuite-rewrite``) are left; after a restart INBOX is usable at once (not after 30 s
of waiting and a 300 s staleness), mail is delivered at once, and the leftovers are gone."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import time

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_end_to_end import message


class KilledServerLeftoversTests(unittest.TestCase):
    timeout = 90

    def test_restart_after_kill9_holding_the_inbox_lock(self) -> None:
        site = Site(self)
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=15) as s:
            s.sendmail("alice@remote.test", ["boss@example.test"], message("before", "b"))
        # what the server leaves when killed inside an expunge: its own dotlock, the new file
        lock = site.inbox("boss") + ".lock"
        with open(lock, "w") as f:
            f.write(f"{site.process.pid}\n")  # type: ignore[union-attr]
        rewrite = os.path.join(site.spool, ".boss.mailsuite-rewrite")
        with open(rewrite, "wb") as f:
            f.write(b"From x  Tue Nov 28 06:01:02 2026\n" + b"x" * 1_000_000)
        site.kill9()
        site.start()
        started = time.monotonic()
        imap = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=20)
        imap.login("boss", "secret")
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        imap.logout()
        pop = poplib.POP3("127.0.0.1", site.ports["pop3"], timeout=20)
        pop.user("boss")
        pop.pass_("secret")
        self.assertEqual(pop.stat()[0], 1)
        pop.quit()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=20) as s:
            s.sendmail("alice@remote.test", ["boss@example.test"], message("after", "a"))
        self.assertLess(time.monotonic() - started, 10)
        with open(site.inbox("boss"), "rb") as f:
            self.assertIn(b"Subject: after", f.read())
        self.assertFalse(os.path.exists(lock))
        self.assertFalse(os.path.exists(rewrite))
