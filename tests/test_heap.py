"""mailsuite.heap: free heap given back after a big transient, glibc only."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

from twisted.internet import defer, task
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
        self.assertIsNotNone(heap._load("malloc_trim", ctypes.c_size_t))
        self.assertTrue(heap.release())  # the real malloc_trim(0)


_MAPPED = """
import ctypes, sys
from mailsuite import heap
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "fixed":
    assert heap.fixed_mmap_threshold()
big = bytearray(24 << 20)
del big  # a mapped block freed: glibc raises its threshold to 24 MB (unless fixed)
before = libc.mallinfo2().hblks
blocks = [bytearray(heap.MMAP_THRESHOLD + 4096) for _ in range(4)]
print(libc.mallinfo2().hblks - before)
"""


class MmapThresholdTests(unittest.TestCase):
    def mapped(self, how: str) -> int:
        """Blocks of the threshold made after a 24 MB one was freed: how many are mapped."""
        top = os.path.dirname(os.path.dirname(os.path.abspath(heap.__file__)))
        out = subprocess.run([sys.executable, "-c", _MAPPED, how], capture_output=True,
                             text=True, timeout=60, check=True,
                             env=dict(os.environ, PYTHONPATH=top))
        return int(out.stdout)

    def test_big_blocks_stay_mapped(self):
        """With the threshold fixed, a big block freed does not make later ones come from
        the heap (where what they leave free stays in the process)."""
        if heap._mallopt is None:
            raise unittest.SkipTest("not glibc")
        self.assertEqual(self.mapped("dynamic"), 0)  # glibc's default: from the heap
        self.assertEqual(self.mapped("fixed"), 4)

    def test_no_op_without_glibc(self):
        self.patch(heap, "_mallopt", None)
        self.assertFalse(heap.fixed_mmap_threshold())


class QuietTests(unittest.TestCase):
    def test_given_back_once_quiet(self):
        """After big commands the trim waits for QUIET seconds without another (a busy
        client's commands never wait on it), runs once in a thread, and not for small ones."""
        trims: list[int] = []
        self.patch(heap, "_trim", lambda pad: trims.append(pad) or 1)
        clock = task.Clock()

        def run(f, *args):
            return defer.maybeDeferred(f, *args)

        heap.release_when_quiet(clock, heap.BIG - 1, run)
        clock.advance(2 * heap.QUIET)
        self.assertEqual(trims, [])
        heap.release_when_quiet(clock, heap.BIG, run)
        for _ in range(5):  # a busy client: each big command puts it off
            clock.advance(heap.QUIET / 2)
            heap.release_when_quiet(clock, heap.BIG, run)
        self.assertEqual(trims, [])
        clock.advance(heap.QUIET)
        self.assertEqual(trims, [0])
        clock.advance(10 * heap.QUIET)
        self.assertEqual(trims, [0])

    def test_imap_session_asks_after_a_slow_command_on_a_big_mailbox(self):
        from mailsuite.imap import server
        asked: list[int] = []
        self.patch(heap, "release_when_quiet", lambda clock, n: asked.append(n))
        clock = task.Clock()
        s = server.IMAPServer.__new__(server.IMAPServer)
        s.clock, s.view = clock, None
        s._finished(None, 0.0)
        s.view = type("View", (), {"count": lambda self: 100_000})()
        clock.advance(server.SLOW_COMMAND / 2)
        s._finished(None, 0.0)
        self.assertEqual(asked, [])
        clock.advance(server.SLOW_COMMAND)
        s._finished(None, 0.0)
        self.assertEqual(asked, [100_000])

    def test_nothing_kept_once_done(self):
        self.patch(heap, "_trim", lambda pad: 1)
        clock = task.Clock()
        heap.release_when_quiet(clock, heap.BIG, lambda f, *a: defer.maybeDeferred(f, *a))
        self.assertIn(clock, heap._later)
        clock.advance(heap.QUIET)
        self.assertNotIn(clock, heap._later)
