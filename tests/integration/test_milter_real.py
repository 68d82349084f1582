"""The milter client against real libmilter: Debian's python3-milter (pymilter) runs
tests/integration/pymilter_server.py under the system Python, one process per milter, on
loopback or a unix socket; mailsuite (the real twistd) talks to it through smtpd_milters /
non_smtpd_milters."""

from __future__ import annotations

import os
import smtplib

from twisted.trial import unittest

from tests.integration.daemons import Daemon
from tests.integration.harness import ROOT, free_port
from tests.integration.test_commands import MTASite, read, wait_for

SCRIPT = os.path.join(ROOT, "tests", "integration", "pymilter_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def _has_pymilter() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return os.system(f"{SYSTEM_PYTHON} -c 'import Milter' 2>/dev/null") == 0


MESSAGE = (b"From: alice@remote.test\r\nTo: boss@example.test\r\nSubject: hi\r\n"
           b"X-Drop: away\r\nMessage-ID: <m1@remote.test>\r\n\r\nthe client's body\r\n")


class MilterCase(unittest.TestCase):
    timeout = 120
    if not _has_pymilter():
        skip = "python3-milter is not installed (scripts/setup-debian.sh test installs it)"

    def milter(self, mode: str, unix: bool = False) -> str:
        """Start a test milter; its smtpd_milters name."""
        tmp = self.mktemp()
        os.makedirs(tmp)
        self.notes = os.path.join(tmp, "notes")
        if unix:
            path = os.path.join("/tmp", f"ms-milter-{os.getpid()}-{mode}.sock")
            self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
            spec, name, port = f"unix:{path}", f"unix:{path}", None
        else:
            port = free_port()
            spec, name, path = f"inet:{port}@127.0.0.1", f"inet:127.0.0.1:{port}", None
        daemon = Daemon(self, f"milter {mode}", [SYSTEM_PYTHON, SCRIPT, spec, mode, self.notes],
                        os.path.join(tmp, "milter.log"))
        daemon.start(port=port, path=path)
        if path:  # the network process runs as mail_owner (README: a milter's unix socket)
            os.chmod(path, 0o666)
        return name

    def site(self, extra: str) -> MTASite:
        site = MTASite(self, mail_extra=extra)
        site.start()
        return site

    def send(self, site: MTASite, rcpts: list[str], data: bytes = MESSAGE) -> dict:
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
            return s.sendmail("alice@remote.test", rcpts, data)


class ModificationTests(MilterCase):
    def test_every_change_reaches_the_mailbox(self) -> None:
        """Headers added, inserted at the top, changed, deleted; sender changed; a recipient
        added and one removed; the body replaced; the macros were sent."""
        site = self.site(f"smtpd_milters = {self.milter('modify', unix=True)}\n")
        self.send(site, ["boss@example.test"])
        wait_for("carol's copy", lambda: "milter's body" in read(site.inbox("carol")))
        got = read(site.inbox("carol"))
        self.assertTrue(got.startswith("From changed@example.test "), got)
        self.assertLess(got.index("X-Top: first\nReceived: from"), got.index("Subject:"))
        self.assertIn("Subject: [milter] changed\n", got)
        self.assertIn("X-Test-Milter: seen\n", got)
        self.assertNotIn("X-Drop", got)
        self.assertIn("\nthe milter's body\n", got)
        self.assertNotIn("client's body", got)
        self.assertEqual(read(site.inbox("boss")), "")
        notes = read(self.notes)
        self.assertIn("j=mail.example.test", notes)
        self.assertIn("rcpt <boss@example.test> rcpt_addr=boss@example.test", notes)
        self.assertRegex(notes, r"mail <alice@remote.test> i=\w+")

    def test_chain_sees_the_first_ones_changes(self) -> None:
        first, second = self.milter("modify"), self.milter("second")
        site = self.site(f"smtpd_milters = {first}, {second}\n")
        self.send(site, ["boss@example.test"])
        wait_for("carol's copy", lambda: "X-Test-Milter" in read(site.inbox("carol")))


class DecisionTests(MilterCase):
    def test_multiline_reject(self) -> None:
        site = self.site(f"smtpd_milters = {self.milter('reject')}\n")
        with self.assertRaises(smtplib.SMTPDataError) as caught:
            self.send(site, ["boss@example.test"])
        self.assertEqual(caught.exception.smtp_code, 550)
        self.assertEqual(caught.exception.smtp_error, b"5.7.1 first line\n5.7.1 second line")
        wait_for("the log", lambda: "milter-reject: END-OF-MESSAGE" in site.maillog_text())
        self.assertIn("5.7.1 first line; from=<alice@remote.test> to=<boss@example.test>",
                      site.maillog_text())

    def test_rcpt_reject_drops_that_recipient(self) -> None:
        """Answered at RCPT, as Postfix's smtpd_milters are."""
        site = self.site(f"smtpd_milters = {self.milter('rcpt')}\n")
        refused = self.send(site, ["team@example.test", "carol@example.test"])
        self.assertEqual(refused, {"team@example.test": (550, b"5.1.1 no such user here")})
        wait_for("carol's copy", lambda: "Subject: hi" in read(site.inbox("carol")))
        self.assertIn("milter-reject: RCPT from", site.maillog_text())
        self.assertEqual(read(site.inbox("boss")), "")  # team (boss, carol) was refused

    def test_connect_helo_mail_refused_at_their_command(self) -> None:
        site = self.site(f"smtpd_milters = {self.milter('connect')}\n")
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
            self.assertEqual(s.ehlo("x.example"), (554, b"5.7.1 you are not welcome"))
            self.assertEqual(s.mail("alice@remote.test"), (554, b"5.7.1 you are not welcome"))
        self.assertIn("milter-reject: CONNECT from", site.maillog_text())
        site.stop()
        for mode in ("helo", "mail"):
            site = self.site(f"smtpd_milters = {self.milter(mode)}\n")
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
                if mode == "helo":
                    self.assertEqual(s.ehlo("bad.example"), (550, b"5.7.1 bad HELO"))
                    self.assertEqual(s.ehlo("good.example")[0], 250)
                else:
                    self.assertEqual(s.mail("spammer@remote.test")[0], 451)
                    self.assertEqual(s.mail("alice@remote.test")[0], 250)
                    self.assertEqual(s.rcpt("boss@example.test")[0], 250)
            site.stop()
        self.assertIn("milter-reject: MAIL from", site.maillog_text())

    def test_discard(self) -> None:
        site = self.site(f"smtpd_milters = {self.milter('discard')}\n")
        self.assertEqual(self.send(site, ["boss@example.test"]), {})
        wait_for("the log", lambda: "milter triggers DISCARD action" in site.maillog_text())
        self.assertEqual(read(site.inbox("boss")), "")

    def test_sendmail_reject_bounces_to_the_sender(self) -> None:
        """non_smtpd_milters: the pickup's message is refused by the milter and returned."""
        site = self.site(f"non_smtpd_milters = {self.milter('reject')}\n")
        p = site.run("sendmail", "-i", "-f", "boss@example.test", "carol",
                     stdin=b"Subject: local\n\nlocal body\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        wait_for("the bounce", lambda: "first line" in read(site.inbox("boss")))
        self.assertEqual(read(site.inbox("carol")), "")
        self.assertIn("cleanup", site.maillog_text())


class FailureTests(MilterCase):
    def test_dead_milter_default_tempfail(self) -> None:
        port = free_port()
        site = self.site(f"smtpd_milters = inet:127.0.0.1:{port}\n")
        with self.assertRaises(smtplib.SMTPHeloError) as caught:  # the CONNECT's answer
            self.send(site, ["boss@example.test"])
        self.assertEqual(caught.exception.smtp_code, 451)
        self.assertIn(b"4.7.1 Service unavailable - try again later", caught.exception.smtp_error)
        self.assertIn(f"warning: connect to Milter service inet:127.0.0.1:{port}:"
                      " Connection refused", site.maillog_text())

    def test_slow_milter_times_out(self) -> None:
        slow = self.milter("slow")
        site = self.site(f"smtpd_milters = {slow}, {{ {slow}, default_action=accept }}\n"
                         "milter_content_timeout = 1s\n")
        with self.assertRaises(smtplib.SMTPDataError) as caught:
            self.send(site, ["boss@example.test"])
        self.assertEqual(caught.exception.smtp_code, 451)
        self.assertIn(f"warning: milter {slow}: can't read SMFIC_BODYEOB reply packet header:"
                      " Connection timed out", site.maillog_text())

    def test_slow_milter_accepted_by_its_own_default_action(self) -> None:
        slow = self.milter("slow")
        site = self.site(f"smtpd_milters = {{ {slow}, default_action=accept }}\n"
                         "milter_content_timeout = 1s\n")
        self.send(site, ["boss@example.test"])
        wait_for("boss's copy", lambda: "Subject: hi" in read(site.inbox("boss")))
