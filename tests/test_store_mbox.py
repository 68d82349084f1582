"""The mbox store: the conformance tests, plus what only real files can show (other programs
writing the same mailbox, locks, crashes, ownership)."""

from __future__ import annotations

import errno
import os
import stat
import time

from twisted.internet import defer, reactor
from twisted.internet import threads as twisted_threads
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store import mboxfile, mboxformat, mboxstate, zones
from mailsuite.store.interfaces import StoreError, UnknownUID
from mailsuite.store.locking import LockTimeout, try_fcntl_lock
from mailsuite.store.mbox import MboxStore
from mailsuite.store.mboxformat import to_stored
from mailsuite.wire import to_wire
from tests.store_conformance import MSG1, MSG2, FolderConformanceMixin, StoreConformanceMixin


class FakeMailboxConfig:
    """What cfg.mailbox offers: INBOX in a spool directory, folders under ~/mail."""

    def __init__(self, spool: str) -> None:
        self.spool = spool

    def inbox_path(self, account: Account) -> str:
        return os.path.join(self.spool, account.name)

    def folder_root(self, account: Account) -> str:
        return os.path.join(account.home, "mail")


def asctime(when: float) -> str:
    return time.asctime(time.localtime(when))


class MboxTestCase(unittest.TestCase):
    """Temp spool and home; blocking work runs inline (no threads, no reactor)."""

    def setUp(self) -> None:
        self.use_root(self.mktemp())
        self.clock = [1_800_000_000.0]
        self.blocking = threads.inline  # file work at once; a test may set another

    def use_root(self, root: str) -> None:
        """A new spool and home under ``root`` (made) for boss."""
        self.spool = os.path.join(root, "spool")
        home = os.path.join(root, "home", "boss")
        os.makedirs(self.spool)
        os.makedirs(home)
        self.account = Account("boss", os.getuid(), os.getgid(), home)
        self.path = os.path.join(self.spool, "boss")
        self.index_path = os.path.join(home, "mail", ".imap", "INBOX", "mailsuite.index")

    def now(self):
        from datetime import UTC, datetime

        return datetime.fromtimestamp(self.clock[0], UTC)

    def make_store(self, **kw) -> MboxStore:
        kw.setdefault("lock_timeout", 0.2)
        self.store = MboxStore(FakeMailboxConfig(self.spool), self.blocking, now=self.now, **kw)
        return self.store

    @defer.inlineCallbacks
    def open_with(self, *messages):
        """A new store (``self.store``) with ``messages`` delivered; its INBOX, open."""
        store = self.make_store()
        for m in messages:
            yield store.deliver(self.account, m, "a@example.test")
        box = yield store.open(self.account)
        return box

    def write(self, data: bytes, mode: str = "ab") -> None:
        with open(self.path, mode) as f:
            f.write(data)

    def external_append(self, data: bytes, sender: str = "x@example.test") -> None:
        """Append as Postfix local(8) does."""
        line = f"From {sender}  {asctime(self.clock[0])}\n".encode()
        self.write(line + to_stored(data) + b"\n")

    def read_file(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


class MboxConformanceTests(MboxTestCase, StoreConformanceMixin, FolderConformanceMixin):
    """The mbox store passes the store conformance tests."""


POSTFIX = (
    b"From alice@example.test  Tue Nov 28 06:01:02 2026\n"
    b"Return-Path: <alice@example.test>\nSubject: one\n\nbody one\n>From the start\n\n"
    b"From MAILER-DAEMON  Tue Nov 28 06:02:02 2026\n"
    b"Subject: bounce\n\nbody two\n\n"
)
MUTT = (
    b"From bob@example.test Wed Nov 29 07:00:00 2026\n"
    b"Subject: read and flagged\nStatus: RO\nX-Status: AF\nContent-Length: 5\nLines: 1\n\n"
    b"abcd\n\n"
    b"From carol@example.test Wed Nov 29 08:00:00 2026\n"
    b"Subject: unseen\nStatus: O\nX-Keywords: Work $Label1\n\nshort\n"  # no final blank line
)


class MboxFileFormatTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_postfix_written_file(self):
        """A file as Postfix local(8) writes it: two messages, >From kept as stored, sizes CRLF."""
        self.write(POSTFIX)
        box = yield self.make_store().open(self.account)
        self.assertEqual(len(box.messages), 2)
        first = yield box.read(box.messages[0].uid)
        self.assertEqual(
            first, b"Return-Path: <alice@example.test>\nSubject: one\n\nbody one\n>From the start\n"
        )
        self.assertEqual(box.messages[0].size, len(first) + first.count(b"\n"))
        second = yield box.read(box.messages[1].uid)
        self.assertEqual(second, b"Subject: bounce\n\nbody two\n")
        self.assertEqual(box.messages[0].flags, frozenset())
        box.close()

    @defer.inlineCallbacks
    def test_mutt_written_file(self):
        """Status/X-Status/X-Keywords give the flags; those headers and Content-Length are hidden
        from clients (as Dovecot does); a last message without its blank line is read whole."""
        self.write(MUTT)
        box = yield self.make_store().open(self.account)
        self.assertEqual(
            [m.flags for m in box.messages],
            [{"\\Seen", "\\Answered", "\\Flagged"}, {"Work", "$Label1"}],
        )
        first = yield box.read(box.messages[0].uid)
        self.assertEqual(first, b"Subject: read and flagged\nLines: 1\n\nabcd\n")
        self.assertEqual(box.messages[0].size, len(first) + first.count(b"\n"))
        last = yield box.read(box.messages[1].uid)
        self.assertEqual(last, b"Subject: unseen\n\nshort\n")
        box.close()

    @defer.inlineCallbacks
    def test_from_line_without_date_is_body(self):
        """After a blank line, a 'From ' line without a date is body text, not a new message."""
        self.write(b"From a@b Tue Nov 28 06:01:02 2026\nSubject: x\n\nhi\n\nFrom me to you\nbye\n")
        box = yield self.make_store().open(self.account)
        self.assertEqual(len(box.messages), 1)
        data = yield box.read(box.messages[0].uid)
        self.assertTrue(data.endswith(b"\nFrom me to you\nbye\n"))
        box.close()

    @defer.inlineCallbacks
    def test_internal_date_from_the_from_line(self):
        """INTERNALDATE of a message written by another program is its From line date."""
        self.external_append(MSG1)
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.messages[0].internal_date, self.now())
        box.close()

    @defer.inlineCallbacks
    def test_delivery_format(self):
        """deliver writes 'From sender  asctime', the quoted message, then a blank line."""
        store = self.make_store()
        yield store.deliver(self.account, MSG2, "b@example.test")
        yield store.deliver(self.account, MSG1, "")
        expected = (
            f"From b@example.test  {asctime(self.clock[0])}\n".encode()
            + MSG2.replace(b"\nFrom here", b"\n>From here")
            + b"\n"
            + f"From MAILER-DAEMON  {asctime(self.clock[0])}\n".encode()
            + MSG1
            + b"\n"
        )
        self.assertEqual(self.read_file(), expected)

    @defer.inlineCallbacks
    def test_delivery_fixes_missing_final_newline(self):
        """A previous writer that left no final newline/blank line does not swallow our message."""
        self.write(b"From a@b Tue Nov 28 06:01:02 2026\nSubject: x\n\ncut")
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        self.assertEqual(len(box.messages), 2)
        data = yield box.read(box.messages[1].uid)
        self.assertEqual(data, MSG1)
        box.close()

    @defer.inlineCallbacks
    def test_parse_in_windows(self):
        """Parsing a window at a time (messages larger than the window, cut at any byte) finds
        the same messages as parsing the file at once."""
        for i in range(5):
            self.external_append(MSG1 + b"x" * (i * 97) + b"\n")
        whole = yield self.make_store().open(self.account)
        expected = [(m.size, m.internal_date) for m in whole.messages]
        whole.close()
        os.unlink(self.index_path)
        self.patch(mboxformat, "WINDOW", 61)
        box = yield self.make_store().open(self.account)
        self.assertEqual([(m.size, m.internal_date) for m in box.messages], expected)
        box.close()


class MboxOtherProgramsTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_uids_survive_restart_and_external_append(self):
        """A new store (restart) sees the same UIDVALIDITY and UIDs; mail appended meanwhile by
        another program gets new, higher UIDs."""
        box = yield self.open_with(MSG1, MSG2)
        before = (box.uid_validity, [m.uid for m in box.messages])
        yield box.set_flags({box.messages[0].uid: frozenset({"\\Seen"})})
        box.close()
        self.external_append(MSG1 + b"third\n")
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.uid_validity, before[0])
        self.assertEqual([m.uid for m in box.messages][:2], before[1])
        self.assertGreater(box.messages[2].uid, before[1][1])
        self.assertEqual(box.messages[0].flags, {"\\Seen"})
        box.close()

    @defer.inlineCallbacks
    def test_external_rewrite_of_status_keeps_uids(self):
        """mutt rewrites the file adding Status headers (new inode, offsets shift): UIDs stay and
        the flags mutt set win."""
        box = yield self.open_with(MSG1, MSG2)
        uids = [m.uid for m in box.messages]
        data = self.read_file().replace(
            b"Subject: one\n", b"Subject: one\nStatus: RO\nX-Status: F\n"
        )
        os.unlink(self.path)
        self.write(data)
        changes = yield box.refresh()
        self.assertEqual([m.uid for m in box.messages], uids)
        self.assertEqual(changes.flags, {uids[0]: {"\\Seen", "\\Flagged"}})
        self.assertEqual((changes.added, changes.expunged), ([], []))
        box.close()

    @defer.inlineCallbacks
    def test_external_deletion(self):
        """A message deleted by another program is reported expunged; the others keep UIDs."""
        box = yield self.open_with(MSG1, MSG2, MSG1 + b"3\n")
        uids = [m.uid for m in box.messages]
        data = self.read_file()
        second = data.index(b"From a@example.test", 10)
        third = data.index(b"From a@example.test", second + 10)
        self.write(data[:second] + data[third:], "wb")
        changes = yield box.refresh()
        self.assertEqual(changes.expunged, [uids[1]])
        self.assertEqual([m.uid for m in box.messages], [uids[0], uids[2]])
        data = yield box.read(uids[2])
        self.assertEqual(data, MSG1 + b"3\n")
        box.close()

    @defer.inlineCallbacks
    def test_read_after_external_change(self):
        """read() finds a message again when another program moved it in the file."""
        box = yield self.open_with(MSG1, MSG2)
        uid = box.messages[1].uid
        self.write(self.read_file().replace(b"Subject: one\n", b"Subject: one\nStatus: RO\n"), "wb")
        data = yield box.read(uid)
        self.assertEqual(data, MSG2.replace(b"\nFrom here", b"\n>From here"))
        headers = yield box.read_headers([uid])
        self.assertEqual(list(headers), [uid])
        box.close()

    @defer.inlineCallbacks
    def test_index_lost_gives_new_uidvalidity(self):
        """Without its index the mailbox gets a new UIDVALIDITY (clients must resync)."""
        box = yield self.open_with(MSG1)
        validity = box.uid_validity
        box.close()
        os.unlink(self.index_path)
        self.clock[0] += 10
        box = yield self.make_store().open(self.account)
        self.assertNotEqual(box.uid_validity, validity)
        self.assertEqual(len(box.messages), 1)
        box.close()

    @defer.inlineCallbacks
    def test_corrupt_index_is_rebuilt(self):
        """A damaged index (cut short) is rebuilt from the file, with a new UIDVALIDITY."""
        box = yield self.open_with(MSG1)
        validity = box.uid_validity
        box.close()
        with open(self.index_path, "r+b") as f:
            f.truncate(30)
        self.clock[0] += 10
        box = yield self.make_store().open(self.account)
        self.assertNotEqual(box.uid_validity, validity)
        self.assertEqual(len(box.messages), 1)
        box.close()

    @defer.inlineCallbacks
    def test_index_format_one_line_per_message(self):
        """The index is compact text: magic, a header line, then one line per message; a flag
        change is one line appended to the journal beside it, not a new index."""
        box = yield self.open_with(MSG1, MSG2)
        with open(self.index_path, "rb") as f:
            before = f.read()
        uid = box.messages[0].uid
        yield box.set_flags({uid: frozenset({"\\Seen", "Work"})})
        with open(self.index_path, "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, before.splitlines())
        self.assertEqual(lines[0], b"mailsuite-mbox-index 4")
        self.assertEqual(len(lines), 4)
        with open(self.index_path + ".log", "rb") as f:
            log = f.read().splitlines()
        generation = lines[1].split()[-1]
        self.assertEqual(log, [b"mailsuite-index-log 1 " + generation, b"F %d Work \\Seen" % uid,
                               b"M 3 %d" % uid])
        mode = stat.S_IMODE(os.stat(os.path.dirname(self.index_path)).st_mode)
        self.assertEqual(mode, 0o700)
        box.close()


CRLF_FILE = (
    b"From a@example.test  Tue Nov 28 06:01:02 2026\n"
    b"Subject: crlf\r\nStatus: RO\r\nX-Status: F\r\n\r\nbody\0one\r\nbare lf\nlast\r\n\n"
    b"From a@example.test  Tue Nov 28 06:02:02 2026\n"
    b"Subject: mixed\nStatus: O\nContent-Length: 3\n\n\0\r\r\nno blank line\r\n\n"
    b"From a@example.test  Tue Nov 28 06:03:02 2026\n"
    b"Subject: cut short\r\nX-Keywords: Work\r\n\r\nline\nends in a lone CR\r"
)


class MboxWireSizeTests(MboxTestCase):
    @defer.inlineCallbacks
    def check(self, box, count):
        self.assertEqual(len(box.messages), count)
        for info in box.messages:
            data = yield box.read(info.uid)
            self.assertNotIn(b"Status:", data.split(b"\r\n\r\n")[0])
            self.assertEqual(info.size, len(to_wire(data)), data)

    @defer.inlineCallbacks
    def test_crlf_file_sizes(self):
        """A file another program wrote with CRLF line ends, NULs, a lone CR and a last message
        without final newline: every size is len(to_wire(read(uid))) (state headers hidden),
        after the parse, a restart, and an expunge that rewrites the file a few bytes at a time
        (so CRLFs straddle the copy chunks)."""
        self.write(CRLF_FILE)
        box = yield self.make_store().open(self.account)
        yield self.check(box, 3)
        box.close()
        box = yield self.make_store().open(self.account)
        yield self.check(box, 3)
        self.patch(mboxfile, "COPY", 3)
        yield box.set_flags({box.messages[2].uid: frozenset({"\\Seen"})})
        yield box.expunge([box.messages[0].uid])
        yield box.settled()  # the file is compacted after the answer
        yield self.check(box, 2)
        box.close()
        box = yield self.make_store().open(self.account)
        yield self.check(box, 2)
        box.close()


class MboxRewriteTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_expunge_keeps_mail_appended_meanwhile(self):
        """Mail another program appended after our last look survives an expunge and gets a UID."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "b@example.test")
        box = yield store.open(self.account)
        seen = []
        box.add_listener(seen.append)
        first, second = [m.uid for m in box.messages]
        self.external_append(MSG1 + b"late\n")
        removed = yield box.expunge([first])
        yield box.settled()  # the file is compacted after the answer
        self.assertEqual(removed, [first])
        self.assertEqual(len(box.messages), 2)
        self.assertEqual(box.messages[0].uid, second)
        late = box.messages[1].uid
        self.assertGreater(late, second)
        data = yield box.read(late)
        self.assertEqual(data, MSG1 + b"late\n")
        self.assertEqual([m.uid for c in seen for m in c.added], [late])
        self.assertEqual([u for c in seen for u in c.expunged], [first])
        self.assertNotIn(b"Subject: one\n\nbody one\n\n", self.read_file())
        box.close()

    @defer.inlineCallbacks
    def test_rewrite_writes_status_headers(self):
        """A rewrite records flags in Status/X-Status/X-Keywords for mutt; clients still get the
        bytes and size they had before."""
        store = self.make_store()
        for m in (MSG1, MSG2, MSG1):
            yield store.deliver(self.account, m, "a@example.test")
        box = yield store.open(self.account)
        uids = [m.uid for m in box.messages]
        size = box.messages[0].size
        yield box.set_flags({uids[0]: frozenset({"\\Seen", "\\Flagged", "Work"})})
        yield box.expunge([uids[1]])
        yield box.settled()  # the file is compacted after the answer
        data = self.read_file()
        self.assertIn(b"Subject: one\nStatus: RO\nX-Status: F\nX-Keywords: Work\n\n", data)
        self.assertTrue(data.endswith(b"Subject: one\n\nbody one\n\n"))  # nothing to say: as it was
        self.assertEqual((yield box.read(uids[0])), MSG1)
        self.assertEqual(box.messages[0].size, size)
        box.close()
        box = yield self.make_store().open(self.account)  # a restart reparses nothing new
        self.assertEqual([m.uid for m in box.messages], [uids[0], uids[2]])
        self.assertEqual(box.messages[0].flags, {"\\Seen", "\\Flagged", "Work"})
        box.close()

    @defer.inlineCallbacks
    def test_rewrite_keeps_mode_and_owner(self):
        """The rewritten file keeps the original's mode (and group, when we can chown; its
        owner must be the account's)."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "a@example.test")
        os.chmod(self.path, 0o660)
        owner = (self.account.uid, 8765 if os.geteuid() == 0 else os.getgid())
        if os.geteuid() == 0:
            os.chown(self.path, *owner)
        box = yield store.open(self.account)
        yield box.expunge([box.messages[0].uid])
        yield box.settled()  # the file is compacted after the answer
        st = os.stat(self.path)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o660, *owner))
        box.close()

    @defer.inlineCallbacks
    def test_crash_before_rename_leaves_file_untouched(self):
        """An error while rewriting (before the rename) leaves the original file as it was and
        no temp file behind; the expunge stands (the message stays hidden, it was told), the
        error is logged, and the last close tries again."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.deliver(self.account, MSG2, "a@example.test")
        box = yield store.open(self.account)
        before = self.read_file()
        uids = [m.uid for m in box.messages]

        def crash(*args, **kwargs):
            raise OSError(5, "simulated crash")

        real_rename = os.rename
        self.patch(mboxfile.os, "rename", crash)
        removed = yield box.expunge([uids[0]])
        yield box.settled()
        self.assertEqual(removed, [uids[0]])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.read_file(), before)
        self.assertEqual(sorted(os.listdir(self.spool)), ["boss"])
        self.assertEqual([m.uid for m in box.messages], uids[1:])
        yield self.assertFailure(box.read(uids[0]), UnknownUID)
        self.assertEqual((yield box.read(uids[1])), STORED2)
        self.patch(mboxfile.os, "rename", real_rename)
        box.close()
        yield box.settled()
        self.assertNotIn(b"Subject: one", self.read_file())
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.uid for m in box.messages], uids[1:])
        box.close()


class MboxDeferredCompactionTests(MboxTestCase):
    """EXPUNGE is answered when decided; the file is rewritten right after (module docstring of
    mailsuite.store.mbox). File work in real threads here, as in the server."""

    def setUp(self) -> None:
        super().setUp()
        self.blocking = threads.InPool(reactor)

    @defer.inlineCallbacks
    def open_three(self):
        box = yield self.open_with(MSG1, MSG2, MSG1 + b"3\n")
        return self.store, box, [m.uid for m in box.messages]

    def hold_compaction(self, where: str = "expunge") -> defer.Deferred:
        """The next compaction waits in its thread until the returned Deferred's callback:
        before it starts, or (``_copy_kept``) once it holds the locks and the file open."""
        import threading

        gate = threading.Event()
        self.entered = threading.Event()
        real = getattr(mboxfile.MboxFile, where)

        def slow(mfile, *args):
            self.entered.set()
            gate.wait(10)
            return real(mfile, *args)

        self.patch(mboxfile.MboxFile, where, slow)
        release = defer.Deferred()
        release.addCallback(lambda _: gate.set())
        self.addCleanup(gate.set)
        return release

    @defer.inlineCallbacks
    def test_answered_before_the_rewrite(self):
        """The expunge fires while the rewrite is still running: messages, listeners and
        reads no longer have the message, the file still has it; a refresh or another open
        (a new session) does not wait for the rewrite; a flag change does, and then the file
        has lost the message and the index agrees after a restart."""
        store, box, uids = yield self.open_three()
        seen = []
        box.add_listener(seen.append)
        release = self.hold_compaction()
        removed = yield box.expunge([uids[1], 999])
        self.assertEqual(removed, [uids[1]])
        self.assertEqual([m.uid for m in box.messages], [uids[0], uids[2]])
        self.assertEqual([c.expunged for c in seen], [[uids[1]]])
        self.assertEqual(box.unseen_count(), 2)
        yield self.assertFailure(box.read(uids[1]), UnknownUID)
        self.assertIn(b"Subject: two", self.read_file())
        changes = yield box.refresh()
        self.assertFalse(changes)
        other = yield store.open(self.account)  # a new session: no wait either
        self.assertEqual([m.uid for m in other.messages], [uids[0], uids[2]])
        self.assertEqual((yield other.read(uids[2])), MSG1 + b"3\n")
        flagged = box.set_flags({uids[0]: frozenset({"\\Seen"})})
        self.assertNoResult(flagged)
        release.callback(None)
        yield flagged
        self.assertNotIn(b"Subject: two", self.read_file())
        self.assertEqual([c.expunged for c in seen if c.expunged], [[uids[1]]])  # told once
        self.assertEqual([m.uid for m in box.messages], [uids[0], uids[2]])
        self.assertIs(box.messages, box._state.entries)  # nothing hidden: no copy any more
        self.assertEqual((yield box.read(uids[2])), MSG1 + b"3\n")
        other.close()
        box.close()
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.uid for m in box.messages], [uids[0], uids[2]])
        box.close()

    @defer.inlineCallbacks
    def test_in_place_compaction_keeps_selects_going(self):
        """While an in-place compaction moves the messages of a big file (the file is
        neither the old one nor the new one), a refresh and a new session's open do not
        wait for it (a SELECT waited 1.8 s at 100,000 messages); a read made then waits and
        gets the message's bytes; the messages appended by another program before the
        compaction took the locks are told when it ends."""
        import threading

        from mailsuite.store import mboxinplace

        self.patch(mboxinplace, "INPLACE_MIN", 0)
        store, box, uids = yield self.open_three()
        seen = []
        box.add_listener(seen.append)
        gate, entered = threading.Event(), threading.Event()
        real = mboxinplace._Runner.run

        def slow(runner, *args):
            entered.set()
            gate.wait(10)
            return real(runner, *args)

        self.patch(mboxinplace._Runner, "run", slow)
        self.addCleanup(gate.set)
        release = self.hold_compaction()  # first: the mail of another program goes in
        yield box.expunge([uids[0]])
        yield twisted_threads.deferToThread(self.entered.wait, 10)
        self.external_append(b"Subject: four\n\nfour\n")
        release.callback(None)
        yield twisted_threads.deferToThread(entered.wait, 10)
        self.assertEqual(box._file.moving.count % 2, 1)  # moving now
        changes = yield box.refresh()
        self.assertFalse(changes)
        other = yield store.open(self.account)
        self.assertEqual([m.uid for m in other.messages], uids[1:])
        read = other.read(uids[2])
        self.assertNoResult(read)
        gate.set()
        self.assertEqual((yield read), MSG1 + b"3\n")
        yield box.settled()
        self.assertEqual(len(box.messages), 3)
        self.assertEqual([len(c.added) for c in seen if c.added], [1])
        self.assertNotIn(b"body one\n\n", self.read_file())
        self.assertIn(b"Subject: four", self.read_file())
        other.close()
        box.close()

    @defer.inlineCallbacks
    def test_expunges_while_compacting(self):
        """An expunge while a compaction runs is compacted by the next one; appends wait their
        turn and keep their UIDs; every EXPUNGE is told once."""
        _, box, uids = yield self.open_three()
        seen = []
        box.add_listener(seen.append)
        release = self.hold_compaction()
        yield box.expunge([uids[0]])
        yield box.expunge([uids[2]])
        appended = box.append(b"Subject: four\n\nfour\n")
        release.callback(None)
        new = yield appended
        yield box.settled()
        self.assertEqual([m.uid for m in box.messages], [uids[1], new])
        self.assertEqual([u for c in seen for u in c.expunged], [uids[0], uids[2]])
        data = self.read_file()
        self.assertNotIn(b"Subject: one", data)
        self.assertIn(b"Subject: two", data)
        self.assertIn(b"Subject: four", data)
        box.close()

    @defer.inlineCallbacks
    def test_crash_before_compaction_keeps_them_expunged(self):
        """A crash after the EXPUNGE was answered, before the rewrite: the index marked them
        expunged first, so they do not come back (POP3 clients would fetch them again); the
        next open compacts the file without them, and the others keep their UIDs."""
        _, box, uids = yield self.open_three()
        self.patch(box, "_compact", lambda: None)  # the crash comes before it starts
        self.assertEqual((yield box.expunge([uids[0]])), [uids[0]])
        self.assertIn(MSG1, self.read_file())
        box = yield self.make_store().open(self.account)  # another process after the crash
        self.assertEqual([m.uid for m in box.messages], uids[1:])
        yield box.settled()
        self.assertEqual(self.read_file().count(MSG1), 1)  # the third message is MSG1 + "3"
        reopened = yield self.make_store().open(self.account)
        self.assertEqual([m.uid for m in reopened.messages], uids[1:])
        self.assertEqual((yield reopened.read(uids[2])), MSG1 + b"3\n")
        reopened.close()
        box.close()

    @defer.inlineCallbacks
    def test_crash_between_compaction_rename_and_index(self):
        """Three identical copies, the first two expunged; the compaction renames its file in
        and the server dies before it saves the new index: the next load takes the file for
        the compacted one, so the copy left keeps its UID and is not taken for an expunged
        one (matching by content alone gave it the first copy's UID, and its mark)."""
        box = yield self.open_with(MSG1, MSG1, MSG1)
        uids = [m.uid for m in box.messages]
        yield box.expunge(uids[:2])

        def killed(*args):
            raise OSError(5, "the process dies here")

        self.patch(mboxfile.MboxFile, "_save", killed)
        yield box.settled()
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.read_file().count(b"Subject: one"), 1)  # renamed in
        self.patch(mboxfile.MboxFile, "_save", mboxstate.IndexKeeper._save)
        again = yield self.make_store().open(self.account)  # after the restart
        yield again.settled()
        self.assertEqual([m.uid for m in again.messages], uids[2:])
        self.assertEqual(self.read_file().count(b"Subject: one"), 1)
        again.close()
        box.close()

    @defer.inlineCallbacks
    def test_hide_marks_only_messages_still_there(self):
        """An EXPUNGE decided before another operation removed some of its messages marks only
        those left (sessions are not told twice of one expunge)."""
        _, box, uids = yield self.open_three()
        new, changes, gone = box._file.hide(box._state, [uids[1], uids[2] + 10])
        self.assertEqual((gone, changes.expunged, new.hidden), ([uids[1]], [uids[1]], {uids[1]}))
        self.assertEqual(box._file.hide(new, [uids[1]])[2], [])
        box.close()

    @defer.inlineCallbacks
    def test_file_replaced_during_compaction(self):
        """Another program puts a new file in place during the compaction (cp, install: no
        locks): the compaction leaves it; the expunged message it still holds comes back as a
        new message (new UID), the message before it keeps its UID."""
        _, box, uids = yield self.open_three()
        release = self.hold_compaction("_copy_kept")
        yield box.expunge([uids[1]])
        yield twisted_threads.deferToThread(self.entered.wait, 10)  # it has the file open
        content = self.read_file()
        os.unlink(self.path)
        self.write(content)
        release.callback(None)
        yield box.settled()
        yield box.settled()  # the refresh it queued
        self.assertEqual(self.read_file(), content)
        self.assertEqual(len(box.messages), 3)
        first, back, last = [m.uid for m in box.messages]
        # UIDs ascend in file order: what follows the returned message is renumbered too
        self.assertEqual(first, uids[0])
        self.assertGreater(back, uids[2])
        self.assertGreater(last, back)
        self.assertEqual((yield box.read(back)), STORED2)
        self.assertEqual((yield box.read(last)), MSG1 + b"3\n")
        self.assertEqual(sorted(os.listdir(self.spool)), ["boss"])
        box.close()

    @defer.inlineCallbacks
    def test_settle_waits_for_compactions(self):
        """MboxStore.settle (called when the server stops) fires after pending compactions."""
        store, box, uids = yield self.open_three()
        release = self.hold_compaction()
        yield box.expunge([uids[0]])
        settled = store.settle()
        self.assertNoResult(settled)
        release.callback(None)
        yield settled
        self.assertNotIn(b"body one\n\n", self.read_file())
        box.close()

    @defer.inlineCallbacks
    def test_server_stop_waits(self):
        """The server's store service (tap.StoreService) stops only when compactions are done."""
        from mailsuite.tap import StoreService

        store, box, uids = yield self.open_three()
        svc = StoreService(store)
        svc.startService()
        release = self.hold_compaction()
        yield box.expunge([uids[0]])
        stopped = svc.stopService()
        self.assertNoResult(stopped)
        release.callback(None)
        yield stopped
        self.assertNotIn(b"body one\n\n", self.read_file())
        box.close()


class MboxSafetyTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_new_file_mode_and_owner(self):
        """A new mbox is mode 0600, owned by the account (group mail if it exists, as root)."""
        yield self.make_store().deliver(self.account, MSG1, "")
        st = os.lstat(self.path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, self.account.uid)

    @defer.inlineCallbacks
    def test_symlinked_mailbox_refused(self):
        """A mailbox that is a symlink is neither read nor written through."""
        target = os.path.join(self.spool, "..", "target")
        with open(target, "wb") as f:
            f.write(b"")
        os.symlink(target, self.path)
        store = self.make_store()
        with self.assertRaises(StoreError):
            yield store.deliver(self.account, MSG1, "")
        with self.assertRaises(StoreError):
            yield store.open(self.account)
        self.assertEqual(os.path.getsize(target), 0)

    @defer.inlineCallbacks
    def test_index_outside_home_refused(self):
        """~/mail pointing outside the home: no index (nor directory) is written there."""
        outside = os.path.abspath(os.path.join(self.spool, "..", "elsewhere"))
        os.mkdir(outside)
        os.symlink(outside, os.path.join(self.account.home, "mail"))
        with self.assertRaises(StoreError):
            yield self.make_store().open(self.account)
        self.assertEqual(os.listdir(outside), [])

    @defer.inlineCallbacks
    def test_dotlock_held_times_out(self):
        """A fresh dotlock held by someone else: delivery waits, then fails with StoreError,
        and leaves the other program's lock alone."""
        with open(self.path + ".lock", "wb"):
            pass
        with self.assertRaises(LockTimeout):
            yield self.make_store(lock_timeout=0.05).deliver(self.account, MSG1, "")
        self.assertTrue(os.path.exists(self.path + ".lock"))

    @defer.inlineCallbacks
    def test_fcntl_lock_held_times_out(self):
        """An fcntl lock held by someone else: delivery times out and releases its dotlock."""
        self.write(b"")
        fd = os.open(self.path, os.O_RDWR)
        self.addCleanup(os.close, fd)
        self.assertTrue(try_fcntl_lock(fd))
        with self.assertRaises(StoreError):
            yield self.make_store(lock_timeout=0.05).deliver(self.account, MSG1, "")
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertEqual(self.read_file(), b"")

    @defer.inlineCallbacks
    def test_stale_dotlock_broken(self):
        """A dotlock older than stale_after (left by a crash) is removed and delivery proceeds."""
        with open(self.path + ".lock", "wb"):
            pass
        old = time.time() - 600
        os.utime(self.path + ".lock", (old, old))
        yield self.make_store().deliver(self.account, MSG1, "")
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertIn(MSG1, self.read_file())


class ManualThreads:
    """Stands in for a threads.Blocking: work runs only when the test says so."""

    def __init__(self):
        self.pending = []

    def __call__(self, f, *args, **kw):
        d = defer.Deferred()
        self.pending.append((d, f, args, kw))
        return d

    def run_all(self):
        while self.pending:
            d, f, args, kw = self.pending.pop(0)
            d.callback(f(*args, **kw))


class MboxDurabilityTests(MboxTestCase):
    def test_delivery_fsyncs_before_firing(self):
        """deliver's Deferred fires only after the mbox was fsync'ed with the message in it."""
        manual = self.blocking = ManualThreads()
        synced = []
        real_fsync = os.fsync

        def fsync(fd):
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_ino == os.stat(self.path).st_ino:
                synced.append(st.st_size)
            real_fsync(fd)

        self.patch(mboxfile.os, "fsync", fsync)
        d = self.make_store().deliver(self.account, MSG1, "a@example.test")
        self.assertNoResult(d)
        self.assertEqual(synced, [])
        manual.run_all()
        self.successResultOf(d)
        self.assertEqual(synced, [len(self.read_file())])

    def test_append_uid_durable_before_firing(self):
        """append's UID is in the saved index before the Deferred fires."""
        manual = self.blocking = ManualThreads()
        store = self.make_store()
        d = store.open(self.account)
        manual.run_all()
        box = self.successResultOf(d)
        d = box.append(MSG1, frozenset({"\\Seen"}))
        self.assertNoResult(d)
        manual.run_all()
        uid = self.successResultOf(d)
        with open(self.index_path + ".log", "rb") as f:
            records = f.read().splitlines()
        self.assertTrue(records[-2].startswith(b"A %d " % uid))
        self.assertTrue(records[-2].endswith(b" \\Seen"))
        self.assertTrue(records[-1].startswith(b"S %d " % (uid + 1)))
        box.close()


CRLF_STATUS_MSG = (
    b"From: a@example.test\r\nSubject: crlf\r\n\r\n"
    b"Status: this line is body text\r\nX-Status: so is this\r\nbody\r\n"
)


class MboxCRLFHeaderTests(MboxTestCase):
    def test_header_end(self):
        """The header block ends at the first blank line, LF or CRLF, whichever comes first;
        an empty header block is just its blank line; no blank line: all header."""
        from mailsuite.store.mboxformat import header_end

        cases = [
            (b"A: 1\nB: 2\n\nbody\r\n\r\nmore\n", 11),
            (b"A: 1\r\nB: 2\r\n\r\nbody\n\nmore\n", 14),
            (b"A: 1\r\n\r\nbody\r\n", 8),
            (b"A: 1\n\r\nbody\n\nx\n", 7),
            (b"\nbody\n", 1),
            (b"\r\nbody\r\n", 2),
            (b"A: 1\r\nB: 2\r\n", 12),
        ]
        for data, end in cases:
            self.assertEqual(header_end(b"xx" + data, 2, len(data) + 2), end + 2, data)

    @defer.inlineCallbacks
    def test_crlf_message_body_status_lines_survive_rewrite(self):
        """A message another program stored with CRLF line ends: body lines that look like
        Status:/X-Status: headers are served, and survive a flag change and an expunge
        rewrite byte for byte (they used to be taken for header and deleted)."""
        self.write(b"From x@example.test  " + asctime(self.clock[0]).encode() + b"\n")
        self.write(CRLF_STATUS_MSG + b"\n")
        self.external_append(MSG1)
        store = self.make_store()
        box = yield store.open(self.account)
        uid = box.messages[0].uid
        self.assertEqual((yield box.read(uid)), CRLF_STATUS_MSG)
        headers = yield box.read_headers([uid])
        self.assertEqual(headers[uid], b"From: a@example.test\r\nSubject: crlf\r\n\r\n")
        yield box.set_flags({uid: frozenset({"\\Seen", "\\Flagged"})})
        yield box.expunge([box.messages[1].uid])
        yield box.settled()  # the file is compacted after the answer
        self.assertEqual((yield box.read(uid)), CRLF_STATUS_MSG)
        self.assertEqual(box.messages[0].flags, {"\\Seen", "\\Flagged"})
        self.assertEqual(box.messages[0].size, len(to_wire(CRLF_STATUS_MSG)))
        data = self.read_file()
        self.assertIn(b"Status: this line is body text\r\nX-Status: so is this\r\nbody\r\n", data)
        self.assertIn(b"Subject: crlf\r\nStatus: RO\nX-Status: F\n\r\n", data)
        box.close()
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.uid for m in box.messages], [uid])
        self.assertEqual(box.messages[0].flags, {"\\Seen", "\\Flagged"})
        self.assertEqual((yield box.read(uid)), CRLF_STATUS_MSG)
        box.close()


class MboxPartialRewriteTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_random_expunges_and_flags(self):
        """Expunge rewrites copy clean runs verbatim and touch only dirty or removed messages:
        after rounds of random flag changes and expunges over odd messages (junk before the
        first, CRLF, mutt status headers, no final newline), every kept message reads back as
        before, and a parse from scratch (index deleted) finds the same messages and flags."""
        import random

        rnd = random.Random(7)
        self.write(b"junk before the first message\n\n")
        bodies = []
        for i in range(60):
            kind = i % 4
            if kind == 0:
                data = b"Subject: m%d\n\nbody %d\n" % (i, i)
            elif kind == 1:
                data = b"Subject: m%d\r\n\r\nStatus: RO\r\nbody %d\r\n" % (i, i)
            elif kind == 2:
                data = b"Subject: m%d\nStatus: RO\nX-Status: A\n\nbody %d\n" % (i, i)
            else:
                data = b"Subject: m%d\nX-Keywords: Old\n\n" % i + b"x" * (i * 97) + b"\n"
            self.external_append(data)
            bodies.append(data)
        self.write(b"From x@example.test  " + asctime(self.clock[0]).encode() + b"\n")
        self.write(b"Subject: last\n\nno final newline")
        store = self.make_store()
        box = yield store.open(self.account)
        expected = {}
        for info in box.messages:
            expected[info.uid] = yield box.read(info.uid)
        choices = [
            frozenset(),
            frozenset({"\\Seen"}),
            frozenset({"\\Flagged", "Kw"}),
            frozenset({"\\Answered", "\\Seen", "\\Deleted"}),
        ]
        for _ in range(4):
            uids = [m.uid for m in box.messages]
            yield box.set_flags({u: rnd.choice(choices) for u in rnd.sample(uids, 12)})
            yield box.expunge(rnd.sample(uids, 5))
            yield box.settled()  # the file is compacted after the answer
            for info in box.messages:
                data = yield box.read(info.uid)
                self.assertEqual(data, expected[info.uid])
                self.assertEqual(info.size, len(to_wire(data)))
        flags = {m.uid: m.flags for m in box.messages}
        order = [expected[m.uid] for m in box.messages]
        box.close()
        self.assertTrue(self.read_file().startswith(b"junk before the first message\n\n"))
        os.unlink(self.index_path)
        box = yield self.make_store().open(self.account)
        again = []
        for m in box.messages:
            again.append((yield box.read(m.uid)))
        self.assertEqual(again, order)
        self.assertEqual([m.flags for m in box.messages], list(flags.values()))
        box.close()


class MboxPartialRewriteFallbackTests(MboxPartialRewriteTests):
    """The same rounds where the kernel cannot copy between the files (copy_file_range fails,
    as across file systems or on old kernels): the rewrite copies through its buffer."""

    def setUp(self) -> None:
        super().setUp()
        calls = []

        def refuse(*args: object) -> int:
            calls.append(args)
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.patch(os, "copy_file_range", refuse)
        self.addCleanup(lambda: self.assertTrue(calls, "copy_file_range was never tried"))


class MboxJournalTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_journal_survives_restart_and_compacts(self):
        """Flags and appends recorded in the journal are there after a restart; once the
        journal outgrows its limit it is folded into a new index and removed."""
        # Appends may reach the journal as long "A" records or the index as a whole, depending
        # on how deliveries batch; the small limit applies only to the flag changes below.
        self.patch(mboxstate, "LOG_LIMIT", 1 << 20)
        store = self.make_store()
        box = yield store.open(self.account)
        uids = []
        for _ in range(3):
            uids.append((yield box.append(MSG1)))
        yield box.set_flags({uids[1]: frozenset({"\\Flagged", "Kw"})})
        self.assertTrue(os.path.exists(self.index_path + ".log"))
        box.close()
        box = yield self.make_store().open(self.account)
        self.assertEqual([m.uid for m in box.messages], uids)
        self.assertEqual([m.flags for m in box.messages], [set(), {"\\Flagged", "Kw"}, set()])
        self.patch(mboxstate, "LOG_LIMIT", 300)
        for i in range(20):
            yield box.set_flags({uids[0]: frozenset({f"K{i}"})})
        self.assertLess(os.path.getsize(self.index_path + ".log"), 300 + 16 * 3 + 100)
        box.close()
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.messages[0].flags, {"K19"})
        box.close()

    @defer.inlineCallbacks
    def test_stale_or_cut_journal_ignored(self):
        """A journal of another index generation (left by a crash after a new index was
        written) is ignored, and so is a last record cut short."""
        store = self.make_store()
        box = yield store.open(self.account)
        uid = yield box.append(MSG1)
        yield box.set_flags({uid: frozenset({"\\Seen"})})
        box.close()
        with open(self.index_path + ".log", "ab") as f:
            f.write(b"F %d \\Deleted" % uid)  # no newline: the writer crashed
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.messages[0].flags, {"\\Seen"})
        box.close()
        with open(self.index_path + ".log", "rb") as f:
            log = f.read()
        with open(self.index_path + ".log", "wb") as f:
            f.write(log.replace(b"log 1 ", b"log 1 9", 1))
        box = yield self.make_store().open(self.account)
        # the append was journaled too: the message is found again by a parse, flags lost
        self.assertEqual([(m.uid, m.flags) for m in box.messages], [(uid, set())])
        box.close()


class MboxIdleCacheTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_reopen_uses_kept_state(self):
        """A mailbox opened again after its last close is not read from the index again (a
        stat tells it is unchanged); beyond the idle budget the least recently used goes."""
        from mailsuite.store import index as ix

        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        yield store.create(self.account, "Other")
        box = yield store.open(self.account)
        box.close()
        reads = []
        real = ix.read_index
        self.patch(ix, "read_index", lambda *a: reads.append(a[0]) or real(*a))
        box = yield store.open(self.account)
        self.assertEqual((len(box.messages), reads), (1, []))
        box.close()
        store.idle_budget = 1
        other = yield store.open(self.account, "Other")
        yield other.append(MSG2)
        other.close()  # 2 idle messages > 1: INBOX, the older, goes
        del reads[:]
        box = yield store.open(self.account)
        self.assertEqual(len(reads), 1)  # INBOX read again
        box.close()

    @defer.inlineCallbacks
    def test_read_only_folder_ops_keep_idle_mailboxes(self):
        """LIST (every login does one), STATUS-like opens, CREATE of an unrelated folder and
        the subscription calls leave the idle INBOX in memory: the next SELECT costs a stat,
        not a read of the whole index (bench: warm SELECT of 100,000 messages took 281 ms)."""
        from mailsuite.store import index as ix

        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        box.close()
        reads = []
        real = ix.read_index
        self.patch(ix, "read_index", lambda *a: reads.append(a[0]) or real(*a))
        yield store.list_mailboxes(self.account)
        yield store.create(self.account, "Work")
        yield store.subscribe(self.account, "Work")
        yield store.subscriptions(self.account)
        box = yield store.open(self.account)
        self.assertEqual((len(box.messages), reads), (1, []))
        box.close()

    @defer.inlineCallbacks
    def test_folder_ops_drop_only_the_idle_mailboxes_they_move(self):
        """RENAME of an idle folder forgets that one (its index moved with it) and keeps the
        idle INBOX; the renamed folder opens under its new name with its messages."""
        from mailsuite.store import index as ix

        store = self.make_store()
        yield store.create(self.account, "Work")
        work = yield store.open(self.account, "Work")
        yield work.append(MSG2)
        validity = work.uid_validity
        work.close()
        inbox = yield store.open(self.account)
        inbox.close()
        reads = []
        real = ix.read_index
        self.patch(ix, "read_index", lambda *a: reads.append(a[0]) or real(*a))
        yield store.rename(self.account, "Work", "Done")
        inbox = yield store.open(self.account)
        self.assertEqual(reads, [])
        inbox.close()
        done = yield store.open(self.account, "Done")
        self.assertEqual((len(done.messages), len(reads)), (1, 1))
        self.assertEqual(done.uid_validity, validity)
        done.close()

    @defer.inlineCallbacks
    def test_folder_os_errors_are_store_errors(self):
        """An account whose home cannot hold folders (here: its home is a file) gets a
        StoreError from CREATE, SUBSCRIBE and open, never a raw OSError (which the IMAP
        server answers with [SERVERBUG]); LIST shows INBOX alone, and no subscriptions."""
        home = os.path.join(self.mktemp() + "-file")
        with open(home, "w") as f:
            f.write("not a directory")
        account = Account("nohome", os.getuid(), os.getgid(), home)
        store = self.make_store()
        entries = yield store.list_mailboxes(account)
        self.assertEqual([e.name for e in entries], ["INBOX"])
        self.assertEqual((yield store.subscriptions(account)), set())
        for op in (
            lambda: store.create(account, "Work"),
            lambda: store.subscribe(account, "Work"),
            lambda: store.open(account, "Work"),
        ):
            failed = yield op().addCallbacks(lambda _: [], lambda f: [f])
            self.assertEqual(len(failed), 1)
            self.assertTrue(failed[0].check(StoreError), failed[0])


class MboxLostIndexTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_index_directory_removed_while_kept_in_memory(self):
        """The index directory removed from outside (``rm -rf ~/mail/.imap``) while the INBOX is
        kept in memory: delivery, open and flag changes go on (no FileNotFoundError from the
        journal; POP3 logins got -ERR until a restart), the index is written again from memory
        with the same UIDVALIDITY and UIDs, and a restart finds it."""
        import shutil

        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        validity, first = box.uid_validity, box.messages[0].uid
        box.close()  # idle, in memory
        shutil.rmtree(os.path.dirname(os.path.dirname(self.index_path)))
        yield store.deliver(self.account, MSG2, "b@example.test")  # the open INBOX appends
        box = yield store.open(self.account)
        yield box.set_flags({first: frozenset({"\\Seen"})})
        self.assertEqual(box.uid_validity, validity)
        uids = [(m.uid, m.flags) for m in box.messages]
        box.close()
        self.assertTrue(os.path.exists(self.index_path))
        again = yield self.make_store().open(self.account)
        self.assertEqual(again.uid_validity, validity)
        self.assertEqual([(m.uid, m.flags) for m in again.messages], uids)
        again.close()

    @defer.inlineCallbacks
    def test_index_file_removed_while_open(self):
        """Only the index file removed (its directory stays): a flag change must not journal
        into a log no index belongs to; the index is written whole again."""
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        validity, uid = box.uid_validity, box.messages[0].uid
        os.unlink(self.index_path)
        yield box.set_flags({uid: frozenset({"\\Flagged"})})
        box.close()
        again = yield self.make_store().open(self.account)
        self.assertEqual((again.uid_validity, [(m.uid, m.flags) for m in again.messages]),
                         (validity, [(uid, {"\\Flagged"})]))
        again.close()


class MboxInternalDateZoneTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_append_zone_kept_in_index(self):
        """An APPEND date keeps its zone (+0200, -0330) through the index and its journal, and a
        version-1 index (no zones) still loads with the same UIDVALIDITY, its dates in UTC."""
        from datetime import datetime, timedelta, timezone

        store = self.make_store()
        box = yield store.open(self.account)
        plus2 = datetime(2007, 3, 24, 23, 0, 0, tzinfo=timezone(timedelta(hours=2)))
        minus = datetime(2007, 3, 24, 1, 0, 0, tzinfo=timezone(-timedelta(hours=3, minutes=30)))
        yield box.append(MSG1, frozenset(), plus2)
        yield box.append(MSG2, frozenset(), minus)
        validity = box.uid_validity
        box.close()
        for again in range(2):  # journal, then a fresh index read
            store = self.make_store()
            box = yield store.open(self.account)
            got = [m.internal_date for m in box.messages]
            self.assertEqual(got, [plus2, minus])
            self.assertEqual([d.utcoffset() for d in got], [plus2.utcoffset(), minus.utcoffset()])
            self.assertEqual(box.uid_validity, validity)
            box.close()
            if not again:
                state = ix.read_index(self.index_path)  # index + journal
                ix.write_index(self.index_path, state, None)
                with open(self.index_path, "rb") as f:
                    text = f.read()
                self.assertIn(b" %d+0200 " % int(plus2.timestamp()), text)
                self.assertIn(b" %d-0330 " % int(minus.timestamp()), text)
        old = text.replace(b"mailsuite-mbox-index 2", b"mailsuite-mbox-index 1")
        old = old.replace(b"+0200 ", b" ").replace(b"-0330 ", b" ")
        with open(self.index_path, "wb") as f:
            f.write(old)
        if os.path.exists(self.index_path + ".log"):
            os.unlink(self.index_path + ".log")
        store = self.make_store()
        box = yield store.open(self.account)
        self.assertEqual(box.uid_validity, validity)
        self.assertEqual([m.internal_date for m in box.messages], [plus2, minus])
        self.assertEqual({m.internal_date.utcoffset() for m in box.messages}, {timedelta(0)})
        box.close()

    @defer.inlineCallbacks
    def test_delivered_mail_in_local_zone(self):
        """Mail delivered here (open INBOX or parsed from the From line later) gets the server's
        local zone, as Dovecot shows it."""
        from datetime import timedelta

        old_tz = os.environ.get("TZ")

        def restore():
            if old_tz is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old_tz
            time.tzset()
            zones._LOCAL.clear()

        self.addCleanup(restore)
        os.environ["TZ"] = "XST-3"  # POSIX: three hours east of UTC, no tzdata needed
        time.tzset()
        zones._LOCAL.clear()
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")  # not open: From line
        box = yield store.open(self.account)
        yield store.deliver(self.account, MSG2, "b@example.test")  # open: entry made at once
        yield box.refresh()
        dates = [m.internal_date for m in box.messages]
        self.assertEqual([d.utcoffset() for d in dates], [timedelta(hours=3)] * 2)
        self.assertEqual(dates, [self.now(), self.now()])
        box.close()


STORED2 = MSG2.replace(b"\nFrom here", b"\n>From here")  # served as stored (quoted)


class MboxReactorReadTests(MboxTestCase):
    """Reads served on the reactor thread with ``preadv(RWF_NOWAIT)`` when the bytes are in the
    page cache, else in a thread (``blocking``)."""

    def setUp(self) -> None:
        super().setUp()
        self.threaded = 0
        real = self.blocking

        def counting(f, *args, **kw):
            if getattr(f, "__name__", "") == "read_keeping":
                self.threaded += 1
            return real(f, *args, **kw)

        self.blocking = counting

    @defer.inlineCallbacks
    def test_cached_read_on_reactor(self):
        """The first read goes to a thread and keeps the file open; later reads of cached
        messages are served without a thread, the same bytes; close() closes the descriptor."""
        box = yield self.open_with(MSG1, MSG2)
        one, two = [m.uid for m in box.messages]
        first = yield box.read(one)
        self.assertEqual(self.threaded, 1)
        self.assertIsNotNone(box._reader)
        again = yield box.read(one)
        other = yield box.read(two)
        self.assertEqual(self.threaded, 1)
        self.assertEqual((first, again, other), (MSG1, MSG1, STORED2))
        fd = box._reader[0]
        box.close()
        self.assertIsNone(box._reader)
        self.assertRaises(OSError, os.fstat, fd)

    @defer.inlineCallbacks
    def test_not_cached_falls_back_to_thread(self):
        """preadv failing with EAGAIN (BlockingIOError: not in the page cache) or giving a
        short read: the thread reads it, the same bytes."""
        box = yield self.open_with(MSG1, MSG2)
        uid = box.messages[1].uid
        yield box.read(uid)

        def not_cached(fd, buffers, offset, flags):
            self.assertEqual(flags, os.RWF_NOWAIT)
            raise BlockingIOError(11, "Resource temporarily unavailable")

        self.patch(os, "preadv", not_cached)
        data = yield box.read(uid)
        self.assertEqual((data, self.threaded), (STORED2, 2))
        self.patch(os, "preadv", lambda fd, buffers, offset, flags: 3)
        data = yield box.read(uid)
        self.assertEqual((data, self.threaded), (STORED2, 3))
        box.close()

    @defer.inlineCallbacks
    def test_rewrite_reopens_and_changed_file_is_checked(self):
        """After an expunge renames a new file over the mailbox the kept descriptor (old inode)
        is not used: a thread reads and keeps the new file. A message another program moved in
        place fails the check on the reactor and is found again through a refresh."""
        box = yield self.open_with(MSG1, MSG2, MSG1)
        uids = [m.uid for m in box.messages]
        yield box.read(uids[2])
        yield box.expunge([uids[0]])
        yield box.settled()  # the file is compacted after the answer
        data = yield box.read(uids[2])
        self.assertEqual((data, self.threaded), (MSG1, 2))
        data = yield box.read(uids[1])
        self.assertEqual((data, self.threaded), (STORED2, 2))
        # another program (mutt) rewrites in place, same inode: a Status header moves the rest
        content = self.read_file()
        self.assertIn(b"Subject: two\n", content)
        with open(self.path, "r+b") as f:
            f.write(content.replace(b"Subject: two\n", b"Subject: two\nStatus: RO\n", 1))
        data = yield box.read(uids[2])
        self.assertEqual(data, MSG1)
        self.assertEqual(self.threaded, 4)  # checked on the reactor: moved; thread, refresh, thread
        box.close()


class MboxUnseenCountTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_unseen_count_follows_every_change(self):
        """unseen_count (STATUS UNSEEN, O(1)) equals a count over the messages after flag
        changes, appends with and without \\Seen, deliveries, external appends, a mutt Status
        header, expunges and a reopen."""
        import random

        rnd = random.Random(7)
        store = self.make_store()
        box = yield store.open(self.account)

        def check():
            self.assertEqual(box.unseen_count(), sum("\\Seen" not in m.flags for m in box.messages))

        for _ in range(60):
            uids = [m.uid for m in box.messages]
            what = rnd.randrange(6)
            if what == 0 or not uids:
                yield box.append(MSG1, frozenset(rnd.choice([(), ("\\Seen",)])))
            elif what == 1:
                yield store.deliver(self.account, MSG2, "b@example.test")
            elif what == 2:
                yield box.change_flags(rnd.sample(uids, min(3, len(uids))),
                                       add=frozenset({"\\Seen"}))
            elif what == 3:
                yield box.change_flags(rnd.sample(uids, min(2, len(uids))),
                                       remove=frozenset({"\\Seen"}))
            elif what == 4:
                yield box.expunge(rnd.sample(uids, 1))
                yield box.settled()  # the file is compacted after the answer
            else:
                self.external_append(b"Subject: ext\nStatus: RO\n\nx\n")
                yield box.refresh()
            check()
        box.close()
        box = yield self.make_store().open(self.account)
        check()
        box.close()


class MboxAppendManyTests(MboxTestCase):
    """MboxFile.append is append_many of one message: one path for APPEND and delivery."""

    @defer.inlineCallbacks
    def test_flags_and_zone_of_a_group(self):
        box = yield self.open_with(MSG1)
        date = int(self.clock[0])
        uids = yield box._run(box._file.append_many, [(MSG2, "a@example.test"),
                                                     (MSG1, "b@example.test")],
                              date, frozenset({"\\Seen", "bad flag"}), 3600)
        self.assertEqual(uids, [2, 3])
        added = box._state.entries[1:]
        self.assertEqual([e.flags for e in added], [frozenset({"\\Seen"})] * 2)
        self.assertEqual([(e.date, e.tz) for e in added], [(date, 3600)] * 2)

    @defer.inlineCallbacks
    def test_append_writes_what_append_many_writes(self):
        """The same bytes on disk (prefix fix-up, From_ line, quoting) and the same entry."""
        self.write(b"From x@y Thu Jan  1 00:00:00 1970\nSubject: no final newline")
        box = yield self.open_with()
        date = int(self.clock[0])
        uid = yield box._append(MSG2, "a@example.test", frozenset({"\\Flagged"}), None)
        with open(self.path, "rb") as f:
            one = f.read()
        entry = box._state.entries[-1]
        os.unlink(self.path)
        self.write(b"From x@y Thu Jan  1 00:00:00 1970\nSubject: no final newline")
        other = mboxfile.MboxFile(self.account, self.path, os.path.join(self.account.home, "mail"),
                                  now=lambda: self.clock[0],
                                  index_dir=os.path.join(self.account.home, "idx"))
        many = other.append_many(None, [(MSG2, "a@example.test")], date)
        self.assertEqual(many[2], None)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), one)
        self.assertEqual((uid, entry.flags), (2, frozenset({"\\Flagged"})))
