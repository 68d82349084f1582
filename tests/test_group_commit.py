"""Group commit of local deliveries: several messages for one INBOX in one lock and one fsync
(MboxStore.deliver_many), and LocalDelivery batching copies that arrive while a write is on."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import DeliveryFailed, LocalDelivery
from mailsuite.store.memory import MemoryStore
from tests.fakes import FakeAccounts
from tests.store_conformance import MSG1, MSG2
from tests.test_delivery import (
    ALIASES,
    ALICE,
    BOSS,
    HeldStore,
    inbox,
    make_config,
    write_aliases,
)
from tests.test_store_mbox import MboxTestCase


class DeliverManyTests(MboxTestCase):
    def test_closed_mailbox(self) -> None:
        """Two messages in one call land in order, each with its own From line and sender."""
        store = self.make_store()
        two = [(MSG1, "a@x.test"), (MSG2, "b@x.test")]
        self.successResultOf(store.deliver_many(self.account, two))
        with open(self.path, "rb") as f:
            text = f.read()
        self.assertEqual(text.count(b"\nFrom ") + text.startswith(b"From "), 2)
        self.assertLess(text.index(b"From a@x.test"), text.index(b"From b@x.test"))
        box = self.successResultOf(store.open(self.account))
        self.assertEqual([m.uid for m in box.messages], [1, 2])
        self.assertIn(b"Subject: two\n\nbody two\n",
                      self.successResultOf(defer.maybeDeferred(box.read, 2)))

    def test_open_mailbox_sees_new_uids(self) -> None:
        """With the INBOX open, the batch gets consecutive UIDs and listeners hear of both."""
        store = self.make_store()
        box = self.successResultOf(store.open(self.account))
        heard: list[Any] = []
        box.add_listener(heard.append)
        two = [(MSG1, "a@x.test"), (MSG2, "b@x.test")]
        self.successResultOf(store.deliver_many(self.account, two))
        self.assertEqual([m.uid for m in box.messages], [1, 2])
        self.assertEqual([m.uid for m in heard[0].added], [1, 2])
        self.assertEqual(box.uid_next, 3)


class DeliveryBatchingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = HeldStore()
        self.maillog = MailLog(None, "mail.example.com")
        self.delivery = LocalDelivery(make_config(write_aliases(self, ALIASES)),
                                      FakeAccounts(BOSS, ALICE), self.store, self.maillog,
                                      threads.InPool(reactor))

    def deliver(self, n: int, account: Any = BOSS) -> defer.Deferred[None]:
        return self.delivery.deliver(b"Subject: %d\n\nx\n" % n, "s@x.test",
                                     [(f"{account.name}@mail.example.com", account)], f"Q{n}")

    def test_copies_during_a_write_go_together(self) -> None:
        """While one write to boss's INBOX is under way, the next copies wait and then go in
        one batch; each deliver() fires only after the write holding its copy is done."""
        first = self.deliver(1)
        second, third = self.deliver(2), self.deliver(3)
        other = self.deliver(4, ALICE)
        self.assertEqual([(name.name, len(items)) for name, items, _ in self.store.pending],
                         [("boss", 1), ("alice", 1)])
        self.assertNoResult(first)
        self.store.pending[0][2].callback(None)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual([(name.name, len(items)) for name, items, _ in self.store.pending[2:]],
                         [("boss", 2)])
        self.store.pending[2][2].callback(None)
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertNoResult(other)

    def test_failed_write_fails_every_copy_in_it(self) -> None:
        """A batch that cannot be written fails each of its deliveries (none is acknowledged)."""
        first = self.deliver(1)
        second, third = self.deliver(2), self.deliver(3)
        self.store.pending[0][2].callback(None)
        self.store.pending[1][2].errback(OSError("disk full"))
        self.failureResultOf(second, DeliveryFailed)
        self.failureResultOf(third, DeliveryFailed)
        self.successResultOf(first)
        self.assertIn("status=deferred", "\n".join(self.maillog.lines))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)


class MemoryStorePathTests(unittest.TestCase):
    def test_memory_store_takes_the_group_commit_path(self) -> None:
        """LocalDelivery over the MemoryStore writes through deliver_many, the path it takes
        over the mbox store, never through a one-message shortcut."""
        store = MemoryStore()
        batches: list[tuple[str, int]] = []
        real = store.deliver_many

        def deliver_many(account: Any, items: list[tuple[bytes, str]]) -> defer.Deferred[None]:
            batches.append((account.name, len(items)))
            return real(account, items)

        self.patch(store, "deliver_many", deliver_many)
        self.patch(store, "deliver", lambda *a: self.fail("deliver() bypasses group commit"))
        delivery = LocalDelivery(make_config(write_aliases(self, ALIASES)),
                                 FakeAccounts(BOSS, ALICE), store, MailLog(None, "mx.test"),
                                 threads.inline)
        self.successResultOf(delivery.deliver(
            b"Subject: x\n\nx\n", "s@x.test",
            [("boss@mail.example.com", BOSS), ("alice@mail.example.com", ALICE)], "Q1"))
        self.assertEqual(sorted(batches), [("alice", 1), ("boss", 1)])
        self.assertEqual([len(inbox(store, a)) for a in (BOSS, ALICE)], [1, 1])
