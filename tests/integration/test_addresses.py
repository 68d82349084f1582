"""Postfix's address habits against the real server: ``recipient_delimiter`` (plus-addressing)
over SMTP to the mbox."""

from __future__ import annotations

import smtplib

from twisted.trial import unittest

from tests.integration.test_commands import MTASite, read, wait_for


class PlusAddressingTests(unittest.TestCase):
    def test_plus_address_lands_in_the_users_inbox(self) -> None:
        """RCPT boss+news@: 250, the message in boss's INBOX with ``Delivered-To:
        boss+news@example.test``; an unknown user with an extension is still 550 5.1.1."""
        site = MTASite(self, "postmaster: boss\n", mail_extra="recipient_delimiter = +\n")
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
            s.mail("joe@remote.test")
            self.assertEqual(s.rcpt("boss+news@example.test")[0], 250)
            code, text = s.rcpt("nobody+news@example.test")
            self.assertEqual((code, text[:5]), (550, b"5.1.1"))
            self.assertEqual(s.data(b"Subject: plus\n\nplus addressed\n")[0], 250)
        wait_for("the message", lambda: "plus addressed" in read(site.inbox("boss")))
        box = read(site.inbox("boss"))
        self.assertIn("\nX-Original-To: boss+news@example.test\n", box)
        self.assertIn("\nDelivered-To: boss+news@example.test\n", box)
