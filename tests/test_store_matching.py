"""mailsuite.store.matching: the old entries a fresh parse is matched against."""

from __future__ import annotations

from twisted.trial import unittest

from mailsuite.store import index as ix
from mailsuite.store.matching import Candidates
from mailsuite.store.mboxformat import parse


def entry(uid: int, fp: str) -> ix.Entry:
    return ix.Entry(uid, 0, 0, 0, 0, 0, 0, fp, "00000000", frozenset())


class CandidatesTests(unittest.TestCase):
    def test_unique_and_repeated_fingerprints(self):
        """Each taken at most once, in order; those at or below ``after`` are dropped (a
        repeated fingerprint's earlier copies too), an unknown one is None."""
        c = Candidates([entry(1, "a"), entry(2, "b"), entry(3, "a"), entry(4, "c"),
                        entry(5, "a")])
        self.assertEqual(c.take("a", 0).uid, 1)
        self.assertIsNone(c.take("b", 2))  # dropped: at or below ``after``
        self.assertIsNone(c.take("b", 0))  # (and not offered again)
        self.assertEqual(c.take("a", 3).uid, 5)  # 3 is skipped and gone
        self.assertIsNone(c.take("a", 0))
        self.assertEqual(c.take("c", 3).uid, 4)
        self.assertIsNone(c.take("c", 0))
        self.assertIsNone(c.take("zz", 0))

    def test_unique_fingerprints_make_no_queue(self):
        c = Candidates(entry(uid, f"{uid:024x}") for uid in range(1, 1001))
        self.assertEqual((len(c.single), len(c.multi)), (1000, 0))


FILE = (
    b"From a@example.test Mon Sep 14 19:07:10 2026\n"
    b"Subject: one\n\nbody one\n\n"
    b"From b@example.test Mon Sep 14 19:08:10 2026\n"
    b"Subject: two\n\nbody two\n\n"
    b"From c@example.test Mon Sep 14 19:09:10 2026\n"
    b"Subject: three\n\nbody three\n"
)


class ReconcileTests(unittest.TestCase):
    """``index.reconcile`` keeps the old entry of a message a reparse finds unchanged (same
    place, same status headers: its flags, mod-sequence and dates as they were), and makes
    the others again from the parse."""

    def setUp(self) -> None:
        self.parse = parse
        self.old, _ = ix.reconcile(ix.Index(7), parse(FILE, 0, len(FILE)),
                                   ix.Stamp(len(FILE), 1, 2), 0)

    def test_unchanged_entries_kept(self):
        new, changes = ix.reconcile(self.old, self.parse(FILE, 0, len(FILE)),
                                    ix.Stamp(len(FILE), 2, 3), 0)
        self.assertEqual(new.entries, self.old.entries)
        self.assertFalse(changes)

    def test_moved_or_restatused_entries_made_again(self):
        """The first message gains a Status header (mutt): its entry and the later ones'
        (moved) are new, with the new offsets; UIDs and flags as the parse says."""
        data = FILE.replace(b"Subject: one\n", b"Subject: one\nStatus: RO\n")
        new, changes = ix.reconcile(self.old, self.parse(data, 0, len(data)),
                                    ix.Stamp(len(data), 2, 3), 0)
        fresh = [ix.entry_from(p, o.uid, n.flags, o.date, o.tz, n.modseq, o.saved)
                 for p, o, n in zip(self.parse(data, 0, len(data)), self.old.entries,
                                    new.entries, strict=True)]
        self.assertEqual(new.entries, fresh)
        self.assertEqual([e == o for e, o in zip(new.entries, self.old.entries, strict=True)],
                         [False, False, False])
        self.assertEqual((new.entries[0].flags, changes.flags), ({"\\Seen"}, {1: {"\\Seen"}}))
        self.assertEqual(new.entries[2].offset, self.old.entries[2].offset + len(b"Status: RO\n"))
