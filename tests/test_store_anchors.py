"""The anchors (spool and home directories) the mbox store holds open between operations
(safepath.AnchorCache): a delivery costs fewer system calls, and the path-safety rules of issue 9
still hold at every operation (the anchor looked up by its path again, its owner checked)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.store import safepath
from mailsuite.store.interfaces import StoreRefused
from mailsuite.store.safepath import AnchorCache, MissingAnchor, Place
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase

ALICE = 2501
ROOT_ONLY = None if os.geteuid() == 0 else "needs root (a directory owned by another uid)"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Counting:
    """Counts calls of some ``os`` functions (and the paths ``os.open``/``os.stat`` got)."""

    def __init__(self, case: unittest.TestCase, names: tuple[str, ...]) -> None:
        self.calls: Counter[str] = Counter()
        self.paths: list[tuple[str, str]] = []
        for name in names:
            case.patch(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kw: Any) -> Any:
            self.calls[name] += 1
            if name in ("open", "stat") and isinstance(args[0], str):
                self.paths.append((name, args[0]))
            return real(*args, **kw)

        return counted


class DeliveryCostTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_spool_directory_not_opened_again(self):
        """A delivery to an INBOX the store delivered to before opens only the dotlock (an
        O_TMPFILE in the spool directory, linked in as boss.lock) and the mailbox: the spool
        directory is held (one stat by path checks it), and the dotlock's
        bookkeeping takes the directory's identity from the walk (no fstat of it on taking
        and releasing the lock); the mailbox is fstat'ed once at its open and once under the
        locks (that one also gives the size to append at)."""
        store = self.make_store()
        yield store.deliver_many(self.account, [(MSG1, "a@example.test")])
        count = Counting(self, ("open", "fstat", "stat", "close"))
        yield store.deliver_many(self.account, [(MSG2, "a@example.test")])
        self.assertEqual(count.paths, [("stat", os.path.abspath(self.spool)),
                                       ("open", "."), ("open", "boss")])
        self.assertEqual(dict(count.calls), {"open": 2, "fstat": 2, "stat": 1, "close": 2})
        self.assertEqual(read(self.path).count(b"\nFrom "), 1)


class HeldAnchorTests(MboxTestCase):
    """The spool directory replaced, removed or given away between two deliveries."""

    def setUp(self) -> None:
        super().setUp()
        self.spool = os.path.abspath(self.spool)
        self.path = os.path.join(self.spool, "boss")

    @defer.inlineCallbacks
    def test_replaced_directory_is_followed(self):
        """A new spool directory in place of the held one gets the next message; the old one
        (held open until then) is not written again."""
        store = self.make_store()
        yield store.deliver_many(self.account, [(MSG1, "a@example.test")])
        os.rename(self.spool, self.spool + ".old")
        os.mkdir(self.spool)
        yield store.deliver_many(self.account, [(MSG2, "a@example.test")])
        self.assertIn(b"Subject: two", read(self.path))
        self.assertNotIn(b"Subject: two", read(self.spool + ".old/boss"))
        self.assertNotIn(b"Subject: one", read(self.path))

    @defer.inlineCallbacks
    def test_removed_directory(self):
        """A spool directory removed after a delivery is missing at the next one (refused, not
        written through the descriptor held)."""
        store = self.make_store()
        yield store.deliver_many(self.account, [(MSG1, "a@example.test")])
        os.rename(self.spool, self.spool + ".old")
        yield self.assertFailure(
            store.deliver_many(self.account, [(MSG2, "a@example.test")]), MissingAnchor)
        self.assertNotIn(b"Subject: two", read(self.spool + ".old/boss"))

    @defer.inlineCallbacks
    def test_directory_given_to_another_user(self):
        """A spool directory that another user owns now is refused although it is the very
        directory held (its owner is checked at every operation)."""
        if ROOT_ONLY:
            raise unittest.SkipTest(ROOT_ONLY)
        store = self.make_store()
        yield store.deliver_many(self.account, [(MSG1, "a@example.test")])
        os.chown(self.spool, ALICE, ALICE)
        e = yield self.assertFailure(
            store.deliver_many(self.account, [(MSG2, "a@example.test")]), StoreRefused)
        self.assertIn(f"owned by uid {ALICE}", str(e))
        self.assertNotIn(b"Subject: two", read(self.path))


class AnchorCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dirs = []
        for _ in range(2):
            path = os.path.abspath(self.mktemp())
            os.makedirs(os.path.join(path, "sub"))
            self.dirs.append(path)
        self.cache = AnchorCache(size=1)
        self.addCleanup(self.cache.close)

    def place(self, path: str) -> Place:
        return Place(path, (), os.getuid(), os.getgid(), self.cache)

    def fd_open(self, fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    def test_lent_descriptor_outlives_eviction(self):
        """An anchor evicted (or replaced) while a Dir lends it stays open until that Dir is
        closed, then is closed; one not lent is closed at once."""
        first = safepath.open_anchor(self.place(self.dirs[0]))
        fd = first.fd
        with safepath.open_anchor(self.place(self.dirs[1])) as second:
            self.assertNotEqual(second.fd, fd)
            self.assertTrue(self.fd_open(fd))  # evicted, still lent
            self.assertEqual(first.names(), ["sub"])
        first.close()
        self.assertFalse(self.fd_open(fd))
        first.close()  # twice: nothing more

    def test_same_directory_lent_again(self):
        """The same anchor is lent from the one descriptor while its path names it; listing a
        lent directory does not move the shared descriptor (each list is whole)."""
        one = safepath.open_anchor(self.place(self.dirs[0]))
        two = safepath.open_anchor(self.place(self.dirs[0]))
        self.assertEqual(one.fd, two.fd)
        self.assertEqual((one.names(), two.names(), one.names()), (["sub"], ["sub"], ["sub"]))
        self.assertEqual(os.listdir(one.fd), ["sub"])
        with safepath.open_dir(self.place(self.dirs[0]).child("sub")) as sub:
            self.assertEqual(sub.names(), [])
        fd = one.fd
        one.close()
        two.close()
        self.assertTrue(self.fd_open(fd))  # kept for the next operation
