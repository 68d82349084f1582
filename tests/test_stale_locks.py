"""What a killed server leaves behind (issue 9, items 18 and 19): dotlocks of dead processes
are broken at once and empty ones after a short age, ours are removed at start with the
rewrite files of cut-short expunges, and a local delivery deferred by a lock is retried as
soon as the lock goes (and at start), not after the queue's 5-minute back-off."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.mta.queue import Queue
from mailsuite.mta.queuefile import QueuedRecipient
from mailsuite.mta.relay import Outcome
from mailsuite.store import cleanup, locking
from mailsuite.store.interfaces import StoreError
from mailsuite.store.locking import locked_mailbox, release_dotlock, try_dotlock
from mailsuite.tap import QueueService, StoreService
from mailsuite.maillog import MailLog
from mailsuite.mta.queue import QueueSettings
from mailsuite.mta.queuefile import QueueDirectory
from tests.test_queue import MESSAGE, FakeRelay, envelope, sync
from tests.test_store_mbox import FakeMailboxConfig, MboxTestCase


def dead_pid() -> int:
    """The pid of a process that has just ended (not reused this soon)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_lock(path: str, content: bytes, age: float = 0.0) -> None:
    with open(path, "wb") as f:
        f.write(content)
    if age:
        old = time.time() - age
        os.utime(path, (old, old))


class StaleDotlockTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.lock = os.path.join(self.dir, "boss.lock")

    def test_dead_pid_broken_at_once(self) -> None:
        """A fresh dotlock naming a process that is gone (PID, or Dovecot's PID:HOST of this
        host) is broken at once, not after 300 s."""
        host = socket.gethostname().encode()
        for content in (b"%d\n" % dead_pid(), b"%d:%s" % (dead_pid(), host)):
            make_lock(self.lock, content)
            self.assertTrue(try_dotlock(self.lock, 300), content)
            release_dotlock(self.lock)

    def test_live_or_foreign_locks_kept(self) -> None:
        """A live process's lock, another host's lock and a young empty one are kept."""
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.addCleanup(live.wait)
        self.addCleanup(live.kill)
        for content in (b"%d\n" % live.pid, b"%d:elsewhere.example" % dead_pid(), b""):
            make_lock(self.lock, content)
            self.assertFalse(try_dotlock(self.lock, 300), content)

    def test_empty_lock_broken_after_a_short_age(self) -> None:
        make_lock(self.lock, b"", age=locking.NO_PID_STALE_AFTER + 1)
        self.assertTrue(try_dotlock(self.lock, 300))
        release_dotlock(self.lock)

    def test_never_empty_while_being_made(self) -> None:
        """A dotlock exists only with our pid in it: a server killed while making one leaves
        none, not an empty one (as Postfix's look: broken only after 30 s, the restarted
        server's mailbox blocked that long). The write failing stands for the kill."""
        def killed(fd: int, data: bytes) -> int:
            raise OSError(5, "the process dies here")

        real = os.write
        self.patch(locking.os, "write", killed)
        with self.assertRaises((OSError, StoreError)):
            try_dotlock(self.lock, 300)
        self.assertEqual(os.listdir(self.dir), [])
        self.patch(locking.os, "write", real)
        self.assertTrue(try_dotlock(self.lock, 300))
        with open(self.lock, "rb") as f:
            self.assertEqual(f.read(), b"%d\n" % os.getpid())
        release_dotlock(self.lock)

    def test_own_pid_not_held_is_stale(self) -> None:
        """Our pid in a lock we do not hold: a previous server with the same pid (a container
        restarted) left it. One we hold is not broken by another thread of ours."""
        make_lock(self.lock, b"%d\n" % os.getpid())
        self.assertTrue(try_dotlock(self.lock, 300))
        self.assertFalse(try_dotlock(self.lock, 300))  # now held by us
        release_dotlock(self.lock)

    def test_held_through_a_directory_fd_is_held_by_path(self) -> None:
        """The store takes its dotlocks by name in a directory it holds open (``safepath``);
        the spool clean-up and the lock watch look at them by path. A lock we hold is ours
        either way, and never taken for a stale one (two users' folders of one name are two
        locks)."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        self.assertTrue(try_dotlock("boss.lock", 300, dir_fd=fd))
        self.assertFalse(locking.stale_dotlock(self.lock, 300))
        self.assertFalse(locking.stale_dotlock("boss.lock", 300, dir_fd=fd))
        other = os.path.join(self.mktemp())
        os.makedirs(other)
        make_lock(os.path.join(other, "boss.lock"), b"%d\n" % os.getpid())
        self.assertTrue(locking.stale_dotlock(os.path.join(other, "boss.lock"), 300))
        release_dotlock("boss.lock", fd)
        make_lock(self.lock, b"%d\n" % os.getpid())
        self.assertTrue(locking.stale_dotlock(self.lock, 300))

    def test_timeout_names_the_whole_lock_path(self) -> None:
        """A mailbox locked by name in a held directory times out with the lock's whole path,
        which the queue's lock watch then looks at (a bare name would be looked up in the
        server's working directory, and the retry would never come)."""
        mbox = os.path.join(self.dir, "boss")
        open(mbox, "wb").close()
        make_lock(self.lock, b"%d\n" % os.getppid())  # a live process
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        opener = lambda: os.open("boss", os.O_RDWR, dir_fd=fd)  # noqa: E731
        ticks = iter(range(100))
        with (self.assertRaises(locking.LockTimeout) as caught,
              locked_mailbox("boss", opener, timeout=3, clock=lambda: next(ticks),
                             sleep=lambda s: None, dir_fd=fd, full_path=mbox)):
            pass
        self.assertEqual(caught.exception.lock_path, self.lock)
        self.assertIn(mbox, str(caught.exception))

    def test_waiter_does_not_wait_for_a_dead_holder(self) -> None:
        """locked_mailbox takes a mailbox whose dotlock a killed process left without sleeping."""
        mbox = os.path.join(self.dir, "boss")
        open(mbox, "wb").close()
        make_lock(mbox + ".lock", b"%d\n" % dead_pid())
        slept: list[float] = []
        opener = lambda: os.open(mbox, os.O_RDWR)  # noqa: E731
        with locked_mailbox(mbox, opener, timeout=30, sleep=slept.append):
            pass
        self.assertEqual(slept, [])


class SpoolCleanupTests(MboxTestCase):
    def test_stale_locks_and_rewrite_files_removed(self) -> None:
        """clean_spool removes dead holders' locks and rewrite leftovers; a live lock, and the
        rewrite file of a mailbox locked by a live program, stay."""
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.addCleanup(live.wait)
        self.addCleanup(live.kill)
        spool = self.spool
        make_lock(os.path.join(spool, "boss.lock"), b"%d\n" % dead_pid())
        make_lock(os.path.join(spool, "carol.lock"), b"%d\n" % live.pid)
        make_lock(os.path.join(spool, "dave.lock"), b"", age=60)
        for name in ("boss", "carol"):
            make_lock(os.path.join(spool, f".{name}.mailsuite-rewrite"), b"From x\n" * 100)
        removed = {os.path.basename(p) for p in cleanup.clean_spool(spool)}
        self.assertTrue({".boss.mailsuite-rewrite", "dave.lock"} <= removed, removed)
        self.assertEqual(sorted(os.listdir(spool)), [".carol.mailsuite-rewrite", "carol.lock"])

    @defer.inlineCallbacks
    def test_open_removes_a_folders_rewrite_leftover(self) -> None:
        """A folder's leftover (under ~/mail: not in the spool) goes when the folder is opened."""
        store = self.make_store()
        yield store.create(self.account, "Work")
        leftover = os.path.join(self.account.home, "mail", ".Work.mailsuite-rewrite")
        make_lock(leftover, b"From x\n")
        box = yield store.open(self.account, "Work")
        box.close()
        self.assertFalse(os.path.exists(leftover))

    def test_spool_directory(self) -> None:
        self.assertEqual(cleanup.spool_directory(FakeMailboxConfig(self.spool)), self.spool)

        class InHomes:
            def inbox_path(self, account: Any) -> str:
                return os.path.join(account.home, "mbox")

        self.assertIsNone(cleanup.spool_directory(InHomes()))

    def test_store_service_cleans_before_the_queue_starts(self) -> None:
        """At start the spool is cleaned first; the queue starts after it."""
        make_lock(os.path.join(self.spool, "boss.lock"), b"%d\n" % dead_pid())
        lock_seen: list[bool] = []

        def start() -> defer.Deferred[None]:
            lock_seen.append(os.path.exists(os.path.join(self.spool, "boss.lock")))
            return defer.succeed(None)

        store_service = StoreService(self.make_store(), self.spool)
        queue = SimpleNamespace(start=start, stop=lambda: None)
        store_service.startService()
        QueueService(queue, after=store_service.cleaned).startService()  # type: ignore[arg-type]
        self.assertEqual(lock_seen, [False])


class LockedLocal:
    """A local transport whose mailbox is locked by another program until ``free``."""

    def __init__(self, lock: str) -> None:
        self.lock = lock
        self.attempts = 0

    def deliver_users(self, data: bytes, env: Any, rcpts: list[QueuedRecipient]) -> Any:
        self.attempts += 1
        if os.path.exists(self.lock):
            deferred = Outcome(451, "4.3.0", "locked", "local")
            deferred.lock = self.lock  # as LocalDelivery reports a LockTimeout
            return defer.succeed([deferred] * len(rcpts))
        return defer.succeed([Outcome(250, "2.0.0", "delivered to mailbox", "local")] * len(rcpts))

    def classify(self, address: str) -> Any:
        return defer.succeed([QueuedRecipient(address)])


class RetryWhenUnlockedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dir = QueueDirectory(self.mktemp())
        self.maillog = MailLog(None, "mail.example.test", now=self.clock.seconds)
        self.lock = self.mktemp() + "-spool.lock"
        make_lock(self.lock, b"%d\n" % os.getppid())  # a live holder
        self.local = LockedLocal(self.lock)

    def queue(self) -> Queue:
        settings = QueueSettings("mail.example.test", lifetime=3600.0)
        return Queue(self.dir, self.local, FakeRelay(), self.maillog, self.clock, settings,
                     blocking=sync)

    def local_envelope(self) -> Any:
        env = envelope("x@y.test")
        env.recipients[0] = QueuedRecipient("boss@example.test", user="boss")
        return env

    def test_retried_when_the_lock_goes(self) -> None:
        """Deferred by a lock: tried again within a second of its removal, not after 300 s."""
        queue = self.queue()
        self.successResultOf(queue.start())
        self.successResultOf(queue.enqueue(self.local_envelope(), MESSAGE))
        self.clock.advance(0)
        self.assertEqual(self.local.attempts, 1)
        self.clock.advance(5)
        self.assertEqual(self.local.attempts, 1)  # still locked: not tried in a loop
        os.unlink(self.lock)
        self.clock.advance(1)
        self.assertEqual(self.local.attempts, 2)
        self.assertEqual(self.dir.ids(), [])
        queue.stop()

    def test_local_mail_tried_at_start(self) -> None:
        """A message deferred before a restart is tried at start, its back-off not waited for
        (the lock may have been the killed server's own); remote mail keeps its back-off."""
        queue = self.queue()
        self.successResultOf(queue.start())
        self.successResultOf(queue.enqueue(self.local_envelope(), MESSAGE))
        self.clock.advance(0)
        queue.stop()
        os.unlink(self.lock)
        self.clock.advance(10)
        self.successResultOf(self.queue().start())
        self.clock.advance(0)
        self.assertEqual(self.local.attempts, 2)
        self.assertEqual(self.dir.ids(), [])
