"""Mod-sequences in the store (RFC 7162): kept in the index and its journal, across restarts,
for changes made here, by POP3, and by other programs writing the mbox."""

from __future__ import annotations

import os
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store import modseq as ms
from mailsuite.store.memory import MemoryStore
from tests.store_conformance import MSG1, MSG2
from tests.test_store_mbox import MboxTestCase


def modseqs(box):
    return {m.uid: m.modseq for m in box.messages}


class VanishedTests(unittest.TestCase):
    def test_ranges_and_since(self):
        v = ms.EMPTY.add([3, 4, 5, 9], 10).add([6], 10).add([7], 12)
        self.assertEqual(v.ranges, ((3, 5, 10), (9, 9, 10), (6, 6, 10), (7, 7, 12)))
        self.assertEqual(v.since(9), [3, 4, 5, 6, 7, 9])
        self.assertEqual(v.since(10), [7])
        self.assertEqual(v.since(12), [])
        self.assertEqual(ms.Vanished.parse(v.line()), v)

    def test_bounded_with_floor(self):
        self.patch(ms, "LIMIT", 3)
        v = ms.EMPTY
        for m in range(1, 6):
            v = v.add([m * 10], m + 1)  # UIDs 10..50 at modseqs 2..6
        self.assertEqual(len(v.ranges), 3)
        self.assertEqual(v.floor, 3)
        self.assertIsNone(v.since(2))  # forgotten: the caller must assume anything went
        self.assertEqual(v.since(3), [30, 40, 50])


class MboxModseqTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_every_change_bumps_and_survives_restart(self):
        box = yield self.open_with(MSG1, MSG2)
        start = box.highest_modseq
        first, second = (m.uid for m in box.messages)
        self.assertEqual(set(modseqs(box).values()), {start})
        yield box.change_flags([first], add=frozenset({"\\Seen"}))
        self.assertEqual(box.highest_modseq, start + 1)
        self.assertEqual(modseqs(box), {first: start + 1, second: start})
        yield box.change_flags([first], add=frozenset({"\\Seen"}))  # no change: no bump
        self.assertEqual(box.highest_modseq, start + 1)
        uid = yield box.append(MSG1 + b"3\n")
        self.assertEqual(modseqs(box)[uid], start + 2)
        yield box.expunge([second])
        self.assertEqual(box.highest_modseq, start + 3)
        self.assertEqual(box.vanished.since(start + 2), [second])
        yield self.store.settle()
        box.close()
        box = yield self.make_store().open(self.account)  # a restart
        self.assertEqual(box.highest_modseq, start + 3)
        self.assertEqual(modseqs(box), {first: start + 1, uid: start + 2})
        self.assertEqual(box.vanished.since(start), [second])
        box.close()

    @defer.inlineCallbacks
    def test_external_writers_get_new_modseqs(self):
        box = yield self.open_with(MSG1, MSG2)
        start = box.highest_modseq
        self.external_append(MSG1 + b"by postfix\n")
        yield box.refresh()
        new = box.messages[-1]
        self.assertEqual((new.modseq, box.highest_modseq), (start + 1, start + 1))
        data = self.read_file().replace(b"Subject: one\n", b"Subject: one\nStatus: RO\n", 1)
        os.unlink(self.path)
        self.write(data)  # mutt: a new file, the first message read
        yield box.refresh()
        self.assertEqual(box.highest_modseq, start + 2)
        self.assertEqual(box.messages[0].modseq, start + 2)
        self.assertEqual(box.messages[1].modseq, start)
        box.close()
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.highest_modseq, start + 2)
        box.close()

    @defer.inlineCallbacks
    def test_mail_found_by_an_expunge_raises_highestmodseq(self):
        """Mail another program appended, found by an EXPUNGE's own refresh (its compaction
        reads the file under its lock) rather than by a refresh before it: HIGHESTMODSEQ
        covers its mod-sequence, before and after a restart (it stayed below: QRESYNC
        reported the message as changed again, and the next change got the same number)."""
        box = yield self.open_with(MSG1, MSG2)
        start = box.highest_modseq
        second = box.messages[1].uid
        yield box.change_flags([second], add=frozenset({"\\Deleted"}))
        self.external_append(MSG1 + b"by postfix\n")  # no refresh: the expunge finds it
        yield box.expunge([second])
        yield self.store.settle()
        new = box.messages[-1]
        self.assertGreater(new.modseq, start + 1)
        self.assertEqual(box.highest_modseq, max(m.modseq for m in box.messages))
        self.assertGreaterEqual(box.highest_modseq, max(r[2] for r in box.vanished.ranges))
        yield box.change_flags([new.uid], add=frozenset({"\\Seen"}))
        self.assertEqual(box.messages[-1].modseq, box.highest_modseq)
        self.assertGreater(box.highest_modseq, new.modseq)  # a number of its own
        highest, kept = box.highest_modseq, modseqs(box)
        box.close()
        box = yield self.make_store().open(self.account)  # a restart: the same numbers
        self.assertEqual((box.highest_modseq, modseqs(box)), (highest, kept))
        box.close()

    @defer.inlineCallbacks
    def test_external_deletion_is_remembered(self):
        box = yield self.open_with(MSG1, MSG2)
        start = box.highest_modseq
        second = box.messages[1].uid
        data = self.read_file()
        self.write(data[: data.index(b"From a@example.test", 10)], "wb")
        yield box.refresh()
        self.assertEqual(box.highest_modseq, start + 1)
        self.assertEqual(box.vanished.since(start), [second])
        box.close()

    @defer.inlineCallbacks
    def test_old_index_is_upgraded(self):
        """A version 2 index (no mod-sequences) is read with every message at 1 and written
        whole, in version 3, at its first change; its journal is taken in first."""
        box = yield self.open_with(MSG1, MSG2)
        first = box.messages[0].uid
        yield box.set_flags({first: frozenset({"Kw"})})
        box.close()
        with open(self.index_path, "rb") as f:
            lines = f.read().split(b"\n")
        old = [b"mailsuite-mbox-index 2"]
        head = lines[1].split()
        old.append(b" ".join(head[:5] + head[6:]))
        for line in lines[2:-1]:
            w = line.split(b" ")
            old.append(b" ".join(w[:9] + w[10:]))
        with open(self.index_path, "wb") as f:
            f.write(b"\n".join(old) + b"\n")
        with open(self.index_path + ".log", "rb") as f:
            log = f.read()
        with open(self.index_path + ".log", "wb") as f:
            f.write(b"".join(line + b"\n" for line in log.split(b"\n")[:2]))  # F, not M
        box = yield self.make_store().open(self.account)
        self.assertEqual(box.highest_modseq, 1)
        self.assertEqual(set(modseqs(box).values()), {1})
        self.assertEqual(box.messages[0].flags, {"Kw"})
        yield box.set_flags({first: frozenset({"\\Seen"})})
        self.assertEqual(box.highest_modseq, 2)
        with open(self.index_path, "rb") as f:
            self.assertTrue(f.read().startswith(ix.MAGIC + b"\n"))
        self.assertFalse(os.path.exists(self.index_path + ".log"))
        box.close()
        box = yield self.make_store().open(self.account)
        self.assertEqual(modseqs(box)[first], 2)
        self.assertEqual(box.messages[0].flags, {"\\Seen"})
        box.close()

    @defer.inlineCallbacks
    def test_missing_index_is_rebuilt(self):
        box = yield self.open_with(MSG1)
        validity = box.uid_validity
        box.close()
        os.unlink(self.index_path)
        box = yield self.make_store().open(self.account)
        self.assertNotEqual(box.uid_validity, validity)
        self.assertGreaterEqual(box.messages[0].modseq, 1)
        self.assertEqual(box.highest_modseq, box.messages[0].modseq)
        box.close()


class MemoryModseqTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_changes_bump(self):
        store = MemoryStore()
        account = Account("boss", 1000, 1000, "/home/boss")
        yield store.deliver(account, MSG1, "a@example.test")
        box = yield store.open(account)
        uid = yield box.append(MSG2)
        start = box.highest_modseq
        self.assertEqual(modseqs(box)[uid], start)
        yield box.change_flags([uid], add=frozenset({"\\Seen"}))
        self.assertEqual((box.highest_modseq, modseqs(box)[uid]), (start + 1, start + 1))
        yield box.expunge([uid])
        self.assertEqual(box.highest_modseq, start + 2)
        self.assertEqual(box.vanished.since(start + 1), [uid])
        box.close()


_STEP = st.one_of(
    st.tuples(st.just("flag"), st.integers(0, 9), st.sampled_from(["\\Seen", "\\Flagged", "Kw"]),
              st.booleans()),
    st.tuples(st.just("expunge"), st.integers(0, 9)),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("external")),  # Postfix local(8) appends
    st.tuples(st.just("mutt"), st.integers(0, 9)),  # another program marks one read
    st.tuples(st.just("refresh")),
    st.tuples(st.just("restart")),
)


class ModseqInvariantTests(MboxTestCase):
    """Whatever happens, in any order (changes here, deliveries, Postfix appending, mutt
    rewriting a message's status, expunges and their compactions, restarts): HIGHESTMODSEQ is
    at least every message's and every expunge's mod-sequence, never goes down, a message's
    never goes down, and a restart finds the same numbers. (``_refreshed`` once broke the
    first of these.)"""

    def check(self, box: Any, seen: dict[str, Any]) -> None:
        highest = box.highest_modseq
        numbers = modseqs(box)
        self.assertGreaterEqual(highest, max(numbers.values(), default=0))
        self.assertGreaterEqual(highest, max((r[2] for r in box.vanished.ranges), default=0))
        self.assertGreaterEqual(highest, seen["highest"])
        for uid, modseq in numbers.items():
            self.assertGreaterEqual(modseq, seen["modseqs"].get(uid, 0), uid)
        seen["highest"], seen["modseqs"] = highest, numbers

    def step(self, box: Any, step: tuple[Any, ...], n: int) -> Any:
        uids = [m.uid for m in box.messages]
        kind = step[0]
        if kind == "flag" and uids:
            _, i, flag, add = step
            change = {"add" if add else "remove": frozenset({flag})}
            self.successResultOf(box.change_flags([uids[i % len(uids)]], **change))
        elif kind == "expunge" and uids:
            self.successResultOf(box.expunge([uids[step[1] % len(uids)]]))
        elif kind == "deliver":
            self.successResultOf(self.store.deliver(self.account, MSG1 + b"%d\n" % n, "a@b"))
        elif kind == "external":
            self.external_append(MSG2 + b"by postfix %d\n" % n)
        elif kind == "mutt" and uids:
            data = self.read_file()
            starts = [m.start() for m in re.finditer(rb"(?m)^From ", data)]
            at = data.index(b"\n", starts[step[1] % len(starts)]) + 1
            os.unlink(self.path)
            self.write(data[:at] + b"Status: RO\n" + data[at:], "wb")  # a new file, as mutt
        elif kind == "refresh":
            self.successResultOf(box.refresh())
        elif kind == "restart":
            self.successResultOf(self.store.settle())
            box.close()
            self.make_store()
            box = self.successResultOf(self.store.open(self.account))
        return box

    @given(st.lists(_STEP, min_size=1, max_size=12))
    @settings(max_examples=150, deadline=None)
    def test_invariants(self, steps: list[tuple[Any, ...]]) -> None:
        self.use_root(self.mktemp())  # (each example its own)
        box = self.successResultOf(self.open_with(MSG1, MSG2))
        seen: dict[str, Any] = {"highest": 0, "modseqs": {}}
        self.check(box, seen)
        for n, step in enumerate(steps):
            self.clock[0] += 1
            box = self.step(box, step, n)  # (no refresh between: a command may find the change)
            self.check(box, seen)
        self.successResultOf(box.refresh())  # (what another program did last, found)
        self.check(box, seen)
        self.successResultOf(self.store.settle())
        before = (box.highest_modseq, modseqs(box))
        box.close()
        self.make_store()
        box = self.successResultOf(self.store.open(self.account))
        self.assertEqual((box.highest_modseq, modseqs(box)), before)
        box.close()
