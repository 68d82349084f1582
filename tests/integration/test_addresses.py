"""Postfix's address habits against the real server: ``recipient_delimiter`` (plus-addressing)
over SMTP to the mbox, and virtual_alias_maps (a second domain on the host)."""

from __future__ import annotations

import os
import smtplib

from twisted.trial import unittest

from tests.integration.harness import PRIVSEP
from tests.integration.test_commands import MTASite, read, wait_for
from tests.integration.test_startup_failures import run_to_exit


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


class VirtualAliasTests(unittest.TestCase):
    def test_virtual_alias_domain_over_smtp(self) -> None:
        """A second domain on the host through virtual_alias_maps: RCPT info@example.net is
        250 and lands in boss's INBOX, sales@ in boss's and carol's; an address the table
        does not have is 550 5.1.1 at RCPT (even one named like a local account); relaying
        to other domains stays closed."""
        site = MTASite(self, "postmaster: boss\n")
        table = os.path.join(site.dir, "virtual")
        with open(table, "w") as f:
            f.write("example.net  virtual\ninfo@example.net  boss\n"
                    "sales@example.net  boss, carol@example.test\n")
        with open(site.config, "a") as f:
            f.write(f"\n[mail]\nvirtual_alias_maps = hash:{table}\n")
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
            s.mail("joe@remote.test")
            self.assertEqual(s.rcpt("info@example.net")[0], 250)
            self.assertEqual(s.rcpt("sales@example.net")[0], 250)
            code, text = s.rcpt("carol@example.net")
            self.assertEqual(code, 550)
            self.assertIn(b"5.1.1 <carol@example.net>: Recipient address rejected: User unknown"
                          b" in virtual alias table", text)
            self.assertEqual(s.rcpt("x@elsewhere.example")[0], 554)
            self.assertEqual(s.data(b"Subject: virtual\n\nfor a virtual domain\n")[0], 250)
        wait_for("boss's copy", lambda: "for a virtual domain" in read(site.inbox("boss")))
        wait_for("carol's copy", lambda: "for a virtual domain" in read(site.inbox("carol")))
        self.assertEqual(read(site.inbox("boss")).count("for a virtual domain"), 1)
        self.assertIn("X-Original-To: info@example.net", read(site.inbox("boss")))

    def test_bad_table_refuses_the_start(self) -> None:
        """A table with a bad line, or one mail_owner cannot read (privilege separation: the
        network process reads it), stops twistd with one line naming key, file and line."""
        site = MTASite(self, "postmaster: boss\n")
        table = os.path.join(site.dir, "virtual")
        with open(site.config, "a") as f:
            f.write(f"\n[mail]\nvirtual_alias_maps = {table}\n")
        cases = [("lonely@example.net\n", 0o644,
                  f"[mail] virtual_alias_maps: {table}:1: 'lonely@example.net' has no value")]
        if PRIVSEP:
            cases.append(("a@example.net boss\n", 0o600,
                          f"[mail] virtual_alias_maps: {table}: Permission denied"))
        for text, mode, expected in cases:
            with open(table, "w") as f:
                f.write(text)
            os.chmod(table, mode)
            status, _, err = run_to_exit(site.config, site.dir)
            self.assertEqual(status, 1)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith(f"mailsuite: {expected}"), err)
