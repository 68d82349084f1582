"""mailsuite.store.matching: the old entries a fresh parse is matched against."""

from __future__ import annotations

from twisted.trial import unittest

from mailsuite.store import index as ix
from mailsuite.store.matching import Candidates


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
