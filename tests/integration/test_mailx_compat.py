"""mbox compatibility with s-nail (Debian's mailx): each reads what the other writes."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_end_to_end import Clients, message

SNAIL = shutil.which("s-nail")


def snail(*args: str, stdin: str = "") -> str:
    proc = subprocess.run(
        [SNAIL, "-:/", *args], input=stdin, capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"s-nail {args} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


class MailxCompatTests(unittest.TestCase):
    if SNAIL is None:
        skip = "s-nail is not installed (scripts/setup-debian.sh test installs it)"

    def setUp(self) -> None:
        self.site = Site(self)
        self.site.start()
        self.c = Clients(self.site)

    def test_snail_reads_our_mbox(self) -> None:
        """s-nail lists every message mailsuite delivered, with the right subjects and bodies,
        including a body line that starts with 'From '."""
        self.c.send(message("first one", "line one\nFrom here on it is quoted\n"),
                    ["boss@example.test"])
        self.c.send(message("second one", "line two\n"), ["boss@example.test"])
        out = snail("-#", "-R", "-f", self.site.inbox("boss"), stdin="headers\ntype 1\ntype 2\n")
        self.assertIn("first one", out)
        self.assertIn("second one", out)
        self.assertIn("From here on it is quoted", out)
        self.assertIn("line two", out)
        self.assertIn("Message  2", out)
        self.assertNotIn("Message  3", out)

    def test_we_serve_what_snail_wrote(self) -> None:
        """Messages s-nail appended to an INBOX (as it saves to a file) are served by POP3 and IMAP,
        and our own delivery appended after them stays separate."""
        for subject in ("written by snail 1", "written by snail 2"):
            snail("-Sexpandaddr=file", "-s", subject, "-r", "alice@remote.test",
                  self.site.inbox("carol"), stdin=f"body of {subject}\n")
        if os.geteuid() == 0:  # carol's own s-nail would have made it hers (else not delivered)
            os.chown(self.site.inbox("carol"), self.site.uids["carol"], self.site.uids["carol"])
        self.c.send(message("then ours", "ours\n", to="carol@example.test"), ["carol@example.test"])
        p = self.c.pop3("carol", "hunter2")
        self.assertEqual(p.stat()[0], 3)
        texts = [b"\r\n".join(p.retr(n)[1]) for n in (1, 2, 3)]
        p.quit()
        self.assertIn(b"Subject: written by snail 1", texts[0])
        self.assertIn(b"body of written by snail 2", texts[1])
        self.assertIn(b"Subject: then ours", texts[2])
        m = self.c.imap("carol", "hunter2")
        m.select("INBOX")
        _typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = [d[1].strip() for d in data if isinstance(d, tuple)]
        self.assertEqual(subjects, [b"Subject: written by snail 1", b"Subject: written by snail 2",
                                    b"Subject: then ours"])
        m.logout()
