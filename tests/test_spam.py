"""Spam into Junk (issue 12 item 4): mailsuite.store.spam's check, the store's choice of folder
(MboxStore.deliver_many, the one place every mailbox delivery passes) and LocalDelivery's
batches, which never mix spam with other mail."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.config import ConfigError, parse_config
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.store.mbox import MboxStore
from mailsuite.store.spam import parse_spam_header, spam_marked
from tests import test_store_mbox
from tests.configs import real_config
from tests.fakes import FakeAccounts
from tests.test_delivery import ALIASES, BOSS, HeldStore, make_config, write_aliases

SPAM = b"Return-Path: <x@spam.test>\nX-Spam: Yes\nSubject: win\n\nbuy\n"
HAM = b"Return-Path: <a@x.test>\nSubject: hello\n\nhi\n"


class SpamMarkTests(unittest.TestCase):
    def test_rspamd_and_spamassassin_marks(self) -> None:
        """``yes`` (any case, as the first word) or a leading ``*`` in any field of that name;
        other values, the body and an empty spam_header do not count."""
        yes = [b"X-Spam: Yes\n\n", b"x-spam:YES\n\n", b"X-Spam: No\nX-Spam: yes\n\n",
               b"X-Spam: *****\n\n", b"X-Spam: Yes, score=9.1\n\n", b"X-Spam:\n\tYes\n\n"]
        no = [b"X-Spam: No\n\n", b"X-Spam: Yesterday\n\n", b"Subject: x\n\nX-Spam: Yes\n",
              b"X-Spam-Flag: YES\n\n", b"X-Spam: \n\n"]
        for data in yes:
            self.assertTrue(spam_marked(data, "X-Spam"), data)
        for data in no:
            self.assertFalse(spam_marked(data, "X-Spam"), data)
        self.assertTrue(spam_marked(b"X-Spam-Flag: YES\n\n", "X-Spam-Flag"))
        self.assertFalse(spam_marked(b"X-Spam: Yes\n\n", ""))

    def test_config_key(self) -> None:
        """[mailbox] spam_header: X-Spam by default; empty turns it off; a bad name refused."""
        self.assertEqual(real_config().mailbox.spam_header, "X-Spam")
        self.assertEqual(real_config(mailbox={"spam_header": ""}).mailbox.spam_header, "")
        self.assertEqual(parse_spam_header(" X-Spam-Flag "), "X-Spam-Flag")
        self.assertRaises(ValueError, parse_spam_header, "X Spam:")
        with self.assertRaises(ConfigError) as caught:
            parse_config("[mailbox]\nspam_header = X Spam\n", "mail.ini", hostname=lambda: "h")
        self.assertIn("spam_header", str(caught.exception))
        off = parse_config("[mailbox]\nspam_header =\n", "mail.ini", hostname=lambda: "h")
        self.assertEqual(off.mailbox.spam_header, "")


class JunkConfig(test_store_mbox.FakeMailboxConfig):
    def __init__(self, spool: str, spam_header: str = "X-Spam", junk: str = "Junk") -> None:
        super().__init__(spool)
        self.spam_header, self.junk = spam_header, junk


class JunkStoreTests(test_store_mbox.MboxTestCase):
    def junk_store(self, **kw: str) -> MboxStore:
        self.store = MboxStore(JunkConfig(self.spool, **kw), self.blocking, now=self.now,
                               lock_timeout=0.2)
        return self.store

    def folder(self, name: str) -> list[bytes]:
        box = self.successResultOf(self.store.open(self.account, name))
        try:
            return [self.successResultOf(defer.maybeDeferred(box.read, m.uid))
                    for m in box.messages]
        finally:
            box.close()

    def test_spam_goes_to_junk_made_when_missing(self) -> None:
        """A marked message lands in ~/mail/Junk (made now, the account's), the other in
        INBOX, from one batch."""
        store = self.junk_store()
        self.successResultOf(store.deliver_many(self.account, [(SPAM, "x@spam.test"),
                                                               (HAM, "a@x.test")]))
        junk = os.path.join(self.account.home, "mail", "Junk")
        self.assertEqual(os.stat(junk).st_uid, self.account.uid)
        self.assertEqual(len(self.folder("Junk")), 1)
        self.assertIn(b"Subject: win", self.folder("Junk")[0])
        inbox = self.folder("INBOX")
        self.assertEqual(len(inbox), 1)
        self.assertIn(b"Subject: hello", inbox[0])
        self.successResultOf(store.deliver(self.account, SPAM, "x@spam.test"))
        self.assertEqual(len(self.folder("Junk")), 2)

    def test_off(self) -> None:
        """spam_header empty, or no junk folder configured: everything into INBOX."""
        for kw in ({"spam_header": ""}, {"junk": ""}):
            store = self.junk_store(**kw)
            self.successResultOf(store.deliver_many(self.account, [(SPAM, "x@spam.test")]))
        self.assertFalse(os.path.exists(os.path.join(self.account.home, "mail", "Junk")))
        self.assertEqual(len(self.folder("INBOX")), 2)

    def test_no_home_keeps_it_in_inbox(self) -> None:
        """An account that can have no folders (no home) still gets its spam, in INBOX."""
        os.rmdir(self.account.home)
        store = self.junk_store()
        self.successResultOf(store.deliver_many(self.account, [(SPAM, "x@spam.test")]))
        with open(self.path, "rb") as f:
            self.assertIn(b"Subject: win", f.read())


class SpamBatchTests(unittest.TestCase):
    def test_spam_is_batched_apart(self) -> None:
        """Group commit never puts spam and other mail for one account in one batch (the
        store writes them to two folders; a batch fails or succeeds whole)."""
        store = HeldStore()
        delivery = LocalDelivery(make_config(write_aliases(self, ALIASES)), FakeAccounts(BOSS),
                                 store, MailLog(None, "mail.example.com"), threads.InPool(reactor))
        for n, data in enumerate((HAM, SPAM, HAM, SPAM)):
            delivery.deliver(data, "s@x.test", [("boss@mail.example.com", BOSS)], f"Q{n}")
        batches = [[b"X-Spam: Yes" in data for data, _ in items] for _, items, _ in store.pending]
        self.assertEqual(batches, [[False], [True]])
        for _, _, waiter in list(store.pending):
            waiter.callback(None)
        batches = [[b"X-Spam: Yes" in data for data, _ in items]
                   for _, items, _ in store.pending[2:]]
        self.assertEqual(sorted(batches), [[False], [True]])
        for _, _, waiter in store.pending[2:]:
            waiter.callback(None)
