"""QRESYNC (RFC 7162 section 3.2) as transcripts: the RFC's examples with our numbers."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted.trial import unittest

from mailsuite.imap import qresync
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.store import modseq as ms
from tests.test_imap_condstore import highest
from tests.test_imap_server import ImapTestCase
from tests.test_store_mbox import MboxTestCase


class QresyncTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        for _ in range(6):
            self.deliver()
        self.s = self.session()
        self.s.login()

    def other(self):
        s = self.session()
        s.login()
        s.cmd(b"o1 SELECT INBOX")
        return s

    def cached(self) -> tuple[int, int]:
        """The client selects and caches UIDVALIDITY and HIGHESTMODSEQ (Thunderbird)."""
        self.assertEqual(self.s.cmd(b"e ENABLE QRESYNC"), b"* ENABLED QRESYNC\r\ne OK Enabled.\r\n")
        reply = self.s.cmd(b"s SELECT INBOX")
        return self.box().uid_validity, highest(reply)

    def changes(self) -> None:
        o = self.other()
        o.cmd(b"o2 STORE 2 +FLAGS (\\Flagged)")
        o.cmd(b"o3 STORE 3,5 +FLAGS (\\Deleted)")
        o.cmd(b"o4 EXPUNGE")

    def test_needs_enable(self) -> None:
        self.assertIn(b"a BAD", self.s.cmd(b"a SELECT INBOX (QRESYNC (1 1))"))
        self.s.cmd(b"e ENABLE QRESYNC")
        for bad in (b"(QRESYNC)", b"(QRESYNC (0 1))", b"(QRESYNC (1 0))", b"(QRESYNC (1 x))",
                    b"(QRESYNC (1 2 0:x))", b"(QRESYNC (1 2 1:5 (1)))"):
            self.assertIn(b"b BAD", self.s.cmd(b"b SELECT INBOX " + bad), bad)
        self.assertIn(b"c OK", self.s.cmd(b"c NOOP"))

    def test_select_resync(self) -> None:
        """RFC 7162 3.2.5.2: VANISHED (EARLIER) and the changed messages' FETCH, after CLOSED
        for the mailbox left."""
        validity, modseq = self.cached()
        self.changes()
        now = self.box().highest_modseq
        reply = self.s.cmd(b"t SELECT INBOX (QRESYNC (%d %d))" % (validity, modseq))
        lines = reply.split(b"\r\n")
        self.assertEqual(lines[0], b"* OK [CLOSED] Previous mailbox closed.")
        self.assertIn(b"* 4 EXISTS", lines)
        tail = lines[lines.index(b"* OK [HIGHESTMODSEQ %d] Highest" % now) + 1:]
        self.assertEqual(tail, [
            b"* VANISHED (EARLIER) 3,5",
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))" % (modseq + 1),
            b"t OK [READ-WRITE] Select completed.", b""])

    def test_known_uids_limit_the_report(self) -> None:
        validity, modseq = self.cached()
        self.changes()
        reply = self.s.cmd(b"t EXAMINE INBOX (QRESYNC (%d %d 4:6 (1:3 4:6)))" % (validity, modseq))
        self.assertIn(b"* VANISHED (EARLIER) 5\r\n", reply)
        self.assertNotIn(b"FETCH", reply)
        # RFC 7162 7: seq-match without known-uids (every UID known)
        reply = self.s.cmd(b"w EXAMINE INBOX (QRESYNC (%d %d (1:3 4:6)))" % (validity, modseq))
        self.assertIn(b"* VANISHED (EARLIER) 3,5\r\n", reply)
        self.assertIn(b"w OK", reply)
        reply = self.s.cmd(b"u EXAMINE INBOX (QRESYNC (%d %d))" % (validity + 1, modseq))
        self.assertNotIn(b"VANISHED", reply)  # another UIDVALIDITY: the client starts again
        self.assertNotIn(b"FETCH", reply)

    def test_forgotten_expunges_fall_back_to_every_missing_uid(self) -> None:
        self.patch(ms, "LIMIT", 1)
        o = self.other()
        o.cmd(b"o0 UID STORE 1 +FLAGS (\\Deleted)")
        o.cmd(b"o0 EXPUNGE")  # before the cache: the exact answer would leave 1 out
        validity, modseq = self.cached()
        self.changes()  # 3 and 5 in one range: the LIMIT keeps it
        o.cmd(b"o5 UID STORE 6 +FLAGS (\\Deleted)")
        o.cmd(b"o6 EXPUNGE")  # a second range: the first is forgotten
        reply = self.s.cmd(b"t SELECT INBOX (QRESYNC (%d %d 1:10))" % (validity, modseq))
        self.assertIn(b"* VANISHED (EARLIER) 1,4,6\r\n", reply)

    def test_vanished_instead_of_expunge(self) -> None:
        """RFC 7162 3.2.10: once enabled, expunges are told as VANISHED (by another session,
        EXPUNGE, UID EXPUNGE, MOVE)."""
        self.cached()
        self.changes()
        self.assertIn(b"* VANISHED 3,5\r\n", self.s.cmd(b"n NOOP"))
        self.s.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.s.cmd(b"b EXPUNGE"), b"* VANISHED 1\r\nb OK EXPUNGE completed.\r\n")
        self.s.cmd(b"c UID STORE 4 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"* VANISHED 4\r\n", self.s.cmd(b"d UID EXPUNGE 4"))
        self.s.cmd(b"x CREATE Archive")
        self.assertIn(b"* VANISHED 2\r\n", self.s.cmd(b"m UID MOVE 2 Archive"))

    def test_uid_fetch_changedsince_vanished(self) -> None:
        """RFC 7162 3.2.6."""
        _, modseq = self.cached()
        self.changes()
        self.s.cmd(b"n NOOP")
        reply = self.s.cmd(b"f UID FETCH 1:* FLAGS (CHANGEDSINCE %d VANISHED)" % modseq)
        self.assertEqual(reply, b"* VANISHED (EARLIER) 3,5\r\n"
                         b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n"
                         b"f OK UID FETCH completed.\r\n" % (modseq + 1))
        reply = self.s.cmd(b"g UID FETCH 4:6 FLAGS (VANISHED CHANGEDSINCE %d)" % modseq)
        self.assertEqual(reply, b"* VANISHED (EARLIER) 5\r\ng OK UID FETCH completed.\r\n")
        self.assertIn(b"h BAD", self.s.cmd(b"h FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)"))
        self.assertIn(b"i BAD", self.s.cmd(b"i UID FETCH 1:* FLAGS (VANISHED)"))

    def test_enable_while_selected(self) -> None:
        self.s.cmd(b"s SELECT INBOX")
        reply = self.s.cmd(b"e ENABLE QRESYNC")
        self.assertIn(b"* OK [HIGHESTMODSEQ %d]" % self.box().highest_modseq, reply)
        self.changes()
        self.assertIn(b"* VANISHED 3,5\r\n", self.s.cmd(b"n NOOP"))

    def test_pipelined_and_split_into_single_bytes(self) -> None:
        """The resync of a reconnecting client, pipelined, arriving a byte at a time."""
        validity, modseq = self.cached()
        self.changes()
        s = self.session()
        script = (b"l LOGIN boss secret\r\ne ENABLE QRESYNC\r\n"
                  b"t SELECT INBOX (QRESYNC (%d %d 1:*))\r\n"
                  b"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)\r\n" % (
                      validity, modseq, modseq))
        out = b"".join(s.send(script[i:i + 1]) for i in range(len(script)))
        self.assertEqual(out.count(b"* VANISHED (EARLIER) 3,5\r\n"), 2)
        self.assertEqual(out.count(b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n"
                                   % (modseq + 1)), 2)
        for tag in (b"l", b"e", b"t", b"f"):
            self.assertRegex(out, b"(^|\r\n)" + tag + b" OK")



class ResyncSpeedTests(MboxTestCase):
    """A QRESYNC SELECT of a 100,000-message INBOX after 10 flag changes and 10 expunges by
    another session looks at those 20 messages only: the store's log of changes, no pass."""

    def test_no_pass_over_the_mailbox(self) -> None:
        count = 100_000
        msg = b"From a@example.test  Tue Nov 28 06:01:02 2026\nSubject: x\n\nbody\n\n"
        self.write(msg * count, "wb")
        box = self.successResultOf(self.make_store().open(self.account))
        self.assertEqual(len(box.messages), count)
        base = box.highest_modseq
        changed = [box.messages[i].uid for i in range(0, count, count // 10)]
        gone = [box.messages[i].uid for i in range(5, count, count // 10)]
        for uid in changed:
            self.successResultOf(box.change_flags([uid], add=frozenset({"\\Seen"})))
        for uid in gone:
            self.successResultOf(box.expunge([uid]))
        view = ImapMailboxView(box, True)
        self.patch(view, "rows", lambda: self.fail("a pass over every message"))
        self.patch(view, "uids", lambda: self.fail("a pass over every message"))
        started = time.perf_counter()
        lines = qresync.resync_lines(view, box.uid_validity, base, [(1, None)])
        took = time.perf_counter() - started
        self.assertEqual(lines[0], b"VANISHED (EARLIER) " + b",".join(b"%d" % u for u in gone))
        self.assertEqual([int(line.split()[3]) for line in lines[1:]], changed)
        self.assertLess(took, 0.5)  # (a few milliseconds: the bound is for a loaded machine)
        view.close()
        box.close()


class ChangeLogTests(unittest.TestCase):
    def test_bounded(self) -> None:
        log = ms.ChangeLog(5)
        self.assertEqual(log.since(5), [])
        self.assertIsNone(log.since(4))
        log.publish(6, [3, 1], False)
        log.publish(6, [2], False)
        log.publish(7, [1], False)
        self.assertEqual((log.since(5), log.since(6), log.since(7)), ([1, 2, 3], [1], []))
        self.patch(ms.ChangeLog, "KEEP", 2)
        log.publish(8, [9], False)
        self.assertIsNone(log.since(5))
        self.assertEqual(log.since(6), [1, 9])
        log.publish(20, [], True)  # a reloaded state: nothing before it is known
        self.assertIsNone(log.since(19))
        self.assertEqual(log.since(20), [])


class NewMailResyncTests(MboxTestCase):
    def test_new_mail_not_yet_in_the_log_is_reported(self) -> None:
        """Mail a delivery appended to the published list before the store published it (so
        not in its log of changes) is still among the changed messages of a resync."""
        box = self.successResultOf(self.make_store().open(self.account))
        self.successResultOf(box.append(b"Subject: old\n\nbody\n"))
        base = box.highest_modseq
        uid = self.successResultOf(box.append(b"Subject: new\n\nbody\n"))
        self.patch(box, "changed_since", lambda modseq: [])
        view = ImapMailboxView(box, True)
        lines = qresync.resync_lines(view, box.uid_validity, base, [(1, None)])
        self.assertEqual(lines, [b"2 FETCH (UID %d FLAGS () MODSEQ (%d))" % (uid, base + 1)])
        view.close()
        box.close()


class IntersectTests(unittest.TestCase):
    """``qresync.intersect`` (one sweep) against a brute force over every UID."""

    @staticmethod
    def brute(spans: list[tuple[int, int]], ranges: list[tuple[int, int | None]]) -> list[Any]:
        top = 1 << 63
        found = sorted({u for lo, hi in spans for u in range(lo, hi + 1) for a, b in ranges
                        if min(a, top if b is None else b) <= u <= max(a, top if b is None else b)})
        out: list[Any] = []
        for u in found:
            if out and out[-1][1] + 1 == u:
                out[-1] = (out[-1][0], u)
            else:
                out.append((u, u))
        return out

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), max_size=6),
           st.lists(st.tuples(st.integers(1, 40), st.one_of(st.none(), st.integers(1, 40))),
                    max_size=5))
    def test_like_brute_force(self, steps: list[tuple[int, int]],
                              ranges: list[tuple[int, int | None]]) -> None:
        spans, u = [], 1
        for gap, length in steps:  # ascending, disjoint, not adjacent: as vanished_spans
            u += gap
            spans.append((u, u + length))
            u += length + 2
        self.assertEqual(qresync.intersect(spans, ranges), self.brute(spans, ranges))
