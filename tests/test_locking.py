"""Mailbox locking: dotlock + fcntl, bounded waits, stale locks, never waiting while holding one."""

from __future__ import annotations

import os
import time

from twisted.trial import unittest

from mailsuite.store.interfaces import StoreError
from mailsuite.store.locking import (
    LockTimeout,
    fcntl_unlock,
    locked_mailbox,
    release_dotlock,
    try_dotlock,
    try_fcntl_lock,
)


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class LockingTests(unittest.TestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "boss")
        with open(self.path, "wb"):
            pass
        self.time = FakeTime()

    def opener(self):
        return os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)

    def lock(self, **kw):
        kw.setdefault("timeout", 1.0)
        return locked_mailbox(
            self.path, self.opener, clock=self.time.clock, sleep=self.time.sleep, **kw
        )

    def test_both_locks_taken_and_released(self):
        """Inside the block the dotlock exists and the fcntl lock is held; after it, neither."""
        with self.lock() as held:
            self.assertTrue(os.path.exists(self.path + ".lock"))
            other = self.opener()
            self.addCleanup(os.close, other)
            self.assertFalse(try_fcntl_lock(other))
            self.assertEqual(os.fstat(held.fd).st_ino, os.stat(self.path).st_ino)
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertTrue(try_fcntl_lock(other))
        fcntl_unlock(other)

    def test_released_on_error(self):
        """An exception inside the block still releases both locks."""
        with self.assertRaises(RuntimeError), self.lock():
            raise RuntimeError("boom")
        self.assertFalse(os.path.exists(self.path + ".lock"))
        fd = self.opener()
        self.addCleanup(os.close, fd)
        self.assertTrue(try_fcntl_lock(fd))

    def test_dotlock_busy_times_out(self):
        """A fresh dotlock of another program: back off, then LockTimeout (a StoreError)."""
        self.assertTrue(try_dotlock(self.path + ".lock", 300))
        with self.assertRaises(LockTimeout) as e, self.lock():
            self.fail("got the lock")
        self.assertIsInstance(e.exception, StoreError)
        self.assertTrue(os.path.exists(self.path + ".lock"))
        self.assertGreater(len(self.time.sleeps), 3)
        self.assertLessEqual(max(self.time.sleeps), 0.5)

    def test_no_dotlock_held_while_waiting_for_fcntl(self):
        """While the fcntl lock is busy (mutt takes fcntl first), our dotlock is given back
        before every wait, so a program holding fcntl and waiting for the dotlock proceeds."""
        other = self.opener()
        self.addCleanup(os.close, other)
        self.assertTrue(try_fcntl_lock(other))
        seen = []
        sleep = self.time.sleep

        def watching_sleep(seconds):
            seen.append(os.path.exists(self.path + ".lock"))
            if len(seen) == 3:
                fcntl_unlock(other)  # the other program finishes
            sleep(seconds)

        with locked_mailbox(
            self.path, self.opener, timeout=10, clock=self.time.clock, sleep=watching_sleep
        ):
            pass
        self.assertEqual(seen, [False, False, False])

    def test_stale_dotlock_broken(self):
        """A dotlock whose mtime is older than stale_after is removed and the lock taken."""
        self.assertTrue(try_dotlock(self.path + ".lock", 300))
        old = time.time() - 301
        os.utime(self.path + ".lock", (old, old))
        with self.lock(stale_after=300):
            pass
        self.assertEqual(self.time.sleeps, [])

    def test_fresh_dotlock_kept(self):
        """try_dotlock does not break a lock younger than stale_after."""
        self.assertTrue(try_dotlock(self.path + ".lock", 300))
        self.assertFalse(try_dotlock(self.path + ".lock", 300))
        release_dotlock(self.path + ".lock")
        self.assertTrue(try_dotlock(self.path + ".lock", 300))

    def test_dotlock_error_is_store_error(self):
        """A dotlock that cannot be created (no such directory, no permission) is a StoreError."""
        with self.assertRaises(StoreError):
            try_dotlock(os.path.join(self.dir, "missing", "boss.lock"), 300)

    def test_replaced_file_reopened(self):
        """If the file was replaced between open and lock, the new file is opened and locked."""
        calls = []

        def opener():
            fd = self.opener()
            if not calls:
                with open(self.path + ".new", "wb") as f:
                    f.write(b"new")
                os.rename(self.path + ".new", self.path)
            calls.append(fd)
            return fd

        with locked_mailbox(
            self.path, opener, clock=self.time.clock, sleep=self.time.sleep
        ) as held:
            self.assertEqual(os.pread(held.fd, 3, 0), b"new")
        self.assertEqual(len(calls), 2)

    def test_missing_file_only_dotlock(self):
        """An opener that finds no file gets the dotlock alone (fd None)."""
        with locked_mailbox(self.path, lambda: None, clock=self.time.clock) as held:
            self.assertIsNone(held.fd)
            self.assertTrue(os.path.exists(self.path + ".lock"))
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_touch_keeps_dotlock_fresh(self):
        """HeldLock.touch renews the dotlock's mtime during long work."""
        with self.lock() as held:
            old = time.time() - 200
            os.utime(self.path + ".lock", (old, old))
            held.touch()
            self.assertGreater(os.stat(self.path + ".lock").st_mtime, old + 100)

    def test_fcntl_lock_conflicts_across_descriptors(self):
        """Two opens of the file exclude each other, even in one process (OFD locks), and a read
        lock excludes a write lock."""
        a, b = self.opener(), self.opener()
        self.addCleanup(os.close, a)
        self.addCleanup(os.close, b)
        self.assertTrue(try_fcntl_lock(a, exclusive=False))
        self.assertFalse(try_fcntl_lock(b))
        self.assertTrue(try_fcntl_lock(b, exclusive=False))
        fcntl_unlock(a)
        fcntl_unlock(b)
        self.assertTrue(try_fcntl_lock(b))

    def test_conflicts_with_classic_posix_lock_of_another_process(self):
        """Our lock conflicts with the classic fcntl lock Postfix and mutt take."""
        import subprocess
        import sys

        code = (
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code, self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.addCleanup(child.wait)
        self.addCleanup(child.stdin.close)
        self.assertEqual(child.stdout.readline(), b"locked\n")
        fd = self.opener()
        self.addCleanup(os.close, fd)
        self.assertFalse(try_fcntl_lock(fd))
        self.assertFalse(try_fcntl_lock(fd, exclusive=False))
