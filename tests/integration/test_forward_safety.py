"""~/.forward and :include: read by the real (root) server as the user could read them: a user
cannot make the daemon read, through a symlink, a hard link or an :include:, a file of root's
or of another user's (smtplib against twistd on loopback)."""

from __future__ import annotations

import os
import smtplib
import time

from twisted.trial import unittest

from tests.integration.harness import Site

ROOT_ONLY = None if os.geteuid() == 0 else "needs a root daemon and other uids"
WAIT = 30.0
SECRET = "carol@example.test\ntopsecret-line\n"


class ForwardSafetyTests(unittest.TestCase):
    skip = ROOT_ONLY

    def setUp(self) -> None:
        self.site = Site(self)
        os.chmod(self.site.dir, 0o755)  # the users may search it, as /etc or /home
        self.boss = self.site.uids["boss"]
        self.forward = os.path.join(self.site.home("boss"), ".forward")
        self.secret = self.write("secret", SECRET, 0o600)  # root's

    def write(self, name: str, text: str, mode: int, uid: int = 0) -> str:
        path = os.path.join(self.site.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        os.chown(path, uid, uid)
        return path

    def send(self) -> tuple[int, bytes]:
        """RCPT TO boss (and the whole message when accepted): the RCPT reply."""
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=WAIT) as s:
            s.mail("joe@remote.test")
            code, text = s.rcpt("boss@example.test")
            if code == 250:
                s.data(b"Subject: for boss\r\n\r\nbody for boss\r\n")
            return code, text

    def mailbox(self, user: str) -> str:
        try:
            with open(self.site.inbox(user), encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for_mailbox(self, user: str) -> None:
        deadline = time.monotonic() + WAIT
        while "body for boss" not in self.mailbox(user):
            if time.monotonic() > deadline:
                self.fail(f"no mail in {user}'s mailbox")
            time.sleep(0.05)

    def test_include_of_root_file_refused(self) -> None:
        """`:include:` of a root-only file in boss's .forward: RCPT is refused 550, naming the
        file and "Permission denied", and no line of the file appears anywhere."""
        self.write_forward(f":include:{self.secret}\n")
        self.site.start()
        code, text = self.send()
        self.assertEqual(code, 550, text)
        self.assertIn(b"Permission denied", text)
        self.assertNotIn(b"topsecret", text)
        self.assertNotIn("topsecret", self.site.log() + self.site.maillog_text())
        self.assertNotIn("Traceback", self.site.log())

    def test_include_of_readable_list(self) -> None:
        """A list boss may read (root's, 0644) is included: carol gets the message, boss's
        mailbox does not (the .forward replaces it)."""
        listing = self.write("list", "carol\n", 0o644)
        self.write_forward(f":include:{listing}\n")
        self.site.start()
        self.assertEqual(self.send()[0], 250)
        self.wait_for_mailbox("carol")
        self.assertEqual(self.mailbox("boss"), "")

    def test_symlink_ignored(self) -> None:
        """~/.forward as a symlink (boss's) to root's file: ignored with a warning in the log,
        the mail lands in boss's own mailbox."""
        os.symlink(self.secret, self.forward)
        os.lchown(self.forward, self.boss, self.boss)
        self.site.start()
        self.assertEqual(self.send()[0], 250)
        self.wait_for_mailbox("boss")
        self.assertIn("symbolic link: refused", self.site.log())
        self.assertEqual(self.mailbox("carol"), "")

    def test_hard_link_ignored(self) -> None:
        """~/.forward as a hard link to a root file (protected_hardlinks off): ignored."""
        os.link(self.write("list", "carol\n", 0o644), self.forward)
        self.site.start()
        self.assertEqual(self.send()[0], 250)
        self.wait_for_mailbox("boss")
        self.assertIn("owned by root with 2 hard links", self.site.log())
        self.assertEqual(self.mailbox("carol"), "")

    def write_forward(self, text: str) -> None:
        with open(self.forward, "w") as f:
            f.write(text)
        os.chown(self.forward, self.boss, self.boss)
