"""The attacks of issue 9 (S1, S2, S3) and a user without a home (item 9), through the real
server (running as root) with imaplib, poplib and smtplib: one user's symlinks and swapped
directories never reach another user's mail."""

from __future__ import annotations

import imaplib
import os
import shutil
import time

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_end_to_end import Clients, message

ROOT_ONLY = None if os.geteuid() == 0 else "the attacks need a root daemon and other uids"
CAROL_MAIL = (
    b"From alice@remote.test  Tue Nov 28 06:01:02 2026\n"
    b"Subject: for carol only\n\ncarol's secret\n\n"
)


class PathAttackTests(unittest.TestCase):
    """boss attacks carol's spool file (carol: uid site.uids["carol"])."""

    skip = ROOT_ONLY

    def setUp(self) -> None:
        self.site = Site(self)
        self.c = Clients(self.site)
        self.carol = self.site.inbox("carol")
        with open(self.carol, "wb") as f:
            f.write(CAROL_MAIL)
        os.chown(self.carol, self.site.uids["carol"], self.site.uids["carol"])
        os.chmod(self.carol, 0o600)
        self.boss_uid = self.site.uids["boss"]
        self.mail = os.path.join(self.site.home("boss"), "mail")
        self.site.start()

    def as_boss(self, path: str) -> None:
        os.lchown(path, self.boss_uid, self.boss_uid)

    def spool_untouched(self, *also: str) -> None:
        with open(self.carol, "rb") as f:
            self.assertEqual(f.read(), CAROL_MAIL)
        self.assertEqual(os.stat(self.carol).st_uid, self.site.uids["carol"])
        # a dotlock of a retry from the queue may come and go meanwhile: it is no mailbox
        names = [n for n in os.listdir(self.site.spool) if not n.endswith(".lock")]
        self.assertEqual(sorted(names), sorted(["carol", *also]))

    def test_symlinked_mail_directory(self) -> None:
        """S1: ~boss/mail -> the spool. LIST shows INBOX alone; DELETE carol, CREATE carol2,
        SELECT carol and APPEND carol answer NO; carol's file is unchanged and no file
        appears in the spool; the log has one line for it, no traceback."""
        m = self.c.imap()
        m.list()  # the login made the special-use folders in the real ~/mail: away with it
        shutil.rmtree(self.mail)
        os.symlink(self.site.spool, self.mail)
        self.as_boss(self.mail)
        typ, data = m.list('""', "*")
        self.assertEqual((typ, data), ("OK", [b'(\\HasNoChildren) "/" INBOX']))
        for command in (
            lambda: m.delete("carol"),
            lambda: m.create("carol2"),
            lambda: m.select("carol"),
            lambda: m.append("carol", None, None, b"Subject: boss was here\r\n\r\nx\r\n"),
            lambda: m.rename("carol", "mine"),
            lambda: m.status("carol", "(MESSAGES)"),
        ):
            typ, data = command()
            self.assertEqual(typ, "NO", data)
        typ, data = m.delete("carol")
        self.assertIn(b"symbolic link", data[0])
        m.logout()
        self.spool_untouched()
        self.assertIn("symbolic link: refused", self.site.log())
        self.assertNotIn("Traceback", self.site.log())

    def test_symlink_as_parent_folder(self) -> None:
        """S1 variant: ~boss/mail/lnk -> the spool, ~boss/mail/lnkf -> carol's file. CREATE and
        RENAME under them answer NO [CANNOT] (a user's mistake, logged in one line, no
        traceback); nothing is made in the spool."""
        m = self.c.imap()
        m.create("x")
        os.symlink(self.site.spool, os.path.join(self.mail, "lnk"))
        os.symlink(self.carol, os.path.join(self.mail, "lnkf"))
        for name in ("lnk", "lnkf"):
            self.as_boss(os.path.join(self.mail, name))
        for command in (
            lambda: m.create("lnk/carol2"),
            lambda: m.create("lnkf/sub"),
            lambda: m.rename("x", "lnk/x"),
            lambda: m.append("lnk/y", None, None, b"Subject: boss was here\r\n\r\nx\r\n"),
        ):
            typ, data = command()
            self.assertEqual(typ, "NO", data)
        typ, data = m.create("lnk/carol2")
        self.assertIn(b"[CANNOT]", data[0])
        m.logout()
        self.spool_untouched()
        self.assertNotIn("Traceback", self.site.log())

    def test_directory_swapped_after_select(self) -> None:
        """S2: SELECT dir/carol (boss's own empty file), then dir is swapped for a symlink to
        the spool: NOOP shows none of carol's messages, FETCH reads none, STORE + EXPUNGE
        removes nothing, APPEND writes nothing; carol's file is unchanged."""
        os.makedirs(os.path.join(self.mail, "dir"))
        for path in (self.mail, os.path.join(self.mail, "dir")):
            self.as_boss(path)
        open(os.path.join(self.mail, "dir", "carol"), "wb").close()
        self.as_boss(os.path.join(self.mail, "dir", "carol"))
        m = self.c.imap()
        typ, data = m.select("dir/carol")
        self.assertEqual((typ, data), ("OK", [b"0"]))
        os.rename(os.path.join(self.mail, "dir"), os.path.join(self.mail, "dir.old"))
        os.symlink(self.site.spool, os.path.join(self.mail, "dir"))
        time.sleep(0.1)  # past the 50 ms in which a command reuses the last refresh
        typ, data = m.noop()  # NO [NOPERM] ...: a symbolic link: refused
        self.assertNotIn(b"1 EXISTS", b" ".join(d for d in data if d))
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        self.assertNotIn(b"secret", repr(data).encode())
        m.uid("STORE", "1:*", "+FLAGS", "(\\Deleted)")
        m.expunge()
        typ, data = m.append("dir/carol", None, None, b"Subject: boss was here\r\n\r\nx\r\n")
        self.assertEqual(typ, "NO", data)
        m.logout()
        self.spool_untouched()

    def test_spool_file_made_by_someone_else(self) -> None:
        """S3: boss makes the spool file of a user with no mail yet (a 1777 spool): mail for
        that user is deferred, logged, and not written into boss's file."""
        victim = self.site.inbox("boss")  # boss's own INBOX owned by carol stands in for it
        with open(victim, "wb"):
            pass
        os.chown(victim, self.site.uids["carol"], self.site.uids["carol"])
        self.c.send(message("to boss", "hello"), ["boss@example.test"])
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"")
        deadline = time.monotonic() + 10
        while "status=deferred" not in self.site.maillog_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(f"owned by uid {self.site.uids['carol']}", self.site.maillog_text())
        self.assertIn("dsn=4.2.0, status=deferred", self.site.maillog_text())
        self.spool_untouched("boss")


class NoHomeTests(unittest.TestCase):
    """Item 9: boss made by plain useradd (no home directory)."""

    def setUp(self) -> None:
        self.site = Site(self)
        shutil.rmtree(self.site.home("boss"))
        self.site.start()
        self.c = Clients(self.site)

    def test_pop3_and_imap_inbox(self) -> None:
        """Mail is delivered; POP3 lists, reads and deletes it; IMAP LIST shows INBOX, SELECT
        INBOX and FETCH work; CREATE answers NO naming the missing home."""
        for i in range(2):
            self.c.send(message(f"no home {i}", "hello"), ["boss@example.test"])
        p = self.c.pop3()
        self.assertEqual(p.stat()[0], 2)
        self.assertIn(b"Subject: no home 0", b"\n".join(p.retr(1)[1]))
        p.dele(1)
        p.quit()
        m = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=15)
        m.login("boss", "secret")
        typ, data = m.list('""', "*")
        self.assertEqual((typ, data), ("OK", [b'(\\HasNoChildren) "/" INBOX']))
        typ, data = m.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertIn(b"no home 1", data[0][1])
        typ, data = m.create("Work")
        self.assertEqual(typ, "NO")
        self.assertIn(f"no home directory ({self.site.home('boss')})".encode(), data[0])
        m.logout()
        self.assertFalse(os.path.lexists(self.site.home("boss")))
        self.assertNotIn("Traceback", self.site.log())
