"""The mbox store never follows a user's symlink or swapped directory, and touches only files the
user owns (issue 9: S1, S2, S3), and an account without a home directory still has its INBOX
(issue 9, item 9). Real directories and files owned by other uids: these tests need root."""

from __future__ import annotations

import os
import shutil

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store import safepath
from mailsuite.store.folders import normalize
from mailsuite.store.interfaces import (
    InvalidMailboxName,
    MailboxNotFound,
    StoreError,
    StoreRefused,
)
from mailsuite.store.mboxtree import NoHome
from mailsuite.store.safepath import Anchors, UnsafePath, open_dir
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase, asctime

BOSS, ALICE = 2500, 2501
ROOT_ONLY = None if os.geteuid() == 0 else "needs root (files owned by other uids)"


def write(path: str, data: bytes, uid: int, mode: int = 0o600) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class OtherUsersCase(MboxTestCase):
    """boss (uid 2500) owns his home; alice (2501) has a spool file and a ~/mail folder."""

    skip = ROOT_ONLY

    def setUp(self) -> None:
        super().setUp()
        self.spool, self.path = os.path.abspath(self.spool), os.path.abspath(self.path)
        home = os.path.abspath(self.account.home)  # symlinks below point at absolute paths
        os.chown(home, BOSS, BOSS)
        self.account = Account("boss", BOSS, BOSS, home)
        self.mail = os.path.join(home, "mail")
        self.alice_inbox = os.path.join(self.spool, "alice")
        self.alice_mbox = self.mbox(MSG1)
        write(self.alice_inbox, self.alice_mbox, ALICE)
        self.alice_mail = os.path.join(os.path.dirname(home), "alice", "mail")
        os.makedirs(self.alice_mail)
        for d in (self.alice_mail, os.path.dirname(self.alice_mail)):
            os.chown(d, ALICE, ALICE)
        write(os.path.join(self.alice_mail, "Private"), self.alice_mbox, ALICE)
        self.secret = os.path.abspath(self.mktemp() + "-etc")
        os.makedirs(self.secret)
        write(os.path.join(self.secret, "important"), b"root only\n", 0)

    def mbox(self, *messages: bytes) -> bytes:
        line = f"From x@example.test  {asctime(self.clock[0])}\n".encode()
        return b"".join(line + m + b"\n" for m in messages)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)
        os.chown(path, BOSS, BOSS)

    def untouched(self, spool: tuple[str, ...] = ("alice",)) -> None:
        """alice's files and root's file are as they were; nothing new appeared beside them."""
        self.assertEqual(read(self.alice_inbox), self.alice_mbox)
        self.assertEqual(os.stat(self.alice_inbox).st_uid, ALICE)
        self.assertEqual(sorted(os.listdir(self.spool)), list(spool))
        self.assertEqual(os.listdir(self.alice_mail), ["Private"])
        self.assertEqual(read(os.path.join(self.alice_mail, "Private")), self.alice_mbox)
        self.assertEqual(os.listdir(self.secret), ["important"])

    @defer.inlineCallbacks
    def refused(self, d: defer.Deferred, kind: type = StoreError) -> defer.Deferred:
        try:
            yield d
        except kind as e:
            return e
        self.fail(f"not refused: {d}")


class SymlinkedRootTests(OtherUsersCase):
    """S1: boss replaces ~/mail with a symlink to the spool, a root directory or ~alice/mail."""

    @defer.inlineCallbacks
    def test_symlink_to_spool(self):
        """LIST shows INBOX alone; DELETE, CREATE, SELECT, RENAME, APPEND of "alice" are refused
        and alice's spool file is neither removed, replaced, nor written."""
        os.symlink(self.spool, self.mail)
        store = self.make_store()
        names = [e.name for e in (yield store.list_mailboxes(self.account))]
        self.assertEqual(names, ["INBOX"])
        e = yield self.refused(store.delete(self.account, "alice"))
        self.assertIn("symbolic link", str(e))
        self.assertIsInstance(e, StoreRefused)
        yield self.refused(store.create(self.account, "carol"))
        yield self.refused(store.open(self.account, "alice"))
        yield self.refused(store.rename(self.account, "alice", "mine"))
        yield self.refused(store.subscribe(self.account, "alice"))
        self.untouched()

    @defer.inlineCallbacks
    def test_symlink_to_root_directory(self):
        """~/mail -> a root directory: DELETE does not remove root's 0600 file."""
        os.symlink(self.secret, self.mail)
        store = self.make_store()
        yield self.refused(store.delete(self.account, "important"))
        yield self.refused(store.open(self.account, "important"))
        self.untouched()

    @defer.inlineCallbacks
    def test_symlink_to_other_users_folders(self):
        """~/mail -> ~alice/mail: alice's folders cannot be opened, appended to or deleted."""
        os.symlink(self.alice_mail, self.mail)
        store = self.make_store()
        yield self.refused(store.open(self.account, "Private"))
        yield self.refused(store.delete(self.account, "Private"))
        self.untouched()

    @defer.inlineCallbacks
    def test_other_owners_below_a_real_root(self):
        """A directory or file of another uid inside boss's real ~/mail (left by root, say) is
        not listed, opened, deleted, or walked through."""
        self.mkdir(self.mail)
        shutil.copy(self.alice_inbox, os.path.join(self.mail, "theirs"))
        os.chown(os.path.join(self.mail, "theirs"), ALICE, ALICE)
        os.mkdir(os.path.join(self.mail, "dir"))
        write(os.path.join(self.mail, "dir", "inner"), self.alice_mbox, ALICE)
        store = self.make_store(specials={})
        names = [e.name for e in (yield store.list_mailboxes(self.account))]
        self.assertEqual(names, ["INBOX"])
        for name in ("theirs", "dir", "dir/inner"):
            yield self.refused(store.open(self.account, name), MailboxNotFound)
            yield self.refused(store.delete(self.account, name), MailboxNotFound)
        yield self.refused(store.create(self.account, "dir/new"))
        self.assertEqual(os.listdir(os.path.join(self.mail, "dir")), ["inner"])

    @defer.inlineCallbacks
    def test_symlinked_index_directory(self):
        """~/mail/.imap -> elsewhere: no index is written there (SELECT INBOX is refused)."""
        self.mkdir(self.mail)
        os.symlink(self.alice_mail, os.path.join(self.mail, ".imap"))
        write(self.path, self.mbox(MSG2), BOSS)
        store = self.make_store(specials={})
        e = yield self.refused(store.open(self.account))
        self.assertIn(".imap", str(e))
        self.untouched(spool=("alice", "boss"))

    @defer.inlineCallbacks
    def test_real_root_still_works(self):
        """The same operations on boss's own real ~/mail work, and make files of boss."""
        store = self.make_store(specials={})
        yield store.create(self.account, "Work/2024")
        box = yield store.open(self.account, "Work/2024")
        yield box.append(MSG1)
        box.close()
        for path in ("", "Work", "Work/2024", ".imap", ".imap/Work/2024/mailsuite.index"):
            self.assertEqual(os.lstat(os.path.join(self.mail, path)).st_uid, BOSS, path)
        yield store.rename(self.account, "Work", "Done")
        yield store.delete(self.account, "Done/2024")
        names = [e.name for e in (yield store.list_mailboxes(self.account))]
        self.assertEqual(names, ["INBOX", "Done"])
        self.untouched()


class SwappedDirectoryTests(OtherUsersCase):
    """S2: a directory of an open folder swapped for a symlink to the spool after SELECT."""

    @defer.inlineCallbacks
    def test_swap_after_open(self):
        """Refresh, reads, flag changes + expunge, and appends no longer reach a file: they are
        refused, and alice's spool file is unchanged."""
        self.mkdir(self.mail)
        self.mkdir(os.path.join(self.mail, "dir"))
        write(os.path.join(self.mail, "dir", "alice"), b"", BOSS)
        store = self.make_store(specials={})
        box = yield store.open(self.account, "dir/alice")
        self.assertEqual(box.messages, [])
        os.rename(os.path.join(self.mail, "dir"), os.path.join(self.mail, "dir.old"))
        os.symlink(self.spool, os.path.join(self.mail, "dir"))
        yield self.refused(box.refresh())
        self.assertEqual(box.messages, [])
        yield self.refused(box.append(MSG2))
        self.untouched()
        box.close()
        yield self.refused(store.open(self.account, "dir/alice"))

    @defer.inlineCallbacks
    def test_swap_after_messages_were_read(self):
        """With messages known (UIDs in the index), the swap makes reads and the expunge
        rewrite fail rather than read or rewrite alice's file."""
        self.mkdir(self.mail)
        self.mkdir(os.path.join(self.mail, "dir"))
        write(os.path.join(self.mail, "dir", "alice"), self.alice_mbox, BOSS)
        store = self.make_store(specials={})
        box = yield store.open(self.account, "dir/alice")
        uid = box.messages[0].uid
        box._keep_reader(None)  # no descriptor kept from before the swap
        os.rename(os.path.join(self.mail, "dir"), os.path.join(self.mail, "dir.old"))
        os.symlink(self.spool, os.path.join(self.mail, "dir"))
        yield self.refused(box._read_in_thread(uid))
        yield box.set_flags({uid: frozenset({"\\Deleted"})})  # the index: still boss's
        yield box.expunge([uid])
        yield box.settled()
        self.untouched()
        box.close()
        yield box.settled()
        self.flushLoggedErrors(UnsafePath)  # the compaction failed: it is logged


class SpoolFileTests(OtherUsersCase):
    """S3: delivery into a spool file that is not the recipient's own regular file, as
    Postfix's local(8) refuses it."""

    @defer.inlineCallbacks
    def check_refused(self, why: str) -> defer.Deferred:
        store = self.make_store()
        e = yield self.refused(store.deliver(self.account, MSG1, "a@example.test"), StoreRefused)
        self.assertIn(why, str(e))
        e = yield self.refused(
            store.deliver_many(self.account, [(MSG1, "a@example.test")]), StoreRefused
        )
        self.assertIn(why, str(e))
        yield self.refused(store.open(self.account), StoreRefused)

    @defer.inlineCallbacks
    def test_file_of_someone_else(self):
        """/var/mail/boss made by alice (a 1777 spool) before boss had mail: refused."""
        write(self.path, b"", ALICE)
        yield self.check_refused("owned by uid 2501, not by uid 2500")
        self.assertEqual(read(self.path), b"")

    @defer.inlineCallbacks
    def test_hard_link(self):
        """/var/mail/boss a hard link (to alice's file, say): refused."""
        os.link(self.alice_inbox, self.path)
        os.chown(self.path, BOSS, BOSS)  # the one inode: alice's file is boss's now too
        yield self.check_refused("2 hard links")
        os.chown(self.path, ALICE, ALICE)
        self.untouched_but_link()

    def untouched_but_link(self) -> None:
        self.assertEqual(read(self.alice_inbox), self.alice_mbox)

    @defer.inlineCallbacks
    def test_not_a_regular_file(self):
        """A FIFO or a directory in its place: refused, a StoreRefused as the others (one log
        line per attempt, no traceback), and the FIFO does not hang us."""
        os.mkfifo(self.path)
        os.chown(self.path, BOSS, BOSS)
        yield self.check_refused("not a regular file")
        os.unlink(self.path)
        self.mkdir(self.path)
        yield self.check_refused("not a regular file")

    @defer.inlineCallbacks
    def test_symlink(self):
        """/var/mail/boss -> /var/mail/alice: refused, alice's file untouched."""
        os.symlink(self.alice_inbox, self.path)
        yield self.check_refused("symbolic link")
        self.assertEqual(read(self.alice_inbox), self.alice_mbox)

    @defer.inlineCallbacks
    def test_swapped_after_a_delivery(self):
        """The store keeps one INBOX file object per account it delivers to; a spool file
        swapped for a symlink after a delivery is still refused at the next one (the path is
        walked again at every append, nothing resolved is kept)."""
        store = self.make_store()
        yield store.deliver_many(self.account, [(MSG1, "a@example.test")])
        os.unlink(self.path)
        os.symlink(self.alice_inbox, self.path)
        for deliver in (
            lambda: store.deliver_many(self.account, [(MSG2, "a@example.test")]),
            lambda: store.deliver(self.account, MSG2, "a@example.test"),
        ):
            e = yield self.refused(deliver(), StoreRefused)
            self.assertIn("symbolic link", str(e))
        self.assertEqual(read(self.alice_inbox), self.alice_mbox)

    @defer.inlineCallbacks
    def test_own_file_and_new_file(self):
        """The recipient's own file, or none yet (made for him, group mail, 0600): delivered."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        self.assertEqual(os.stat(self.path).st_uid, BOSS)
        yield store.deliver_many(self.account, [(MSG2, "a@example.test")])
        box = yield store.open(self.account)
        self.assertEqual(len(box.messages), 2)
        box.close()


class MailboxNameTests(unittest.TestCase):
    def test_paths_refused(self):
        """Names beginning with '~' or '/', or with a '..' part, are refused as Dovecot does."""
        for name, why in (
            ("~alice/mail/x", "Begins with '~'"),
            ("~", "Begins with '~'"),
            ("/etc/shadow", "Begins with '/'"),
            ("a/../../etc", "Contains '..' part"),
            ("..", "Contains '..' part"),
        ):
            with self.assertRaises(InvalidMailboxName) as cm:
                normalize(name)
            self.assertIn(why, str(cm.exception))
        self.assertEqual(normalize("a~b/c"), "a~b/c")


class NoHomeTests(MboxTestCase):
    """Item 9: an account made by plain ``useradd`` (no home directory) has a working INBOX."""

    def setUp(self) -> None:
        super().setUp()
        os.rmdir(self.account.home)

    @defer.inlineCallbacks
    def test_inbox_without_home(self):
        """Delivery, open, read, flags, expunge (what POP3 does), all with the index in memory;
        nothing is made where the home would be."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "a@example.test")
        box = yield store.open(self.account)
        self.assertEqual(len(box.messages), 2)
        first, second = (m.uid for m in box.messages)
        self.assertIn(b"Subject: one", (yield box.read(first)))
        yield box.set_flags({second: frozenset({"\\Seen"})})
        yield box.expunge([first])
        yield box.settled()
        box.close()
        validity = box.uid_validity
        self.clock[0] += 10
        again = yield self.make_store().open(self.account)  # not cached: the index in memory
        self.assertEqual([(m.uid, m.flags) for m in again.messages], [(second, {"\\Seen"})])
        self.assertEqual(again.uid_validity, validity)
        again.close()
        self.assertNotIn(b"Subject: one", self.read_file())
        self.assertFalse(os.path.lexists(self.account.home))

    @defer.inlineCallbacks
    def test_home_made_later(self):
        """When the administrator makes the home later, the index kept in memory goes to
        ~/mail/.imap with the UIDs and UIDVALIDITY the clients know."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        known = (box.uid_validity, [m.uid for m in box.messages])
        box.close()
        os.mkdir(self.account.home)
        self.clock[0] += 10
        store = self.make_store()  # (not the one holding INBOX's state)
        yield store.deliver(self.account, MSG2, "a@example.test")
        box = yield store.open(self.account)
        self.assertEqual((box.uid_validity, [m.uid for m in box.messages][:1]), known)
        box.close()
        self.assertTrue(os.path.isfile(self.index_path))
        box = yield self.make_store().open(self.account)  # from disk now
        self.assertEqual(box.uid_validity, known[0])
        box.close()

    @defer.inlineCallbacks
    def test_folders_without_home(self):
        """LIST and LSUB show INBOX alone; CREATE, DELETE, RENAME, SUBSCRIBE and SELECT of a
        folder are refused, naming the missing home."""
        store = self.make_store()
        names = [e.name for e in (yield store.list_mailboxes(self.account))]
        self.assertEqual(names, ["INBOX"])
        self.assertEqual((yield store.subscriptions(self.account)), set())
        for op in (
            lambda: store.create(self.account, "Work"),
            lambda: store.delete(self.account, "Work"),
            lambda: store.rename(self.account, "Work", "Other"),
            lambda: store.subscribe(self.account, "Work"),
            lambda: store.open(self.account, "Work"),
        ):
            failed = yield op().addCallbacks(lambda _: [], lambda f: [f])
            self.assertEqual(len(failed), 1)
            failure = failed[0]
            if failure.check(NoHome):
                self.assertIn(f"no home directory ({os.path.abspath(self.account.home)})",
                              str(failure.value))
            else:
                failure.trap(MailboxNotFound)
        self.assertFalse(os.path.lexists(self.account.home))


class WalkTests(unittest.TestCase):
    """safepath itself."""

    skip = ROOT_ONLY

    def setUp(self) -> None:
        self.top = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.top, "home", "a", "b"))
        for d in ("home", "home/a", "home/a/b"):
            os.chown(os.path.join(self.top, d), BOSS, BOSS)
        self.anchors = Anchors(BOSS, BOSS, os.path.join(self.top, "home"),
                               os.path.join(self.top, "spool", "boss"),
                               os.path.join(self.top, "home", "mail"))

    def test_places(self):
        """Paths become (anchor, parts); a path outside the anchors is refused."""
        place = self.anchors.place(os.path.join(self.top, "home", "a", "b"))
        self.assertEqual(place.parts, ("a", "b"))
        place = self.anchors.place(os.path.join(self.top, "spool", "boss"))
        self.assertEqual((place.anchor, place.parts), (os.path.join(self.top, "spool"), ("boss",)))
        with self.assertRaises(UnsafePath):
            self.anchors.place("/etc/shadow")
        with self.assertRaises(UnsafePath):
            place.child("..")

    def test_every_component_checked(self):
        """A symlink or a directory of another uid anywhere below the anchor is refused; the
        anchor may be root's; new directories are the user's."""
        place = self.anchors.place(os.path.join(self.top, "home", "a", "b", "c"))
        with open_dir(place, create=True) as d:
            self.assertEqual(os.fstat(d.fd).st_uid, BOSS)
        os.chown(os.path.join(self.top, "home", "a"), ALICE, ALICE)
        with self.assertRaisesRegex(UnsafePath, "owned by uid 2501"):
            open_dir(place)
        os.chown(os.path.join(self.top, "home", "a"), BOSS, BOSS)
        os.rename(os.path.join(self.top, "home", "a"), os.path.join(self.top, "home", "real"))
        os.symlink("real", os.path.join(self.top, "home", "a"))
        with self.assertRaisesRegex(UnsafePath, "symbolic link"):
            open_dir(place)
        os.chown(os.path.join(self.top, "home"), ALICE, ALICE)
        with self.assertRaisesRegex(UnsafePath, "not by uid 2500 or root"):
            open_dir(self.anchors.place(os.path.join(self.top, "home")))
        with self.assertRaises(safepath.MissingAnchor):
            open_dir(self.anchors.place(os.path.join(self.top, "spool", "boss")).parent)

    def test_journal_hard_link_refused(self):
        """The index journal is never appended to through a hard link."""
        d = os.path.join(self.top, "home", "a")
        victim = os.path.join(self.top, "victim")
        write(victim, b"keep\n", 0)
        os.link(victim, os.path.join(d, "mailsuite.index.log"))
        with self.assertRaises(StoreError):
            ix.append_log(os.path.join(d, "mailsuite.index"), ix.Index(1, generation=5), b"F 1\n",
                          None)
        self.assertEqual(read(victim), b"keep\n")
