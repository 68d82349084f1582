"""IMAP state of the mbox store across the life of an account and after crashes: UIDVALIDITY
never given twice (issue 9, item 2), Dovecot's state headers read when there is no index yet
(item 17), and what a killed server leaves in the spool (items 18, 19)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.mail import imap4

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.store import uidvalidity
from mailsuite.store.mbox import MboxStore
from tests.test_imap_server import WHEN, ImapTestCase, Session, make_config, make_portal
from tests.test_store_mbox import FakeMailboxConfig, MboxTestCase

MSG = b"From: a@example.test\nSubject: hello\n\nbody\n"


class UidValidityTests(MboxTestCase):
    """A new mailbox gets a UIDVALIDITY above every one the account gave before: not the clock
    alone (RFC 3501 2.3.1.1)."""

    @defer.inlineCallbacks
    def validity_of(self, store: MboxStore, name: str) -> defer.Deferred[int]:
        box = yield store.open(self.account, name)
        value = box.uid_validity
        box.close()
        return value

    @defer.inlineCallbacks
    def test_delete_and_create_in_the_same_second(self):
        """DELETE + CREATE of one name, and a second CREATE, within one second of the clock:
        three different, increasing values."""
        store = self.make_store()
        yield store.create(self.account, "Work")
        first = yield self.validity_of(store, "Work")
        yield store.delete(self.account, "Work")
        yield store.create(self.account, "Work")
        second = yield self.validity_of(store, "Work")
        yield store.create(self.account, "Play")
        third = yield self.validity_of(store, "Play")
        self.assertLess(first, second)
        self.assertLess(second, third)

    @defer.inlineCallbacks
    def test_clock_set_back_across_a_restart(self):
        """The last value is kept on disk: a new store (a restart) with the clock a day back
        still gives a higher one."""
        store = self.make_store()
        yield store.create(self.account, "Work")
        first = yield self.validity_of(store, "Work")
        self.clock[0] -= 86400
        store = self.make_store()
        yield store.create(self.account, "Later")
        later = yield self.validity_of(store, "Later")
        self.assertGreater(later, first)
        control = os.path.join(self.account.home, "mail", ".imap")
        with open(os.path.join(control, uidvalidity.FILENAME), "rb") as f:
            self.assertEqual(int(f.read().split()[0]), later)

    @defer.inlineCallbacks
    def test_rebuilt_index_gets_a_new_value(self):
        """An INBOX whose index was lost is a new mailbox: a new value, even in the same second."""
        box = yield self.open_with(MSG)
        first = box.uid_validity
        box.close()
        yield self.store.settle()
        os.unlink(self.index_path)
        box = yield self.make_store().open(self.account)
        self.assertGreater(box.uid_validity, first)
        box.close()


class RecentAfterRecreateTests(ImapTestCase):
    """The \\Recent tracker is keyed on (account, name, UIDVALIDITY): a mailbox deleted and made
    again in the same second must not inherit the old one's claims."""

    def setUp(self) -> None:
        super().setUp()
        root = self.mktemp()
        os.makedirs(os.path.join(root, "spool"))
        home = os.path.join(root, "home")
        os.makedirs(home)
        self.store = MboxStore(FakeMailboxConfig(os.path.join(root, "spool")), threads.inline,
                               now=lambda: WHEN)
        self.portal, self.realm = make_portal(self.store)
        self.realm.requestAvatar = lambda avatar_id, mind, *ifaces: self.avatar(avatar_id, home)
        self.factory = IMAPFactory(make_config(), self.portal, self.maillog, clock=self.clock)

    def avatar(self, avatar_id: bytes, home: str) -> Any:
        user = Account(avatar_id.decode(), os.getuid(), os.getgid(), home)
        account = ImapAccount(self.store, user)
        return imap4.IAccount, account, account.logout

    def test_new_mailbox_of_an_old_name_has_recent_mail(self) -> None:
        s = self.session()
        s.login()
        self.assertIn(b"a OK", s.cmd(b"a CREATE Work"))
        s.cmd(b"b APPEND Work {12+}\r\nSubject: 1\r\n")
        self.assertIn(b"* 1 RECENT", s.cmd(b"c SELECT Work"))
        s.cmd(b"d CLOSE")
        self.assertIn(b"e OK", s.cmd(b"e DELETE Work"))
        self.assertIn(b"f OK", s.cmd(b"f CREATE Work"))
        s.cmd(b"g APPEND Work {12+}\r\nSubject: 2\r\n")
        other = Session(self.factory)
        other.login()
        self.assertIn(b"* 1 RECENT", other.cmd(b"h SELECT Work"))


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: What Dovecot answered for tests/data/dovecot-2.3.19-inbox.mbox (see tests/data/README).
DOVECOT_VALIDITY = 1796155194
DOVECOT_FLAGS = {
    1: {"\\Seen", "$Work", "Project"},
    3: {"\\Answered", "\\Flagged"},
    4: set(),
    5: {"\\Seen", "Later"},
}
DOVECOT_UIDLS = ["000000016b0f273a", "000000036b0f273a", "000000046b0f273a", "000000056b0f273a"]


def dovecot_headers(base: bytes, *uids: bytes | None) -> bytes:
    """An mbox with ``X-IMAPbase: base`` in the first message and these X-UIDs."""
    out = []
    for i, uid in enumerate(uids):
        header = b"Subject: %d\n" % i
        if i == 0:
            header += b"X-IMAPbase: " + base + b"\n"
        if uid is not None:
            header += b"X-UID: " + uid + b"\n"
        out.append(b"From a@example.test  Tue Nov 28 06:01:02 2026\n" + header + b"\nbody\n\n")
    return b"".join(out)


class DovecotStateTests(MboxTestCase):
    """With no mailsuite index yet, the state Dovecot keeps in the mbox is taken over:
    UIDVALIDITY and UIDNEXT from X-IMAPbase, UIDs from X-UID, flags and keywords from Status,
    X-Status and X-Keywords (item 17)."""

    @defer.inlineCallbacks
    def test_file_written_by_dovecot(self):
        """The file Dovecot 2.3.19 left: the same UIDVALIDITY, UIDNEXT, UIDs, flags, and the same
        POP3 UIDLs, byte for byte; a later mailbox of the account gets a higher UIDVALIDITY
        even with the clock far back."""
        from mailsuite.pop3.mailbox import Pop3Mailbox

        with open(os.path.join(DATA, "dovecot-2.3.19-inbox.mbox"), "rb") as f:
            self.write(f.read(), "wb")
        box = yield self.make_store().open(self.account)
        self.assertEqual((box.uid_validity, box.uid_next), (DOVECOT_VALIDITY, 6))
        self.assertEqual({m.uid: set(m.flags) for m in box.messages}, DOVECOT_FLAGS)
        pop = Pop3Mailbox(box, self.account, box.messages)
        self.assertEqual([pop.uidl(i) for i in range(4)], DOVECOT_UIDLS)
        self.external_append(MSG)
        yield box.refresh()
        self.assertEqual([m.uid for m in box.messages], [1, 3, 4, 5, 6])
        box.close()
        yield self.store.settle()
        box = yield self.make_store().open(self.account)  # from our own index now
        self.assertEqual((box.uid_validity, box.uid_next), (DOVECOT_VALIDITY, 7))
        box.close()
        self.clock[0] = 1_000_000_000
        yield self.store.create(self.account, "New")
        new = yield self.store.open(self.account, "New")
        self.assertGreater(new.uid_validity, DOVECOT_VALIDITY)
        new.close()

    @defer.inlineCallbacks
    def test_uids_out_of_order_or_missing(self):
        """A UID kept only while they ascend within X-IMAPbase's last UID; from the first one
        that does not, each message gets a new UID above all (UIDs ascend in file order)."""
        self.write(dovecot_headers(b"100 0000000010 Work", b"5", b"3", None, b"7"), "wb")
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.uid_validity, 100)
        self.assertEqual([m.uid for m in box.messages], [5, 11, 12, 13])
        self.assertEqual(box.uid_next, 14)
        box.close()

    @defer.inlineCallbacks
    def test_no_imapbase_is_a_new_mailbox(self):
        """X-UID without X-IMAPbase (or a zero UIDVALIDITY) is no Dovecot state: new UIDs."""
        self.write(dovecot_headers(b"0 10", b"5", b"6"), "wb")
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.uid for m in box.messages], [1, 2])
        self.assertNotEqual(box.uid_validity, 0)
        box.close()

    @defer.inlineCallbacks
    def test_taken_over_once(self):
        """If the index made from Dovecot's headers is lost, the headers are not trusted again
        (the UIDs given since are not in them): a new UIDVALIDITY, above Dovecot's."""
        with open(os.path.join(DATA, "dovecot-2.3.19-inbox.mbox"), "rb") as f:
            self.write(f.read(), "wb")
        box = yield self.make_store().open(self.account)
        box.close()
        yield self.store.settle()
        os.unlink(self.index_path)
        box = yield self.make_store().open(self.account)
        self.assertGreater(box.uid_validity, DOVECOT_VALIDITY)
        self.assertEqual([m.uid for m in box.messages], [1, 2, 3, 4])
        box.close()
