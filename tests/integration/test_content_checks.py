"""Postfix's content checks in the real server: a REJECT through SMTP (the client gets the
table's 550) and through sendmail (a bounce to the sender, as Postfix's pickup), a PREPEND in
the delivered mbox, a table changed while the server runs (a broken change refused, the
previous version kept), and a broken table at start as a one-line start-up error."""

from __future__ import annotations

import os
import re
import smtplib
import time

from twisted.trial import unittest

from tests.integration.test_commands import MTASite, read, wait_for
from tests.integration.test_startup_failures import run_to_exit

HEADER_CHECKS = """\
# as a Postfix admin writes them
/^Subject:.*buy now/ REJECT no spam here
/^Subject: (tagged.*)/ PREPEND X-Checked: $1
/^Subject: hold me/ HOLD looks odd
if /^X-Mailer:/
/bulkmailer/ DISCARD
endif
"""
BODY_CHECKS = "/^forbidden word/ REJECT 5.7.1 body says no\n"


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)  # the network process (mail_owner) reads it


def checks_site(case: unittest.TestCase) -> MTASite:
    site = MTASite(case, "postmaster: boss\nroot: boss\n")  # tables in its directory
    header, body = os.path.join(site.dir, "header_checks"), os.path.join(site.dir, "body_checks")
    write(header, HEADER_CHECKS)
    write(body, BODY_CHECKS)
    site.mail_extra = f"header_checks = regexp:{header}\nbody_checks = pcre:{body}\n"
    site.config = site._write("mail.ini", site.ini())
    site.header_table = header  # type: ignore[attr-defined]
    return site


def message(subject: str, body: str = "hello\n") -> str:
    return f"From: carol@example.test\nTo: boss@example.test\nSubject: {subject}\n\n{body}"


class ContentCheckTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = checks_site(self)
        self.site.start()

    def smtp(self, subject: str, body: str = "hello\n") -> None:
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=30) as s:
            s.sendmail("carol@example.test", ["boss@example.test"], message(subject, body))

    def test_smtp_reject_and_prepend(self) -> None:
        e = self.assertRaises(smtplib.SMTPDataError, self.smtp, "please buy now")
        self.assertEqual((e.smtp_code, e.smtp_error), (550, b"5.7.1 no spam here"))
        wait_for("the reject line", lambda: "reject: header" in self.site.maillog_text())
        self.assertRegex(self.site.maillog_text(), re.escape(
            ": reject: header Subject: please buy now from localhost[127.0.0.1];"
            " from=<carol@example.test> to=<boss@example.test> proto=ESMTP helo=<")
            + r"[^>]*>: 5\.7\.1 no spam here")
        self.smtp("tagged mail")
        wait_for("delivery", lambda: "tagged mail" in read(self.site.inbox("boss")))
        box = read(self.site.inbox("boss"))
        self.assertIn("X-Checked: tagged mail\nSubject: tagged mail\n", box)
        self.assertNotIn("buy now", box)
        self.assertIn(": prepend: header Subject: tagged mail from localhost[127.0.0.1];",
                      self.site.maillog_text())

    def test_hold_keeps_it_in_the_hold_queue(self) -> None:
        """HOLD: taken (250), not delivered, in the hold queue (mailq's ``!``), with the reason;
        released (mailsuite-queue -H), it is delivered once."""
        self.smtp("hold me")
        wait_for("the hold line", lambda: ": hold: header Subject: hold me"
                 in self.site.maillog_text())
        listing = self.site.run("mailq").stdout.decode()
        qid = re.search(r"^([0-9A-F]+)!", listing, re.M)
        self.assertIsNotNone(qid, listing)
        self.assertNotIn("hold me", read(self.site.inbox("boss")))
        self.site.run("mailsuite-queue", "-H", qid.group(1))  # type: ignore[union-attr]
        wait_for("the release", lambda: "hold me" in read(self.site.inbox("boss")))
        self.assertEqual(read(self.site.inbox("boss")).count("Subject: hold me"), 1)

    def test_body_reject_through_sendmail_bounces_to_the_sender(self) -> None:
        p = self.site.run("sendmail", "-i", "-f", "carol@example.test", "boss",
                          stdin=message("plain", "first line\nforbidden word here\n").encode())
        self.assertEqual(p.returncode, 0, p.stderr)  # sendmail has exited: the mail is taken
        wait_for("the bounce", lambda: "body says no" in read(self.site.inbox("carol")))
        bounce = read(self.site.inbox("carol"))
        self.assertIn("5.7.1", bounce)
        self.assertNotIn("forbidden word", read(self.site.inbox("boss")))
        self.assertIn(": reject: body forbidden word here from local; from=<carol@example.test>"
                      " to=<boss@example.test>: 5.7.1 body says no", self.site.maillog_text())

    def test_changed_table_is_used_and_a_broken_change_refused(self) -> None:
        table = self.site.header_table  # type: ignore[attr-defined]
        time.sleep(1.1)
        write(table, "/^Subject:.*new rule/ REJECT changed\n")
        time.sleep(1.1)  # checked at most once a second
        e = self.assertRaises(smtplib.SMTPDataError, self.smtp, "a new rule")
        self.assertEqual(e.smtp_error, b"5.7.1 changed")
        self.smtp("buy now is fine now")  # the old rule is gone
        write(table, "/^Subject:.*new rule/ REJECT changed\n/(/ REJECT\n")
        time.sleep(1.1)
        e = self.assertRaises(smtplib.SMTPDataError, self.smtp, "a new rule again")
        self.assertEqual(e.smtp_error, b"5.7.1 changed")
        self.assertIn(f"warning: {table}:2: bad pattern /(/", self.site.maillog_text())


class BrokenAtStart(unittest.TestCase):
    def test_broken_table_is_a_startup_error(self) -> None:
        site = checks_site(self)
        write(site.header_table, "/ok/ DUNNO\nif /^X-/\n")  # type: ignore[attr-defined]
        status, out, err = run_to_exit(site.config, site.dir)
        self.assertNotEqual(status, 0)
        self.assertNotIn("Traceback", out + err)
        self.assertEqual(err.strip().splitlines(), [
            f"mailsuite: [mail] header_checks: {site.header_table}:2: "  # type: ignore[attr-defined]
            "if without a matching endif"])

    def test_table_mail_owner_cannot_read_is_a_startup_error(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (a server with privilege separation)")
        site = checks_site(self)
        os.chmod(site.header_table, 0o600)  # type: ignore[attr-defined]
        status, _out, err = run_to_exit(site.config, site.dir)
        self.assertNotEqual(status, 0)
        self.assertEqual(err.strip().splitlines(), [
            f"mailsuite: [mail] header_checks: {site.header_table}: "  # type: ignore[attr-defined]
            "Permission denied (the tables are read by mail_owner)"])
