"""The mbox store's low-level I/O: the check of a message read at the index's offsets, and the
write-behind of a big rewrite."""

from __future__ import annotations

import os
import tempfile

from twisted.trial import unittest

from mailsuite import fsutil
from mailsuite.store import index as ix
from mailsuite.store.mboxfile import verified
from mailsuite.store.mboxformat import parse

FILE = (
    b"From a@example.test Mon Sep 14 19:07:10 2026\n"
    b"Subject: one\nStatus: RO\n\nbody one\n\n"
    b"From b@example.test Mon Sep 14 19:08:10 2026\n"
    b"Subject: two\n\nbody two\n"
)


class VerifiedTests(unittest.TestCase):
    """``verified`` gives the message as served only when the bytes at the index's offsets are
    still that message: a From line of the indexed length, the same fingerprint."""

    def setUp(self) -> None:
        parsed = parse(FILE, 0, len(FILE))
        self.entries = [
            ix.entry_from(p, uid, frozenset(), p.date or 0) for uid, p in enumerate(parsed, 1)
        ]

    def bytes_of(self, e: ix.Entry, data: bytes = FILE) -> bytes:
        return data[e.offset : e.end]

    def test_same_message(self) -> None:
        one, two = self.entries
        self.assertEqual(verified(one, self.bytes_of(one)), b"Subject: one\n\nbody one\n")
        self.assertEqual(verified(two, self.bytes_of(two)), b"Subject: two\n\nbody two\n")
        self.assertEqual(verified(one, FILE[one.offset : one.hdr_end], True), b"Subject: one\n\n")

    def test_other_bytes_refused(self) -> None:
        one, two = self.entries
        # another program moved things: the same length but not a From line there
        self.assertIsNone(verified(two, FILE[two.offset + 1 : two.end + 1]))
        # a From line of another length (a different sender)
        moved = FILE.replace(b"From b@example.test", b"From bb@example.test")
        self.assertIsNone(verified(two, moved[two.offset : two.end]))
        # the From line where it was, another header (mutt changed Subject: same length)
        changed = FILE.replace(b"Subject: two", b"Subject: TWO")
        self.assertIsNone(verified(two, changed[two.offset : two.end]))
        # a short read
        self.assertIsNone(verified(one, self.bytes_of(one)[:-1]))


class HiddenMarkTests(unittest.TestCase):
    """The messages an EXPUNGE hid until the compaction (``Index.hidden``) survive the index
    being written, read back and journaled; reconcile keeps the marks of messages still there."""

    def setUp(self) -> None:
        parsed = parse(FILE, 0, len(FILE))
        entries = [ix.entry_from(p, n, frozenset(), p.date or 0) for n, p in enumerate(parsed, 1)]
        self.index = ix.Index(7, 3, ix.Stamp(len(FILE), 1, 2), entries, 5)

    def test_index_round_trip(self) -> None:
        self.assertEqual(ix.load(ix.dump(self.index)).hidden, frozenset())
        self.index.hidden = frozenset({2})
        back = ix.load(ix.dump(self.index))
        self.assertEqual((back.hidden, [e.uid for e in back.entries]), ({2}, [1, 2]))

    def test_index_written_in_blocks(self) -> None:
        """``dump_blocks``: the head, then ``block`` entry lines a piece (the last one short),
        whose bytes are the index file; ``write_index`` writes them and they read back."""
        parsed = parse(FILE, 0, len(FILE))
        entries = [ix.entry_from(p, n, frozenset({"\\Seen"}) if n % 2 else frozenset(),
                                 p.date or 0) for n, p in enumerate(parsed * 4, 1)]
        self.index = ix.Index(7, 9, ix.Stamp(len(FILE), 1, 2), entries, 5, frozenset({3}))
        pieces = list(ix.dump_blocks(self.index, block=3))
        self.assertEqual([p.count(b"\n") for p in pieces], [3, 3, 3, 2])
        whole = b"".join(pieces)
        self.assertEqual(whole.split(b"\n")[3:-1], [ix.entry_line(e) for e in entries])
        self.assertEqual(ix.dump(self.index), whole)
        path = self.mktemp()
        ix.write_index(path, self.index, None)
        back = ix.read_index(path)
        assert back is not None
        self.assertEqual((back.entries, back.hidden), (entries, {3}))

    def test_journal_record(self) -> None:
        log = ix.LOG_MAGIC + b" 5\n" + ix.log_records(hidden={1}) + ix.log_records(hidden={2})
        self.assertEqual(ix.apply_log(self.index, log).hidden, {1, 2})
        self.assertEqual(ix.apply_log(self.index, log + b"X 3").hidden, {1, 2})  # cut short

    def test_reconcile_keeps_marks_of_messages_still_there(self) -> None:
        self.index.hidden = frozenset({1, 2})
        only_two = FILE[FILE.index(b"From b@"):]
        new, _ = ix.reconcile(self.index, parse(only_two, 0, len(only_two)),
                              ix.Stamp(len(only_two), 3, 2), 0)
        self.assertEqual(new.hidden, {2})


class WriteBehindTests(unittest.TestCase):
    """Writeback of each window starts when it is written, and the window before it is waited
    for; the ranges cover the file once, in order."""

    def setUp(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.patch(
            fsutil,
            "_sync_file_range",
            lambda fd, off, n, flags: self.calls.append((off, n, flags)) or 0,
        )
        fd, self.path = tempfile.mkstemp()
        self.addCleanup(os.unlink, self.path)
        self.fd = fd
        self.addCleanup(os.close, fd)

    def test_windows(self) -> None:
        wb = fsutil.WriteBehind(self.fd, window=100)
        for end in (40, 99, 150, 180, 260, 300, 301):
            wb.wrote(end)
        start, wait = fsutil._WRITE, fsutil._WAIT_BEFORE | fsutil._WRITE | fsutil._WAIT_AFTER
        self.assertEqual(self.calls, [(0, 150, start), (150, 110, start), (0, 150, wait)])
        self.assertEqual((wb.started, wb.waited), (260, 150))

    def test_failure_leaves_it_to_fsync(self) -> None:
        self.patch(
            fsutil,
            "_sync_file_range",
            lambda fd, off, n, flags: self.calls.append((off, n, flags)) or -1,
        )
        wb = fsutil.WriteBehind(self.fd, window=10)
        wb.wrote(20)
        wb.wrote(40)
        self.assertEqual([c[0] for c in self.calls], [0, 0])  # retried from 0: nothing started
        self.assertEqual(wb.started, 0)

    def test_real_call(self) -> None:
        """The real sync_file_range (Linux) accepts the calls; the file is intact."""
        self.patch(fsutil, "_sync_file_range", fsutil._load_sync_file_range())
        if fsutil._sync_file_range is None:
            raise unittest.SkipTest("no sync_file_range here")
        wb = fsutil.WriteBehind(self.fd, window=4096)
        data = os.urandom(3 * 4096 + 100)
        for i in range(0, len(data), 1000):
            os.write(self.fd, data[i : i + 1000])
            wb.wrote(min(i + 1000, len(data)))
        self.assertGreater(wb.waited, 0)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), data)


class StaleJournalTests(unittest.TestCase):
    """A crash between a new index's rename and the removal of the old journal leaves a journal
    of another generation: what is journaled next must not go into it (ignored at load)."""

    def test_records_after_a_stale_journal_are_kept(self) -> None:
        d = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, d)
        path = os.path.join(d, "mailsuite.index")
        parsed = parse(FILE, 0, len(FILE))
        entries = [ix.entry_from(p, n, frozenset(), p.date or 0) for n, p in enumerate(parsed, 1)]
        index = ix.Index(7, 3, ix.Stamp(len(FILE), 1, 2), entries)
        ix.write_index(path, index, None)
        with open(ix.log_path(path), "wb") as f:  # the old generation's, left by the crash
            f.write(ix.LOG_MAGIC + b" %d\n" % (index.generation + 1) + b"F 1 \\Seen\n")
        ix.append_log(path, index, ix.log_records({2: frozenset({"\\Flagged"})}), None)
        back = ix.read_index(path)
        assert back is not None
        self.assertEqual([e.flags for e in back.entries], [frozenset(), {"\\Flagged"}])
