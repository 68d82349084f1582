"""The mbox store's folder tree on disk: layout, an existing Dovecot tree, crashes, symlinks,
open mailboxes that move, and other mbox readers (s-nail, Python's mailbox module)."""

from __future__ import annotations

import mailbox
import os
import shutil
import stat
import subprocess

from twisted.internet import defer

from mailsuite.store.interfaces import MailboxNotFound, StoreError
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase, asctime

SNAIL = shutil.which("s-nail")


class FolderLayoutTests(MboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.mail = os.path.join(self.account.home, "mail")

    def at(self, *parts: str) -> str:
        return os.path.join(self.mail, *parts)

    def read(self, *parts: str) -> bytes:
        with open(self.at(*parts), "rb") as f:
            return f.read()

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    def mbox_text(self, *messages: bytes) -> bytes:
        line = f"From x@example.test  {asctime(self.clock[0])}\n".encode()
        return b"".join(line + m + b"\n" for m in messages)

    @defer.inlineCallbacks
    def append(self, store, name, data, flags=frozenset()):
        box = yield store.open(self.account, name)
        uid = yield box.append(data, frozenset(flags))
        box.close()
        return uid

    @defer.inlineCallbacks
    def test_file_then_directory(self):
        """A folder is a plain mbox file (0600) until it gets a child; then it is a directory
        (0700) holding its own mail in mBoX-MeSsAgEs; indexes under ~/mail/.imap/<name>/.
        UIDs, UIDVALIDITY and flags survive the change."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work")
        self.assertEqual(self.mode(self.at("Work")), 0o600)
        uid = yield self.append(store, "Work", MSG1, {"\\Seen"})
        box = yield store.open(self.account, "Work")
        validity = box.uid_validity
        box.close()
        self.assertTrue(os.path.isfile(self.at(".imap", "Work", "mailsuite.index")))
        yield store.create(self.account, "Work/2024")
        self.assertEqual(self.mode(self.at("Work")), 0o700)
        self.assertEqual(sorted(os.listdir(self.at("Work"))), ["2024", "mBoX-MeSsAgEs"])
        self.assertIn(b"Subject: one", self.read("Work", "mBoX-MeSsAgEs"))
        self.assertEqual([n for n in os.listdir(self.mail) if n.startswith(".Work")], [])
        yield self.append(store, "Work/2024", MSG2)
        self.assertTrue(os.path.isfile(self.at(".imap", "Work", "2024", "mailsuite.index")))
        box = yield self.make_store().open(self.account, "Work")
        self.assertEqual((box.uid_validity, [m.uid for m in box.messages]), (validity, [uid]))
        self.assertEqual(box.messages[0].flags, {"\\Seen"})
        box.close()

    @defer.inlineCallbacks
    def test_inbox_children(self):
        """INBOX stays the spool file; its children live in ~/mail/INBOX/."""
        store = self.make_store(specials={})
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.create(self.account, "inbox/Sub")
        self.assertTrue(os.path.isfile(self.at("INBOX", "Sub")))
        self.assertTrue(os.path.isfile(self.path))
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual(
            [(e.name, e.has_children) for e in entries], [("INBOX", True), ("INBOX/Sub", False)]
        )

    @defer.inlineCallbacks
    def test_existing_dovecot_tree(self):
        """A Dovecot mbox tree (folder files, a directory of folders, .subscriptions,
        .imap/ with Dovecot's index files, dovecot-uidvalidity files) is served as it is:
        flags from Status headers, the directory selectable, subscriptions kept."""
        os.makedirs(self.at("Dir"))
        os.makedirs(self.at(".imap", "Work"))
        with open(self.at(".imap", "Work", "dovecot.index.log"), "wb") as f:
            f.write(b"\0dovecot binary\0")
        for name in ("dovecot-uidvalidity", "dovecot-uidvalidity.5f3a2b1c"):
            open(self.at(name), "wb").close()
        with open(self.at("Work"), "wb") as f:
            f.write(
                self.mbox_text(
                    b"Subject: read\nStatus: RO\nX-Status: F\n\nbody\n",
                    b"Subject: new\nStatus: O\n\nbody\n",
                )
            )
        with open(self.at("Dir", "Sub"), "wb") as f:
            f.write(self.mbox_text(b"Subject: sub\n\nbody\n"))
        with open(self.at("Entw&APw-rfe"), "wb") as f:
            f.write(b"")
        with open(self.at(".subscriptions"), "wb") as f:
            f.write(b"Work\nDir/Sub\nEntw&APw-rfe\n")
        store = self.make_store()
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual(
            [(e.name, e.has_children) for e in entries],
            [
                ("INBOX", False),
                ("Dir", True),
                ("Dir/Sub", False),
                ("Drafts", False),
                ("Entwürfe", False),
                ("Junk", False),
                ("Sent", False),
                ("Trash", False),
                ("Work", False),
            ],
        )
        subs = yield store.subscriptions(self.account)
        self.assertEqual(subs, {"Work", "Dir/Sub", "Entwürfe", "Sent", "Drafts", "Trash", "Junk"})
        self.assertTrue(self.read(".subscriptions").startswith(b"Work\nDir/Sub\nEntw&APw-rfe\n"))
        box = yield store.open(self.account, "Work")
        self.assertEqual([m.flags for m in box.messages], [{"\\Seen", "\\Flagged"}, set()])
        box.close()
        box = yield store.open(self.account, "Dir")
        self.assertEqual(box.messages, [])
        uid = yield box.append(MSG1)
        self.assertEqual([m.uid for m in box.messages], [uid])
        box.close()
        self.assertTrue(os.path.isfile(self.at("Dir", "mBoX-MeSsAgEs")))
        box = yield store.open(self.account, "Dir/Sub")
        self.assertEqual(len(box.messages), 1)
        box.close()

    @defer.inlineCallbacks
    def test_dovecot_v2_subscriptions(self):
        """Dovecot's version 2 subscriptions file (levels separated by tabs) is read and
        written back in the same version."""
        os.makedirs(self.mail)
        with open(self.at(".subscriptions"), "wb") as f:
            f.write(b"V\t2\n\nWork\tSub\nINBOX\n")
        store = self.make_store(specials={})
        subs = yield store.subscriptions(self.account)
        self.assertEqual(subs, {"Work/Sub", "INBOX"})
        yield store.subscribe(self.account, "A/B")
        self.assertEqual(self.read(".subscriptions"), b"V\t2\n\nWork\tSub\nINBOX\nA\tB\n")

    @defer.inlineCallbacks
    def test_interrupted_conversion_recovered(self):
        """A crash between the two renames of a file-to-directory change leaves
        .Work.mailsuite-dir/mBoX-MeSsAgEs: the next look puts it back as Work/."""
        os.makedirs(self.at(".Work.mailsuite-dir"))
        with open(self.at(".Work.mailsuite-dir", "mBoX-MeSsAgEs"), "wb") as f:
            f.write(self.mbox_text(MSG1))
        store = self.make_store(specials={})
        entries = yield store.list_mailboxes(self.account)
        self.assertEqual([e.name for e in entries], ["INBOX", "Work"])
        box = yield store.open(self.account, "Work")
        self.assertEqual(len(box.messages), 1)
        box.close()
        self.assertFalse(os.path.exists(self.at(".Work.mailsuite-dir")))

    @defer.inlineCallbacks
    def test_open_mailbox_follows_conversion_and_rename(self):
        """A session with a folder open keeps working while the folder gets a child and is then
        renamed: its appends land in the folder's new file, its name follows."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work")
        box = yield store.open(self.account, "Work")
        first = yield box.append(MSG1)
        yield store.create(self.account, "Work/Sub")
        second = yield box.append(MSG2)
        yield store.rename(self.account, "Work", "Job")
        self.assertEqual(box.name, "Job")
        third = yield box.append(MSG1)
        yield box.refresh()
        self.assertEqual([m.uid for m in box.messages], [first, second, third])
        box.close()
        self.assertFalse(os.path.lexists(self.at("Work")))
        self.assertEqual(sorted(os.listdir(self.at("Job"))), ["Sub", "mBoX-MeSsAgEs"])
        self.assertTrue(os.path.isfile(self.at(".imap", "Job", "mailsuite.index")))
        self.assertFalse(os.path.lexists(self.at(".imap", "Work")))
        again = yield self.make_store().open(self.account, "Job")
        self.assertEqual([m.uid for m in again.messages], [first, second, third])
        again.close()

    @defer.inlineCallbacks
    def test_delete_removes_file_and_index(self):
        """DELETE removes the mbox file (or the emptied directory) and the index directory."""
        store = self.make_store(specials={})
        yield store.create(self.account, "a/b")
        yield self.append(store, "a", MSG1)
        yield self.append(store, "a/b", MSG1)
        yield store.delete(self.account, "a/b")
        self.assertFalse(os.path.lexists(self.at("a", "b")))
        self.assertFalse(os.path.lexists(self.at(".imap", "a", "b")))
        yield store.delete(self.account, "a")
        self.assertEqual(sorted(os.listdir(self.mail)), [".imap"])
        # only the account's last UIDVALIDITY stays: a new "a" must not get the old one's
        self.assertEqual(os.listdir(self.at(".imap")), [".uidvalidity"])

    @defer.inlineCallbacks
    def test_symlinks_not_followed(self):
        """A symlinked folder file or directory under ~/mail is not listed, opened, renamed,
        deleted or created through; nothing is written where it points."""
        outside = os.path.abspath(os.path.join(self.spool, "..", "outside"))
        os.makedirs(outside)
        with open(os.path.join(outside, "file"), "wb") as f:
            f.write(self.mbox_text(MSG1))
        os.makedirs(self.mail)
        os.symlink(os.path.join(outside, "file"), self.at("LinkFile"))
        os.symlink(outside, self.at("LinkDir"))
        store = self.make_store(specials={})
        names = [e.name for e in (yield store.list_mailboxes(self.account))]
        self.assertEqual(names, ["INBOX"])
        for name in ("LinkFile", "LinkDir", "LinkDir/file"):
            with self.assertRaises(MailboxNotFound):
                yield store.open(self.account, name)
            with self.assertRaises(MailboxNotFound):
                yield store.delete(self.account, name)
            with self.assertRaises(MailboxNotFound):
                yield store.rename(self.account, name, "Elsewhere")
        with self.assertRaises(StoreError):
            yield store.create(self.account, "LinkDir/new")
        self.assertEqual(sorted(os.listdir(outside)), ["file"])

    @defer.inlineCallbacks
    def test_other_readers_read_every_folder(self):
        """Every folder's mbox file (a plain file, a parent's mBoX-MeSsAgEs) is a valid mbox
        for Python's mailbox module and s-nail, with the flags a rewrite wrote."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work/Sub")
        for name in ("Work", "Work/Sub"):
            box = yield store.open(self.account, name)
            yield box.append(MSG1)
            yield box.append(MSG2 + b"From the middle\n")
            extra = yield box.append(MSG1)
            yield box.set_flags({box.messages[0].uid: frozenset({"\\Seen"})})
            yield box.expunge([extra])
            box.close()
        for path in (self.at("Work", "mBoX-MeSsAgEs"), self.at("Work", "Sub")):
            msgs = list(mailbox.mbox(path, create=False))
            self.assertEqual([m["Subject"] for m in msgs], ["one", "two"])
            self.assertEqual([m["Status"] for m in msgs], ["RO", None])
            self.assertIn("From the middle", msgs[1].get_payload())
            if SNAIL:
                out = subprocess.run(
                    [SNAIL, "-:/", "-#", "-R", "-f", path],
                    input="headers\n",
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                    env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"},
                ).stdout
                self.assertIn("one", out)
                self.assertIn("two", out)
