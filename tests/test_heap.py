"""mailsuite.heap: free heap given back after a big transient, glibc only."""

from __future__ import annotations

import os

from twisted.trial import unittest

from mailsuite import heap


class ReleaseTests(unittest.TestCase):
    def test_only_after_big_transients(self):
        calls: list[int] = []
        self.patch(heap, "_trim", lambda pad: calls.append(pad) or 1)
        self.assertFalse(heap.release(heap.BIG - 1))
        self.assertTrue(heap.release(heap.BIG))
        self.assertEqual(calls, [0])

    def test_no_op_without_glibc(self):
        self.patch(heap, "_trim", None)
        self.assertFalse(heap.release(10 * heap.BIG))

    def test_found_on_glibc(self):
        try:
            glibc = os.confstr("CS_GNU_LIBC_VERSION")
        except (ValueError, OSError):
            glibc = None
        if not glibc:
            raise unittest.SkipTest("not glibc")
        self.assertIsNotNone(heap._load())
        self.assertTrue(heap.release())  # the real malloc_trim(0)
