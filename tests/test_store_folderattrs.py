"""Per-folder attributes (store.folderattrs): MAILBOXID and the special use given at CREATE, in
the mbox store (on disk, beside the folder's index) and the memory store alike; the EMAILID
source (IMailbox.email_id)."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.store.interfaces import InvalidMailboxName, MailboxNotFound
from mailsuite.store.memory import MemoryStore
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase


class FolderAttrsMixin:
    @defer.inlineCallbacks
    def test_mailbox_id_kept_across_rename_not_reused(self):
        """A folder's MAILBOXID is the same at each look and after RENAME (its children's too);
        a folder deleted and made again under the name gets a new one; INBOX keeps its own
        when it is renamed, the new folder gets another (RFC 8474 4)."""
        store = self.make_store()
        yield store.create(self.account, "Work/2026")
        first = yield store.folder_attrs(self.account, "Work")
        child = yield store.folder_attrs(self.account, "Work/2026")
        again = yield store.folder_attrs(self.account, "Work")
        self.assertEqual(first, again)
        self.assertRegex(first.mailbox_id, r"\A[A-Za-z0-9_-]{1,255}\Z")
        self.assertNotEqual(first.mailbox_id, child.mailbox_id)
        yield store.rename(self.account, "Work", "Job")
        moved = yield store.folder_attrs(self.account, "Job")
        moved_child = yield store.folder_attrs(self.account, "Job/2026")
        self.assertEqual((moved, moved_child), (first, child))
        yield store.delete(self.account, "Job/2026")
        yield store.create(self.account, "Job/2026")
        remade = yield store.folder_attrs(self.account, "Job/2026")
        self.assertNotEqual(remade.mailbox_id, child.mailbox_id)
        inbox = yield store.folder_attrs(self.account, "INBOX")
        yield store.rename(self.account, "INBOX", "Old")
        self.assertEqual((yield store.folder_attrs(self.account, "inbox")), inbox)
        old = yield store.folder_attrs(self.account, "Old")
        self.assertNotEqual(old.mailbox_id, inbox.mailbox_id)
        with self.assertRaises(MailboxNotFound):
            yield store.folder_attrs(self.account, "Nowhere")

    @defer.inlineCallbacks
    def test_special_use_given_at_create_is_listed(self):
        """A use given (any case) is kept, listed by list_mailboxes and moved by RENAME; one
        the store cannot give is InvalidMailboxName."""
        store = self.make_store()
        yield store.create(self.account, "Entwürfe")
        attrs = yield store.folder_attrs(self.account, "Entwürfe", "\\drafts")
        self.assertEqual(attrs.special_use, "\\Drafts")
        entries = yield store.list_mailboxes(self.account)
        self.assertIn("\\Drafts", [e.special_use for e in entries if e.name == "Entwürfe"])
        yield store.rename(self.account, "Entwürfe", "Brouillons")
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual([e.special_use for e in entries if e.name == "Brouillons"],
                         ["\\Drafts"])
        for bad in ("\\All", "\\Flagged", "\\Bogus"):
            with self.assertRaises(InvalidMailboxName):
                yield store.folder_attrs(self.account, "Brouillons", bad)

    @defer.inlineCallbacks
    def test_email_id_is_the_content(self):
        """email_id is the same for the same message in two mailboxes, differs between two
        messages and is None for an unknown UID."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "a@example.test")
        yield store.create(self.account, "Copy")
        inbox = yield store.open(self.account)
        copy = yield store.open(self.account, "Copy")
        yield copy.append(MSG1)
        ids = [inbox.email_id(m.uid) for m in inbox.messages]
        self.assertEqual(len(set(ids)), 2)
        self.assertEqual(copy.email_id(copy.messages[0].uid), ids[0])
        self.assertIsNone(inbox.email_id(99))
        inbox.close()
        copy.close()


class MboxFolderAttrsTests(MboxTestCase, FolderAttrsMixin):
    @defer.inlineCallbacks
    def test_kept_on_disk_across_a_restart(self):
        """The attributes are in ~/mail/.imap/<name>/.mailsuite-folder: a new store (a
        restarted server) sees the same MAILBOXID and special use."""
        store = self.make_store()
        yield store.create(self.account, "Sent Mail")
        attrs = yield store.folder_attrs(self.account, "Sent Mail", "\\Sent")
        path = os.path.join(self.account.home, "mail", ".imap", "Sent Mail", ".mailsuite-folder")
        self.assertTrue(os.path.isfile(path))
        again = yield self.make_store().folder_attrs(self.account, "Sent Mail")
        self.assertEqual(again, attrs)


class MemoryFolderAttrsTests(FolderAttrsMixin, unittest.TestCase):
    account = Account("boss", 1000, 1000, "/home/boss")

    def make_store(self):
        return MemoryStore()
