"""Hibernation of IDLE sessions (imap/hibernate.py): the snapshot of what a client was told,
checked when it comes back, and a view that takes it up and owes the client what changed."""

from __future__ import annotations

import contextlib
import json
import os
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.imap import hibernate
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.recent import RecentTracker
from tests.store_conformance import MSG1
from mailsuite.store.entrytable import EntryTable
from tests.test_store_mbox import MboxTestCase


class RangeTests(unittest.TestCase):
    # (sets of up to 300 numbers: drawing them took over a second on a loaded machine once)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(st.sets(st.integers(1, 5000), max_size=300))
    def test_round_trip(self, uids: set[int]) -> None:
        ordered = sorted(uids)
        self.assertEqual(hibernate.parse_ranges(hibernate.uid_ranges(ordered)), ordered)

    def test_compact(self) -> None:
        self.assertEqual(hibernate.uid_ranges([1, 2, 3, 7, 9, 10]), "1:3,7,9:10")

    def test_refused(self) -> None:
        for bad in ("3,2", "1:3,2", "a", "0", "5:2", "1:99999999", 7):
            with self.assertRaises(hibernate.BadState, msg=repr(bad)):
                hibernate.parse_ranges(bad)  # type: ignore[arg-type]


def state(**fields: object) -> bytes:
    base: dict[str, object] = {"v": 1, "tag": "a1", "in": 10, "out": 20, "box": "INBOX",
                               "ro": False, "uv": 7, "next": 4, "uids": "1:3", "recent": "3",
                               "flags": [[["\\Seen"], "1:2"]], "keywords": []}
    base.update(fields)
    return json.dumps(base).encode()


class DecodeTests(unittest.TestCase):
    def test_good(self) -> None:
        got = hibernate.decode(state())
        self.assertEqual(got["tag"], b"a1")
        self.assertEqual(got["told"], [(1, frozenset({"\\Seen"})), (2, frozenset({"\\Seen"})),
                                       (3, frozenset())])
        self.assertEqual(got["recent"], {3})

    def test_no_mailbox(self) -> None:
        self.assertIsNone(hibernate.decode(state(box=None))["box"])

    def test_bad_states_are_refused(self) -> None:
        """It comes back from the network process: anything not of ours is refused."""
        bad = [b"", b"[]", b"{", state(v=2), state(tag=""), state(tag="a b"), state(tag=5),
               state(**{"in": -1}), state(box=""), state(box="a\x00b"), state(uv="7"),
               state(ro=1), state(next=0), state(uids="2,1"), state(flags=[[["\\Seen"], "9"]]),
               state(flags=[[["\\Seen"], "1"], [["x"], "1"]]), state(flags="x"),
               state(recent="9"), state(keywords=["x" * 300]), b"x" * (hibernate.MAX_STATE + 1)]
        for data in bad:
            with self.assertRaises(hibernate.BadState, msg=data[:80]):
                hibernate.decode(data)

    @given(st.binary(max_size=300))
    def test_no_other_exception(self, data: bytes) -> None:
        with contextlib.suppress(hibernate.BadState):
            hibernate.decode(data)


class ResumeTests(MboxTestCase):
    """A view made from a snapshot owes the client exactly what changed since."""

    @defer.inlineCallbacks
    def test_changes_since_the_snapshot(self):  # type: ignore[no-untyped-def]
        store = self.make_store()
        for _ in range(3):
            yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        tracker = RecentTracker()
        a = ImapMailboxView(box, False, self.account, store, tracker)
        uids = a.uids()
        yield a.change_flags([uids[0]], add=frozenset({"\\Seen"}))
        session = SimpleNamespace(_idle_tag=b"t7", _bytes_in=5, _bytes_out=9, view=a)
        snap = hibernate.decode(hibernate.snapshot(session))
        a.close()
        # meanwhile, another session: 2 expunged, 3 flagged, one more delivered
        box = yield store.open(self.account)
        other = ImapMailboxView(box, False, self.account, store, tracker)
        yield other.change_flags([uids[2]], add=frozenset({"\\Flagged"}))
        yield other.expunge([uids[1]])
        other.close()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        fresh = RecentTracker()  # the thawed session's process (its agent was gone)
        fresh.start_at(store, self.account, box, snap["next"])
        thawed = ImapMailboxView(box, False, self.account, store, fresh)
        thawed.resume(snap["told"], snap["recent"], snap["keywords"])
        self.assertEqual(thawed.count(), 3)  # what the client knows, until it is told
        lines = thawed.take_updates()
        self.assertEqual(lines[0], b"2 EXPUNGE")
        self.assertIn(b"3 EXISTS", lines)
        self.assertIn(b"1 RECENT", lines)  # the one delivered while it slept
        self.assertIn(b"2 FETCH (FLAGS (\\Flagged))", lines)  # the old 3 is 2 now
        self.assertEqual(thawed.uids(), [uids[0], uids[2], uids[2] + 1])
        self.assertEqual(thawed.take_updates(), [])
        thawed.close()

    @defer.inlineCallbacks
    def test_nothing_changed(self):  # type: ignore[no-untyped-def]
        store = self.make_store()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        a = ImapMailboxView(box, True, self.account, store, RecentTracker())
        snap = hibernate.decode(hibernate.snapshot(
            SimpleNamespace(_idle_tag=b"x", _bytes_in=0, _bytes_out=0, view=a)))
        self.assertTrue(snap["ro"])
        b = ImapMailboxView(box, True, self.account, store, RecentTracker())
        b.resume(snap["told"], snap["recent"], snap["keywords"])
        self.assertEqual(b.take_updates(), [])
        a.close()
        b.close()


    @defer.inlineCallbacks
    def test_flags_and_new_mail_only(self):  # type: ignore[no-untyped-def]
        """Nothing expunged meanwhile: the thawed view keeps the store's table of entries as
        its rows (no entry made of each) and owes the flag change and the new message."""
        box = yield self.open_with(MSG1, MSG1, MSG1)
        store = self.store
        a = ImapMailboxView(box, False, self.account, store, RecentTracker())
        uids = a.uids()
        snap = hibernate.decode(hibernate.snapshot(
            SimpleNamespace(_idle_tag=b"x", _bytes_in=0, _bytes_out=0, view=a)))
        yield a.change_flags([uids[1]], add=frozenset({"\\Answered"}))
        a.close()
        yield store.deliver(self.account, MSG1, "a@example.test")
        box = yield store.open(self.account)
        yield box.refresh()
        thawed = ImapMailboxView(box, False, self.account, store, RecentTracker())
        thawed.resume(snap["told"], snap["recent"], snap["keywords"])
        self.assertIs(thawed._base, box.messages)
        self.assertEqual(thawed.count(), 3)
        self.assertEqual(thawed.info(uids[1]).flags, frozenset())  # as its client knows it
        lines = thawed.take_updates()
        self.assertIn(b"2 FETCH (FLAGS (\\Answered))", lines)
        self.assertIn(b"4 EXISTS", lines)
        self.assertEqual(thawed.uids(), [*uids, uids[2] + 1])
        self.assertEqual(thawed.info(uids[1]).flags, frozenset({"\\Answered"}))
        thawed.close()


class DropTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_rows_dropped_from_a_table_stay_a_table(self):  # type: ignore[no-untyped-def]
        """A view that cannot take the store's rows after EXPUNGEs keeps its own: a copy of
        the store's table without those rows, then its tail."""
        box = yield self.open_with(MSG1, MSG1, MSG1, MSG1)
        view = ImapMailboxView(box, False, self.account, self.store, RecentTracker())
        uids = view.uids()
        view._drop([0, 2])
        self.assertIsInstance(view._base, EntryTable)
        self.assertEqual(view.uids(), [uids[1], uids[3]])
        self.assertEqual([view.info(u).uid for u in view.uids()], [uids[1], uids[3]])
        self.assertEqual(len(box.messages), 4)  # the store's own as it was
        view.close()


class WatchTests(unittest.TestCase):
    def test_a_write_is_seen(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        fd = hibernate.watch([(path, False)])
        try:
            with self.assertRaises(BlockingIOError):
                os.read(fd, 4096)
            with open(path, "a") as f:
                f.write("y")
            self.assertTrue(os.read(fd, 4096))
        finally:
            os.close(fd)

    def test_missing_file(self) -> None:
        with self.assertRaises(OSError):
            hibernate.watch([(self.mktemp(), False)])
