"""Quotas (issue 14 item 7): Dovecot's rule text, per-user overrides read again without a
restart, the usage record that counts only what changed, the store refusing a write over
quota, the one-time warning, and IMAP QUOTA (RFC 9208) over StringTransport."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from mailsuite.config import ConfigError, parse_config
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.mta.quota import check_at_start
from mailsuite.startup import StartupError
from mailsuite.store import quota as q
from mailsuite.store.mbox import MboxStore
from mailsuite.store.quota import Limits, QuotaExceeded, RuleFile
from tests.configs import real_config
from tests.test_imap_server import Session
from tests.test_store_mbox import FakeMailboxConfig, MboxTestCase

MSG = b"Subject: hi\n\nhello\n"
G = 1024**3


class QuotaConfig(FakeMailboxConfig):
    def __init__(self, spool: str, rule: str = "", rule_file: str = "", warning: int = 0,
                 status: str = "552 5.2.2 Mailbox is full") -> None:
        super().__init__(spool)
        self.quota_rule = q.parse_rules(rule)
        self.quota_rule_file = rule_file
        self.quota_warning = warning
        self.quota_status_overquota = q.parse_quota_status(status)


class RuleTests(unittest.TestCase):
    def test_dovecot_rule_text(self) -> None:
        """``*:storage=`` in kilobytes unless suffixed (as Dovecot), ``bytes=``, ``messages=``,
        several rules by spaces or joined by ':', later ones winning; empty: no quota."""
        self.assertEqual(q.parse_rules("*:storage=1G"), Limits(G, None))
        self.assertEqual(q.parse_rules("*:storage=1048576"), Limits(G, None))
        self.assertEqual(q.parse_rules("*:bytes=1000"), Limits(1000, None))
        self.assertEqual(q.parse_rules("*:storage=1G *:messages=10000"), Limits(G, 10000))
        self.assertEqual(q.parse_rules("*:storage=10M:messages=5"), Limits(10 * 1024**2, 5))
        self.assertFalse(q.parse_rules("").any)
        self.assertFalse(q.parse_rules("*:storage=0").any)

    def test_rules_refused(self) -> None:
        """A per-folder root, relative limits, an unknown resource or a bad size are refused,
        and mail.ini names the section and key."""
        for bad in ("Trash:storage=+100M", "storage=1G", "*:storage=1X", "*:files=3",
                    "*:storage=+10M", "*:messages=ten", "*:storage"):
            self.assertRaises(ValueError, q.parse_rules, bad)
        with self.assertRaises(ConfigError) as caught:
            parse_config("[mailbox]\nquota_rule = Trash:storage=1G\n", "mail.ini",
                         hostname=lambda: "h")
        self.assertIn("[mailbox] quota_rule", str(caught.exception))
        cfg = parse_config("[mailbox]\nquota_rule = *:storage=1G *:messages=100\n"
                           "quota_warning = 90%\n"
                           "quota_status_overquota = \"452 4.2.2 Mailbox is full\"\n",
                           "mail.ini", hostname=lambda: "h")
        self.assertEqual(cfg.mailbox.quota_rule, Limits(G, 100))
        self.assertEqual(cfg.mailbox.quota_warning, 90)
        self.assertEqual(cfg.mailbox.quota_status_overquota, (452, "4.2.2", "Mailbox is full"))
        self.assertTrue(cfg.mailbox.quota_configured)
        self.assertFalse(real_config().mailbox.quota_configured)
        for bad in ("552 4.2.2 x", "250 2.0.0 ok", "552 Mailbox full"):
            self.assertRaises(ValueError, q.parse_quota_status, bad)
        self.assertRaises(ValueError, q.parse_warning, "150")

    def test_rule_file_lines_and_a_broken_one(self) -> None:
        """``user:storage=2G`` / ``user:messages=N`` lines (comments, both in one line, a
        user's lines adding up); a broken line is refused at start naming file and line."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# overrides\nboss:storage=2G\nboss:messages=50\n\n"
                    "alice:storage=0:messages=3  # no storage limit\n")
        users = q.read_rule_file(path)
        self.assertEqual(users["boss"], Limits(2 * G, 50))
        self.assertEqual(users["alice"], Limits(0, 3))
        with open(path, "a") as f:
            f.write("carol storage=1G\n")
        with self.assertRaises(StartupError) as caught:
            check_at_start(replace(real_config().mailbox, quota_rule_file=path))
        self.assertIn(f"{path}:6:", str(caught.exception))
        with self.assertRaises(StartupError):
            check_at_start(replace(real_config().mailbox, quota_rule_file=path + ".missing"))
        with open(path, "w") as f:
            f.write("boss:storage=1G\n")
        os.chmod(path, 0o600)
        check_at_start(replace(real_config().mailbox, quota_rule_file=path))
        with self.assertRaises(StartupError) as caught:  # the users' agents read it
            check_at_start(replace(real_config().mailbox, quota_rule_file=path), agents=True)
        self.assertIn("chmod 644", str(caught.exception))

    def test_rule_file_read_again_without_restart(self) -> None:
        """A changed file is read at the next look a second later; a broken version keeps the
        last good rules; the user's line replaces only what it names of the default."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("boss:storage=2G\n")
        clock = [100.0]
        rules = RuleFile(path, lambda: clock[0])
        quota = q.Quota(Limits(G, 1000), rules, 0, lambda a: [], lambda a: "")
        self.assertEqual(quota.limits("boss"), Limits(2 * G, 1000))
        self.assertEqual(quota.limits("other"), Limits(G, 1000))
        with open(path, "w") as f:
            f.write("boss:messages=7\n# longer now\n")
        self.assertEqual(quota.limits("boss"), Limits(2 * G, 1000))  # not a second yet
        clock[0] += 1.0
        self.assertEqual(quota.limits("boss"), Limits(G, 7))
        with open(path, "w") as f:
            f.write("boss:messages=seven and more\n")
        clock[0] += 1.0
        self.assertEqual(quota.limits("boss"), Limits(G, 7))
        self.flushLoggedErrors()


class UsageTests(MboxTestCase):
    def quota_store(self, **kw: Any) -> MboxStore:
        self.store = MboxStore(QuotaConfig(self.spool, **kw), self.blocking, now=self.now,
                               lock_timeout=0.2)
        return self.store

    def usage(self) -> q.Usage:
        report = self.successResultOf(self.store.quota_report(self.account))
        return report[0]  # type: ignore[no-any-return]

    def test_no_quota_no_cost(self) -> None:
        """Without quota_rule the store has no quota: nothing is counted or refused."""
        store = self.make_store()
        self.assertIsNone(store.quota)
        self.assertIsNone(store.quota_report(self.account))

    def test_counted_over_inbox_and_folders(self) -> None:
        """Deliveries, an APPEND to a folder, a COPY-like append, and an EXPUNGE change the
        usage (messages, and the mbox files' bytes); the record lives beside the indexes."""
        store = self.quota_store(rule="*:messages=100")
        for _ in range(3):
            self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.assertEqual(self.usage().messages, 3)
        self.successResultOf(store.create(self.account, "Work"))
        box = self.successResultOf(store.open(self.account, "Work"))
        self.successResultOf(box.append(MSG))
        self.successResultOf(box.append(MSG))
        self.assertEqual(self.usage().messages, 5)
        sizes = os.path.getsize(self.path) + os.path.getsize(box._file.path)
        self.assertEqual(self.usage().storage, sizes)
        self.successResultOf(box.expunge([box.messages[0].uid]))
        self.successResultOf(box.settled())
        box.close()
        self.assertEqual(self.usage().messages, 4)
        record = os.path.join(self.account.home, "mail", ".imap", ".quota")
        self.assertTrue(os.path.exists(record))
        self.assertEqual(oct(os.stat(record).st_mode & 0o777), "0o600")

    def test_mbox_files_of_the_tree(self) -> None:
        """INBOX, file folders and the mail of a folder with children are counted; the index
        directory, dotfiles, symlinks and files that are no folder are not."""
        store = self.quota_store(rule="*:messages=100")
        for name in ("Work", "Work/2024", "Sent"):
            self.successResultOf(store.create(self.account, name))
        for name in ("Work", "Work/2024", "Sent"):
            box = self.successResultOf(store.open(self.account, name))
            self.successResultOf(box.append(MSG))
            box.close()
        root = os.path.join(self.account.home, "mail")
        os.symlink(self.path, os.path.join(root, "Elsewhere"))
        with open(os.path.join(root, "dovecot-uidvalidity"), "w") as f:
            f.write("From x\n")
        found = q.mbox_files(root, self.path)
        self.assertEqual(found[0], self.path)
        self.assertEqual(sorted(os.path.relpath(p, root) for p in found[1:]),
                         ["Sent", "Work/2024", "Work/mBoX-MeSsAgEs"])
        self.assertEqual(self.usage().messages, 3)

    def test_external_writer_counted_from_where_it_was(self) -> None:
        """Postfix appending to the INBOX: only the new tail is read; mutt rewriting it (same
        size, other bytes): that mailbox alone is counted again."""
        store = self.quota_store(rule="*:messages=100")
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.assertEqual(self.usage().messages, 1)
        starts: list[int] = []
        real = q.count_messages

        def spy(fd: int, start: int, size: int) -> int:
            starts.append(start)
            return real(fd, start, size)

        self.patch(q, "count_messages", spy)
        before = os.path.getsize(self.path)
        self.external_append(b"Subject: by postfix\n\nFrom here on\nbody\n")
        self.external_append(b"Subject: again\n\nx\n")
        self.assertEqual(self.usage().messages, 3)
        self.assertEqual(starts, [before - 6])
        data = self.read_file().replace(b"Subject: again", b"Subject: AGAIN")
        with open(self.path, "wb") as f:
            f.write(data[:-1] + b"Z")
        os.utime(self.path, ns=(1, 1))
        self.assertEqual(self.usage().messages, 3)
        self.assertEqual(starts[-1], 0)

    def test_over_quota_refused_at_every_write(self) -> None:
        """A delivery, a group commit and an APPEND that would pass a limit fail with
        QuotaExceeded (IMAP code OVERQUOTA, the configured SMTP reply); nothing is written."""
        store = self.quota_store(rule="*:messages=2", status="452 4.2.2 Try later")
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        f = self.failureResultOf(store.deliver_many(self.account, [(MSG, "a"), (MSG, "b")]),
                                 QuotaExceeded)
        self.assertEqual(f.value.code, "OVERQUOTA")
        self.assertEqual(f.value.reply, (452, "4.2.2", "Try later"))
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.failureResultOf(store.deliver(self.account, MSG, "a@example.test"), QuotaExceeded)
        box = self.successResultOf(store.open(self.account))
        self.failureResultOf(box.append(MSG), QuotaExceeded)
        self.assertEqual(len(box.messages), 2)
        box.close()
        store = self.quota_store(rule=f"*:bytes={os.path.getsize(self.path) + 10}")
        self.failureResultOf(store.deliver(self.account, MSG * 2, "a"), QuotaExceeded)
        self.failureResultOf(store.quota_admit(self.account, 11, 1), QuotaExceeded)
        self.successResultOf(store.quota_admit(self.account, 5, 1))

    def test_warning_once_until_usage_drops(self) -> None:
        """Crossing quota_warning puts one warning into INBOX (even at the limit); the next
        deliveries add none; after usage drops below, crossing again warns again."""
        store = self.quota_store(rule="*:messages=4", warning=50)
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.assertNotIn(b"quota", self.read_file())
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.assertEqual(self.read_file().count(b"Subject: Your mailbox is 50% full"), 1)
        self.assertEqual(self.usage().messages, 3)
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.assertEqual(self.read_file().count(b"Subject: Your mailbox is 50% full"), 1)
        self.assertEqual(self.usage().messages, 4)  # full: the warning was let in
        box = self.successResultOf(store.open(self.account))
        self.successResultOf(box.expunge([m.uid for m in box.messages]))
        self.successResultOf(box.settled())
        box.close()
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))  # 1 of 4
        self.successResultOf(store.deliver(self.account, MSG, "a@example.test"))
        self.assertEqual(self.read_file().count(b"Subject: Your mailbox is 50% full"), 1)
        self.assertEqual(self.usage().messages, 3)


@implementer(IRealm)
class _Realm:
    def __init__(self, store: MboxStore, account: Any) -> None:
        self.store, self.account = store, account

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        avatar = ImapAccount(self.store, self.account)
        return IImapAccount, avatar, avatar.logout


class ImapQuotaTests(MboxTestCase):
    def session(self, rule: str = "*:storage=1M *:messages=3") -> Session:
        cfg = real_config(mailbox={"quota_rule": q.parse_rules(rule)})
        self.store = MboxStore(QuotaConfig(self.spool, rule=rule), self.blocking,
                               now=self.now)
        portal = Portal(_Realm(self.store, self.account),
                        [InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")])
        factory = IMAPFactory(cfg, portal, MailLog(None, "mail.example.com", now=lambda: 0.0),
                              clock=Clock())
        s = Session(factory)
        s.login()
        return s

    def test_capabilities_only_with_a_quota(self) -> None:
        """QUOTA, QUOTA=RES-STORAGE, QUOTA=RES-MESSAGE (and STATUS=SIZE) are advertised when
        a quota is configured, not otherwise."""
        caps = self.session().cmd(b"a CAPABILITY")
        self.assertIn(b" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE STATUS=SIZE", caps)
        self.assertNotIn(b"QUOTA", self.session("").cmd(b"a CAPABILITY"))

    def test_getquotaroot_getquota_setquota(self) -> None:
        """GETQUOTAROOT names "User quota" with its QUOTA (STORAGE in KiB, MESSAGE); GETQUOTA
        of it the same, of another root NO; SETQUOTA NO; a missing mailbox NO [NONEXISTENT]."""
        s = self.session()
        self.successResultOf(self.store.deliver(self.account, MSG, "a@example.test"))
        kib = (os.path.getsize(self.path) + 1023) // 1024
        out = s.cmd(b"a GETQUOTAROOT INBOX")
        self.assertIn(b'* QUOTAROOT INBOX "User quota"\r\n', out)
        self.assertIn(b'* QUOTA "User quota" (STORAGE %d 1024 MESSAGE 1 3)\r\n' % kib, out)
        self.assertIn(b"a OK", out)
        out = s.cmd(b'b GETQUOTA "User quota"')
        self.assertIn(b'* QUOTA "User quota" (STORAGE %d 1024 MESSAGE 1 3)\r\nb OK' % kib, out)
        self.assertIn(b"c NO", s.cmd(b'c GETQUOTA "other"'))
        self.assertIn(b"d NO [NOPERM]", s.cmd(b'd SETQUOTA "User quota" (STORAGE 10)'))
        self.assertIn(b"e NO [NONEXISTENT]", s.cmd(b"e GETQUOTAROOT Nothing"))
        self.assertIn(b"f BAD", s.cmd(b"f GETQUOTA"))

    def test_append_and_copy_over_quota(self) -> None:
        """APPEND past the message limit: NO [OVERQUOTA]; a COPY of more than fits copies
        nothing (NO [OVERQUOTA], the target unchanged); MOVE, which frees what it adds, is
        let through at the limit."""
        s = self.session("*:messages=3")
        for _ in range(2):
            self.successResultOf(self.store.deliver(self.account, MSG, "a@example.test"))
        self.assertIn(b"a OK", s.cmd(b"a CREATE Work"))
        s.cmd(b"S SELECT INBOX")
        out = s.cmd(b"b COPY 1:2 Work")
        self.assertIn(b"b NO [OVERQUOTA]", out)
        self.assertIn(b"(MESSAGES 0)", s.cmd(b"c STATUS Work (MESSAGES)"))
        self.assertIn(b"d OK", s.cmd(b"d COPY 1 Work"))
        self.assertTrue(s.cmd(b"e APPEND Work {9}").startswith(b"+ "))
        self.assertIn(b"e NO [OVERQUOTA]", s.cmd(b"Subject:x"))
        out = s.cmd(b"f MOVE 2 Work")  # full, yet a move is let through
        self.assertIn(b"f OK", out)
        self.assertIn(b"(MESSAGES 2)", s.cmd(b"g STATUS Work (MESSAGES)"))

    def test_status_size_and_deleted(self) -> None:
        """STATUS SIZE (RFC 8438: octets, as FETCH RFC822.SIZE), DELETED and DELETED-STORAGE
        (RFC 9208: messages with \\Deleted, and their KiB)."""
        s = self.session()
        self.successResultOf(self.store.deliver(self.account, MSG, "a@example.test"))
        self.successResultOf(self.store.deliver(self.account, MSG, "a@example.test"))
        s.cmd(b"S SELECT INBOX")
        s.cmd(b"a STORE 1 +FLAGS (\\Deleted)")
        out = s.cmd(b"b STATUS INBOX (MESSAGES SIZE DELETED DELETED-STORAGE)")
        size = int(s.cmd(b"c FETCH 1 RFC822.SIZE").split(b"RFC822.SIZE ")[1].split(b")")[0])
        self.assertIn(b"(MESSAGES 2 SIZE %d DELETED 1 DELETED-STORAGE 1)" % (2 * size), out)


class DeferredHelpers(unittest.TestCase):
    def test_over(self) -> None:
        """Usage plus the new message over a limit is refused; exactly at it is not."""
        limits = Limits(100, 3)
        self.assertFalse(q.over(q.Usage(90, 1), limits, 10))
        self.assertTrue(q.over(q.Usage(90, 1), limits, 11))
        self.assertTrue(q.over(q.Usage(0, 3), limits, 1))
        self.assertFalse(q.over(q.Usage(10**9, 10**6), Limits(0, 0), 1))
        self.assertIsInstance(defer.succeed(None), defer.Deferred)
