"""rspamd (Debian's package) as Postfix admins run it: its proxy worker in milter mode, here on
a free loopback port, started by the test from the binary with a minimal configuration
(bench/rspamd_milter.py, shared with the benchmark). GTUBE and its add-header /
rewrite-subject variants make rspamd take each action."""

from __future__ import annotations

import os
import smtplib

from twisted.trial import unittest

from bench import rspamd_milter
from tests.integration.daemons import Daemon
from tests.integration.harness import free_port
from tests.integration.test_commands import MTASite, read, wait_for

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
ADD_HEADER = "Y" + GTUBE[1:]
REWRITE_SUBJECT = "Z" + GTUBE[1:]


class Rspamd(Daemon):
    def __init__(self, testcase: unittest.TestCase) -> None:
        self.dir = testcase.mktemp()
        self.port = free_port()
        super().__init__(testcase, "rspamd", rspamd_milter.command(self.dir, self.port),
                         os.path.join(self.dir, "rspamd.out"))

    @property
    def milter(self) -> str:  # as smtpd_milters names it
        return f"inet:127.0.0.1:{self.port}"


def message(subject: str, body: str) -> bytes:
    return (f"From: alice@remote.test\r\nTo: boss@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n"
            f"Date: Wed, 02 Dec 2026 01:00:00 +0000\r\n\r\n{body}\r\n").encode()


class RspamdTests(unittest.TestCase):
    timeout = 120
    if not os.path.exists(rspamd_milter.RSPAMD):
        skip = "rspamd is not installed (scripts/setup-debian.sh test installs it)"

    def setUp(self) -> None:
        self.rspamd = Rspamd(self)
        self.rspamd.start(port=self.rspamd.port, timeout=60)
        self.site = MTASite(self, mail_extra=f"smtpd_milters = {self.rspamd.milter}\n"
                            "milter_default_action = reject\n")
        self.site.start()

    def send(self, data: bytes) -> dict:
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=60) as s:
            return s.sendmail("alice@remote.test", ["boss@example.test"], data)

    def test_gtube_is_rejected_with_rspamds_reply(self) -> None:
        with self.assertRaises(smtplib.SMTPDataError) as caught:
            self.send(message("gtube", GTUBE))
        self.assertEqual((caught.exception.smtp_code, caught.exception.smtp_error),
                         (554, b"5.7.1 Gtube pattern"))

    def test_add_header_action_adds_its_header(self) -> None:
        """rspamd's add-header action adds X-Spam: Yes, and so the message goes to Junk
        ([mailbox] spam_header), not INBOX."""
        self.send(message("add header", ADD_HEADER))
        junk = os.path.join(self.site.home("boss"), "mail", "Junk")
        wait_for("the copy", lambda: "Subject: add header" in read(junk))
        self.assertIn("\nX-Spam: Yes\n", read(junk))
        self.assertNotIn("Subject: add header", read(self.site.inbox("boss")))

    def test_rewrite_subject(self) -> None:
        self.send(message("rewrite me", REWRITE_SUBJECT))
        wait_for("the copy", lambda: "rewrite me" in read(self.site.inbox("boss")))
        self.assertIn("\nSubject: *** SPAM *** rewrite me\n", read(self.site.inbox("boss")))

    def test_clean_mail_passes_unchanged(self) -> None:
        self.send(message("clean", "just a note"))
        wait_for("the copy", lambda: "Subject: clean" in read(self.site.inbox("boss")))
        copy = read(self.site.inbox("boss")).split("Subject: clean")[0].rsplit("\nFrom ", 1)[-1]
        self.assertNotIn("X-Spam", copy)
