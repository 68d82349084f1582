"""Quotas against the real, privilege-separated daemon (issue 14 item 7): the agent keeps the
usage with the user's rights, the network process asks it at RCPT; smtplib, smtplib.LMTP and
imaplib see Dovecot's and Postfix's answers."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
import time

from twisted.trial import unittest

from tests.integration.harness import Site, free_port
from tests.integration.test_commands import make_site, read, wait_for
from tests.integration.test_end_to_end import TIMEOUT, Clients
from tests.integration.test_startup_failures import run_to_exit

SMALL = b"From: <a@remote.test>\nSubject: small\n\nhello\n"
WARNING = "Subject: Your mailbox is 75% full"


def small(i: int) -> bytes:
    return SMALL.replace(b"small", b"small %d" % i)


class QuotaTests(unittest.TestCase):
    def setUp(self) -> None:
        shared = tempfile.mkdtemp(prefix="ms-quota-", dir="/tmp")
        self.addCleanup(shutil.rmtree, shared, True)
        os.chmod(shared, 0o755)
        self.rules = os.path.join(shared, "quota-users")
        self.write_rules("carol:messages=100\n")
        self.lmtp = free_port()
        self.site = make_site(self, "postmaster: boss\n", lmtp=self.lmtp)
        # set before the first start (Site wrote mail.ini in its constructor)
        with open(self.site.config, encoding="utf-8") as f:
            text = f.read()
        with open(self.site.config, "w", encoding="utf-8") as f:
            f.write(text.replace("[mailbox]\n", "[mailbox]\nquota_rule = *:storage=60k"
                                 f" *:messages=4\nquota_warning = 75\n"
                                 f"quota_rule_file = {self.rules}\n"))
        self.site.start()
        self.c = Clients(self.site)

    def write_rules(self, text: str) -> None:
        with open(self.rules + ".new", "w") as f:
            f.write(text)
        os.chmod(self.rules + ".new", 0o644)
        os.replace(self.rules + ".new", self.rules)

    def rcpt(self, size: int | None, to: str = "boss@example.test") -> tuple[int, bytes]:
        with self.c.smtp() as s:
            s.ehlo()
            s.mail("alice@remote.test", [f"SIZE={size}"] if size else [])
            return s.rcpt(to)

    def test_smtp_imap_and_the_warning(self) -> None:
        """boss (4 messages, 60 KiB): a message too big is refused at RCPT (SIZE=) and at DATA
        (without SIZE=) with 552 5.2.2; the
        third small one crosses 75% and one warning lands in INBOX (filling it); then RCPT
        with SIZE= is 552 5.2.2, IMAP APPEND NO [OVERQUOTA], GETQUOTAROOT shows the usage;
        carol's own line keeps her open; a changed quota_rule_file opens boss again without a
        restart; LMTP answers per recipient."""
        self.c.send(small(1), ["boss@example.test"])
        big = SMALL + b"x" * 70 * 1024 + b"\n"
        with self.c.smtp() as s, self.assertRaises(smtplib.SMTPRecipientsRefused) as refused:
            s.sendmail("alice@remote.test", ["boss@example.test"], big)  # SIZE= given
        self.assertEqual(refused.exception.recipients["boss@example.test"][0], 552)
        with self.c.smtp() as s:  # no SIZE=: the real size, at DATA
            s.ehlo()
            s.mail("alice@remote.test")
            self.assertEqual(s.rcpt("boss@example.test")[0], 250)
            code, text = s.data(big)
        self.assertEqual((code, text), (552, b"5.2.2 Mailbox is full"))
        self.c.send(small(2), ["boss@example.test"])
        self.c.send(small(3), ["boss@example.test"])
        wait_for("the warning", lambda: WARNING in read(self.site.inbox("boss")))
        code, text = self.rcpt(100)
        self.assertEqual(code, 552, text)
        self.assertEqual(text, b"5.2.2 <boss@example.test>: Recipient address rejected:"
                               b" Mailbox is full")
        self.assertEqual(self.rcpt(None)[0], 552)  # full on messages: no SIZE needed
        self.assertEqual(self.rcpt(100, "carol@example.test")[0], 250)
        self.assertIn("NOQUEUE: reject: RCPT from", read(self.site.maillog))

        m = self.c.imap()
        try:
            typ, data = m.getquotaroot("INBOX")
            self.assertEqual(typ, "OK")
            self.assertEqual(data[0], [b'INBOX "User quota"'])
            self.assertRegex(data[1][0], rb'^"User quota" \(STORAGE \d+ 60 MESSAGE 4 4\)$')
            typ, data = m.append("INBOX", None, None, b"Subject: x\r\n\r\ny\r\n")
            self.assertEqual(typ, "NO")
            self.assertIn(b"[OVERQUOTA]", data[0])
            self.assertEqual(m.select("INBOX"), ("OK", [b"4"]))
        finally:
            m.logout()
        self.assertEqual(read(self.site.inbox("boss")).count(WARNING), 1)
        self.assertIn("From: Mail Delivery System <MAILER-DAEMON@mail.example.test>",
                      read(self.site.inbox("boss")))
        record = os.path.join(self.site.home("boss"), "mail", ".imap", ".quota")
        self.assertEqual(os.stat(record).st_uid, self.site.uids["boss"])

        with smtplib.LMTP("127.0.0.1", self.lmtp, timeout=TIMEOUT) as lmtp:
            lmtp.ehlo()  # LHLO
            lmtp.mail("alice@remote.test")
            self.assertEqual(lmtp.rcpt("boss@example.test")[0], 250)
            self.assertEqual(lmtp.rcpt("carol@example.test")[0], 250)
            lmtp.putcmd("data")
            self.assertEqual(lmtp.getreply()[0], 354)
            lmtp.send(b"Subject: by lmtp\r\n\r\nhi\r\n.\r\n")
            replies = [lmtp.getreply() for _ in range(2)]
        self.assertEqual(replies[0][0], 552, replies)
        self.assertIn(b"5.2.2 <boss@example.test>", replies[0][1])
        self.assertEqual(replies[1][0], 250, replies)

        self.write_rules("carol:messages=100\nboss:messages=10\n")
        deadline = time.monotonic() + 10
        while self.rcpt(100)[0] != 250 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.rcpt(100)[0], 250)
        self.c.send(small(5), ["boss@example.test"])
        wait_for("the fifth", lambda: "small 5" in read(self.site.inbox("boss")))


class QuotaStartTests(unittest.TestCase):
    def test_broken_rule_file_refused_at_start(self) -> None:
        """A broken quota_rule_file line stops twistd before it binds anything: one line on
        stderr naming the file and the line, no traceback, a non-zero status."""
        site = Site(self)
        rules = os.path.join(site.dir, "quota-users")
        with open(rules, "w") as f:
            f.write("boss:storage=2G\nbroken line\n")
        os.chmod(rules, 0o644)
        with open(site.config, encoding="utf-8") as f:
            text = f.read()
        with open(site.config, "w", encoding="utf-8") as f:
            f.write(text.replace("[mailbox]\n", f"[mailbox]\nquota_rule_file = {rules}\n"))
        status, out, err = run_to_exit(site.config, site.dir)
        self.assertNotEqual(status, 0)
        self.assertNotIn("Traceback", out + err)
        self.assertEqual(err.strip().splitlines(), [
            f"mailsuite: [mailbox] quota_rule_file: {rules}:2: expected user:storage=SIZE or"
            " user:messages=N"])
