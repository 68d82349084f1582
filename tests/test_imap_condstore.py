"""CONDSTORE (RFC 7162 section 3.1) as transcripts: the RFC's examples with our numbers."""

from __future__ import annotations

import json
import re

from mailsuite.imap import hibernate
from tests.test_imap_server import ImapTestCase


def highest(reply: bytes) -> int:
    m = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", reply)
    assert m is not None, reply
    return int(m.group(1))


class CondstoreTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        for _ in range(4):
            self.deliver()
        self.s = self.session()
        self.s.login()

    def other(self):
        s = self.session()
        s.login()
        s.cmd(b"o1 SELECT INBOX")
        return s

    def test_select_condstore_tells_highestmodseq(self) -> None:
        reply = self.s.cmd(b"a SELECT INBOX (CONDSTORE)")
        self.assertEqual(highest(reply), self.box().highest_modseq)
        self.assertIn(b"a OK [READ-WRITE]", reply)
        plain = self.session()
        self.assertIn(b"* OK [HIGHESTMODSEQ", plain.select())  # every SELECT, as Dovecot
        other = self.other()
        other.cmd(b"o2 STORE 1 +FLAGS (\\Seen)")
        self.assertNotIn(b"MODSEQ", plain.cmd(b"n NOOP"))  # yet CONDSTORE is not on there
        self.assertIn(b"MODSEQ (", self.s.cmd(b"n NOOP"))

    def test_reselect_tells_closed(self) -> None:
        """SELECT over a selected mailbox says it closed the old one first, as Dovecot does."""
        self.assertNotIn(b"CLOSED", self.s.cmd(b"a SELECT INBOX"))
        self.assertTrue(self.s.cmd(b"b EXAMINE INBOX").startswith(
            b"* OK [CLOSED] Previous mailbox closed.\r\n* FLAGS"))
        self.s.cmd(b"c CLOSE")
        self.assertNotIn(b"CLOSED", self.s.cmd(b"d SELECT INBOX"))

    def test_unknown_select_parameter_is_bad(self) -> None:
        self.assertIn(b"a BAD", self.s.cmd(b"a SELECT INBOX (FOO)"))
        self.assertIn(b"b OK", self.s.cmd(b"b NOOP"))

    def test_fetch_modseq_and_changedsince(self) -> None:
        """RFC 7162 3.1.4.1: FETCH MODSEQ; CHANGEDSINCE gives only what changed after it, with
        MODSEQ though not asked for."""
        self.s.cmd(b"a SELECT INBOX")
        base = self.box().highest_modseq
        reply = self.s.cmd(b"b FETCH 1:* (FLAGS MODSEQ)")
        self.assertIn(b"* OK [HIGHESTMODSEQ %d]" % base, reply)  # MODSEQ enables CONDSTORE
        self.assertEqual(reply.count(b"MODSEQ ("), 4)
        self.s.cmd(b"c STORE 2 +FLAGS.SILENT (\\Seen)")
        self.s.cmd(b"d STORE 4 +FLAGS.SILENT ($Label)")
        reply = self.s.cmd(b"e FETCH 1:* (UID FLAGS) (CHANGEDSINCE %d)" % base)
        self.assertEqual(reply, b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (%d))\r\n"
                         b"* 4 FETCH (UID 4 FLAGS ($Label) MODSEQ (%d))\r\n"
                         b"e OK FETCH completed.\r\n" % (base + 1, base + 2))
        reply = self.s.cmd(b"f UID FETCH 1:* FLAGS (CHANGEDSINCE %d)" % (base + 1))
        self.assertEqual(reply, b"* 4 FETCH (UID 4 FLAGS ($Label) MODSEQ (%d))\r\n"
                         b"f OK UID FETCH completed.\r\n" % (base + 2))
        self.assertIn(b"g BAD", self.s.cmd(b"g FETCH 1 FLAGS (CHANGEDSINCE x1)"))
        self.assertIn(b"h BAD", self.s.cmd(b"h FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)"))
        self.assertIn(b"i OK", self.s.cmd(b"i FETCH 1 FAST (CHANGEDSINCE 0)"))

    def test_store_unchangedsince(self) -> None:
        """RFC 7162 3.1.3 examples 3-5: the messages changed since fail, MODIFIED lists them;
        .SILENT still reports the new MODSEQ of what it stored."""
        reply = self.s.cmd(b"a SELECT INBOX (CONDSTORE)")
        base = highest(reply)
        other = self.other()
        other.cmd(b"o2 STORE 3 +FLAGS (\\Flagged)")  # 3 now has base + 1
        reply = self.s.cmd(b"b STORE 1:4 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Deleted)" % base)
        self.assertIn(b"* 1 FETCH (UID 1 MODSEQ (%d))\r\n" % (base + 2), reply)
        self.assertIn(b"* 4 FETCH (UID 4 MODSEQ (%d))\r\n" % (base + 2), reply)
        self.assertIn(b"* 3 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (base + 1),
                      reply)  # the other session's change, unsolicited
        self.assertTrue(reply.endswith(b"b OK [MODIFIED 3] Conditional STORE failed.\r\n"),
                        reply)
        reply = self.s.cmd(b"c UID STORE 1,3 (UNCHANGEDSINCE 0) FLAGS (\\Seen)")
        self.assertEqual(reply, b"c OK [MODIFIED 1,3] Conditional STORE failed.\r\n")
        reply = self.s.cmd(b"d STORE 2 (UNCHANGEDSINCE %d) -FLAGS (\\Deleted)" % (base + 5))
        self.assertEqual(reply, b"* 2 FETCH (UID 2 FLAGS () MODSEQ (%d))\r\n"
                         b"d OK STORE completed.\r\n" % (base + 3))
        self.assertIn(b"e BAD", self.s.cmd(b"e STORE 1 (UNCHANGEDSINCE x) FLAGS (\\Seen)"))
        self.assertIn(b"f BAD", self.s.cmd(b"f STORE 1 (FOO 1) FLAGS (\\Seen)"))

    def test_search_modseq(self) -> None:
        """RFC 7162 3.1.5: (MODSEQ n) after the numbers, the highest of those found."""
        self.s.cmd(b"a SELECT INBOX")
        base = self.box().highest_modseq
        self.s.cmd(b"b STORE 2 +FLAGS (\\Seen)")
        self.s.cmd(b"c STORE 3 +FLAGS (\\Seen)")
        reply = self.s.cmd(b"d SEARCH MODSEQ %d" % (base + 1))
        self.assertIn(b"* SEARCH 2 3 (MODSEQ %d)\r\n" % (base + 2), reply)
        reply = self.s.cmd(b'e UID SEARCH MODSEQ "/flags/\\\\draft" all %d' % (base + 2))
        self.assertIn(b"* SEARCH 3 (MODSEQ %d)\r\n" % (base + 2), reply)
        self.assertIn(b"* SEARCH\r\n", self.s.cmd(b"f SEARCH MODSEQ %d" % (base + 9)))
        self.assertIn(b"* SEARCH 1 2 3 4\r\n", self.s.cmd(b"g SEARCH ALL"))
        self.assertIn(b"h BAD", self.s.cmd(b"h SEARCH MODSEQ x"))
        # RFC 7162 3.1.9/3.1.10: SORT and ESEARCH replies carry it too
        self.assertIn(b"* SORT 2 3 (MODSEQ %d)\r\n" % (base + 2),
                      self.s.cmd(b"i SORT (ARRIVAL) UTF-8 MODSEQ %d" % (base + 1)))
        self.assertIn(b' MIN 2 MODSEQ %d\r\n' % (base + 1),
                      self.s.cmd(b"j SEARCH RETURN (MIN) MODSEQ %d" % (base + 1)))
        self.assertIn(b' ALL 2:3 MODSEQ %d\r\n' % (base + 2),
                      self.s.cmd(b"k SORT RETURN (ALL) (ARRIVAL) UTF-8 MODSEQ %d" % (base + 1)))

    def test_status_highestmodseq(self) -> None:
        reply = self.s.cmd(b"a STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        self.assertIn(b"* STATUS INBOX (MESSAGES 4 HIGHESTMODSEQ %d)"
                      % self.box().highest_modseq, reply)
        self.assertIn(b"CONDSTORE", self.s.cmd(b"b ENABLE CONDSTORE") + b"CONDSTORE")

    def test_enable_in_selected_state_and_unsolicited_fetch(self) -> None:
        self.s.cmd(b"a SELECT INBOX")
        reply = self.s.cmd(b"b ENABLE CONDSTORE")
        self.assertIn(b"* ENABLED CONDSTORE\r\n", reply)
        self.assertIn(b"* OK [HIGHESTMODSEQ %d]" % self.box().highest_modseq, reply)
        other = self.other()
        other.cmd(b"o2 STORE 1 +FLAGS (\\Answered)")
        reply = self.s.cmd(b"c NOOP")
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS (\\Answered) MODSEQ (%d))\r\n"
                      % self.box().highest_modseq, reply)
        # a FETCH that sets \Seen tells UID and MODSEQ too
        reply = self.s.cmd(b"d FETCH 2 BODY[TEXT]")
        self.assertIn(b"UID 2 MODSEQ (%d)" % self.box().highest_modseq, reply)
        self.assertIn(b"FLAGS (\\Seen)", reply)


class HibernationTests(ImapTestCase):
    def test_enabled_names_survive_hibernation(self) -> None:
        """The snapshot of a session in IDLE keeps what ENABLE turned on (privsep/sleep.py sets
        it and the view's CONDSTORE/QRESYNC back when the session is thawed)."""
        s = self.session()
        s.login()
        s.cmd(b"e ENABLE QRESYNC")
        self.assertIn(b"+ idling", s.cmd(b"i IDLE"))
        self.assertTrue(hibernate.hibernatable(s.proto))
        snapshot = hibernate.snapshot(s.proto)
        self.assertEqual(hibernate.decode(snapshot)["enabled"], {b"CONDSTORE", b"QRESYNC"})
        self.assertIn(b"i OK", s.cmd(b"DONE"))
        good = json.loads(snapshot)
        for bad in ("CONDSTORE", ["a b"], [1], ["X" * 65]):
            with self.assertRaises(hibernate.BadState):
                hibernate.decode(json.dumps(dict(good, en=bad)).encode())
        del good["en"]  # a snapshot of before: nothing enabled
        self.assertEqual(hibernate.decode(json.dumps(good).encode())["enabled"], set())
