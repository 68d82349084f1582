"""store.attrscache: a folder's attributes looked up again without a thread (every SELECT asks
for its MAILBOXID), and read again as soon as anything changed them on disk."""

from __future__ import annotations

import os

from twisted.internet import defer

from mailsuite import threads
from mailsuite.store.interfaces import MailboxNotFound
from tests.test_store_mbox import MboxTestCase


class AttrsCacheTests(MboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.calls: list[str] = []

        def counting(f, *args, **kwargs):
            self.calls.append(getattr(f, "__name__", repr(f)))
            return threads.inline(f, *args, **kwargs)

        self.blocking = counting

    def attrs_path(self, name: str) -> str:
        return os.path.join(self.account.home, "mail", ".imap", name, ".mailsuite-folder")

    @defer.inlineCallbacks
    def looked(self, store, name: str):
        """(attributes, whether the look ran blocking work)."""
        before = len(self.calls)
        attrs = yield store.folder_attrs(self.account, name)
        return attrs, len(self.calls) > before

    @defer.inlineCallbacks
    def test_second_look_needs_no_thread(self):
        store = self.make_store()
        yield store.create(self.account, "Work")
        for name in ("INBOX", "Work"):
            first, threaded = yield self.looked(store, name)
            self.assertTrue(threaded)  # made and written: not kept yet
            second, threaded = yield self.looked(store, name)
            self.assertTrue(threaded)  # read, nothing wrote meanwhile: kept
            third, threaded = yield self.looked(store, name)
            self.assertFalse(threaded)
            self.assertEqual(first, second)
            self.assertEqual(first, third)
        inbox, _ = yield self.looked(store, "INBOX")
        work, _ = yield self.looked(store, "Work")
        self.assertNotEqual(inbox.mailbox_id, work.mailbox_id)

    @defer.inlineCallbacks
    def warm(self, store, name: str):
        yield self.looked(store, name)
        attrs, _ = yield self.looked(store, name)
        _, threaded = yield self.looked(store, name)
        self.assertFalse(threaded)
        return attrs

    @defer.inlineCallbacks
    def test_another_programs_write_is_read(self):
        """Another program (another server process) rewrites the file: the next look reads it;
        it removes the folder: MailboxNotFound, not the id it had."""
        store = self.make_store()
        yield store.create(self.account, "Work")
        yield self.warm(store, "INBOX")
        yield self.warm(store, "Work")
        tmp = self.attrs_path("INBOX") + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"mailboxid Fother\n")
        os.rename(tmp, self.attrs_path("INBOX"))
        attrs, threaded = yield self.looked(store, "INBOX")
        self.assertTrue(threaded)
        self.assertEqual(attrs.mailbox_id, "Fother")
        os.remove(os.path.join(self.account.home, "mail", "Work"))
        with self.assertRaises(MailboxNotFound):
            yield store.folder_attrs(self.account, "Work")

    @defer.inlineCallbacks
    def test_rename_delete_create_and_use_seen(self):
        """RENAME: the old name is no folder, the new one has the id; DELETE and CREATE of the
        name: a new id; a special use given later is in the next plain look."""
        store = self.make_store()
        yield store.create(self.account, "Work")
        work = yield self.warm(store, "Work")
        yield store.rename(self.account, "Work", "Job")
        with self.assertRaises(MailboxNotFound):
            yield store.folder_attrs(self.account, "Work")
        job, _ = yield self.looked(store, "Job")
        self.assertEqual(job, work)
        yield store.create(self.account, "Work")
        again, _ = yield self.looked(store, "Work")
        self.assertNotEqual(again.mailbox_id, work.mailbox_id)
        job = yield self.warm(store, "Job")
        yield store.delete(self.account, "Job")
        yield store.create(self.account, "Job")
        remade, _ = yield self.looked(store, "Job")
        self.assertNotEqual(remade.mailbox_id, job.mailbox_id)
        yield self.warm(store, "Job")
        yield store.folder_attrs(self.account, "Job", "\\Sent")
        used, _ = yield self.looked(store, "Job")
        self.assertEqual((used.mailbox_id, used.special_use), (remade.mailbox_id, "\\Sent"))
