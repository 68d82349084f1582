"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 sections 4 and 5) over StringTransport against a
MemoryStore: PARTIAL, UPDATE with ADDTO / REMOVEFROM from another session's APPEND, STORE and
EXPUNGE, the points where updates may go out, CANCELUPDATE, NOUPDATE, IDLE, hibernation."""

from __future__ import annotations

from mailsuite.imap.context import MAX_CONTEXTS
from mailsuite.imap.hibernate import hibernatable
from tests.test_imap_server import ImapTestCase


def mail(subject: bytes, sender: bytes = b"boss@example.org", day: int = 1) -> bytes:
    return (b"From: " + sender + b"\nSubject: " + subject
            + b"\nDate: %d Jan 2024 10:00:00 +0000\n\nbody\n" % day)


class ContextTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        for i, (subject, sender) in enumerate(((b"a", b"boss@example.org"),
                                               (b"b", b"amy@example.org"),
                                               (b"c", b"boss@example.org"),
                                               (b"d", b"amy@example.org")), 1):
            self.deliver(mail(subject, sender, 10 - i))
        self.one, self.two = self.session(), self.session()
        self.one.select()
        self.two.select()

    def test_partial(self) -> None:
        """RFC 5267 4.4: PARTIAL low:high of the result's positions, NIL past its end; for
        SORT in the sort order."""
        out = self.one.cmd(b"a UID SEARCH RETURN (PARTIAL 2:3 COUNT) ALL")
        self.assertIn(b'* ESEARCH (TAG "a") UID COUNT 4 PARTIAL (2:3 2:3)\r\na OK', out)
        out = self.one.cmd(b"b SEARCH RETURN (PARTIAL 5:9) ALL")
        self.assertIn(b'* ESEARCH (TAG "b") PARTIAL (5:9 NIL)\r\n', out)
        out = self.one.cmd(b"c SORT RETURN (PARTIAL 1:2) (DATE) UTF-8 ALL")
        self.assertIn(b'* ESEARCH (TAG "c") PARTIAL (1:2 4,3)\r\n', out)
        out = self.one.cmd(b"d SEARCH RETURN (PARTIAL 3:1) ALL")
        self.assertIn(b'* ESEARCH (TAG "d") PARTIAL (1:3 1:3)\r\n', out)
        for bad in (b"e SEARCH RETURN (PARTIAL) ALL", b"f SEARCH RETURN (PARTIAL 0:4) ALL",
                    b"g SEARCH RETURN (PARTIAL 1:2 ALL) ALL", b"h SEARCH RETURN (UPDATE SAVE) ALL",
                    b"i SEARCH RETURN (PARTIAL x) ALL", b"j CANCELUPDATE \"nothere\""):
            self.assertTrue(self.one.cmd(bad).startswith(bad[:2] + b"BAD"), bad)

    def test_search_updates_from_another_session(self) -> None:
        """RFC 5267 4.3: UPDATE keeps the result: another session's APPEND (delivery), STORE and
        EXPUNGE come as ADDTO / REMOVEFROM (position 0 for SEARCH); the REMOVEFROM of an
        expunged message before its EXPUNGE; nothing after FETCH, STORE or SEARCH."""
        out = self.one.cmd(b'a UID SEARCH RETURN (UPDATE) FROM "boss" UNSEEN')
        self.assertEqual(out, b'* ESEARCH (TAG "a") UID\r\na OK UID SEARCH completed.\r\n')
        self.deliver(mail(b"e"))
        self.two.cmd(b"b STORE 1 +FLAGS (\\Seen)")
        self.assertNotIn(b"ADDTO", self.one.cmd(b"c FETCH 1 UID"))  # EXISTS may go, not these
        self.assertNotIn(b"ADDTO", self.one.cmd(b"c2 SEARCH ALL"))
        out = self.one.cmd(b"d NOOP")
        self.assertIn(b'* ESEARCH (TAG "a") UID REMOVEFROM (0 1) ADDTO (0 5)\r\n', out)
        self.two.cmd(b"e STORE 3 +FLAGS (\\Deleted)")
        self.two.cmd(b"f EXPUNGE")
        out = self.one.cmd(b"g NOOP")
        self.assertEqual(out, b'* ESEARCH (TAG "a") UID REMOVEFROM (0 3)\r\n* 3 EXPUNGE\r\n'
                         b"g OK NOOP completed.\r\n")
        self.assertEqual(self.one.cmd(b"h NOOP"), b"h OK NOOP completed.\r\n")

    def test_sequence_numbers_and_min_count(self) -> None:
        """Without UID the numbers are sequence numbers as the client knows them at the time."""
        out = self.one.cmd(b'a SEARCH RETURN (COUNT UPDATE) FROM "amy"')
        self.assertIn(b'* ESEARCH (TAG "a") COUNT 2\r\n', out)
        self.two.cmd(b"b STORE 1 +FLAGS (\\Deleted)")
        self.two.cmd(b"c EXPUNGE")
        self.deliver(mail(b"f", b"amy@example.org"))
        out = self.one.cmd(b"d NOOP")
        self.assertIn(b"* 1 EXPUNGE\r\n* 4 EXISTS\r\n", out)
        self.assertIn(b'* ESEARCH (TAG "a") ADDTO (0 4)\r\n', out)

    def test_sort_updates_with_positions(self) -> None:
        """RFC 5267 section 5: for SORT the position in the sorted result."""
        out = self.one.cmd(b"a UID SORT RETURN (ALL UPDATE CONTEXT) (DATE) UTF-8 ALL")
        self.assertIn(b'* ESEARCH (TAG "a") UID ALL 4,3,2,1\r\n', out)
        self.deliver(mail(b"e", day=7))  # between 3 (day 7: later arrival) and 2 (day 8)
        self.two.cmd(b"b STORE 4 +FLAGS (\\Deleted)")
        self.two.cmd(b"c EXPUNGE")
        out = self.one.cmd(b"d NOOP")
        self.assertIn(b'* ESEARCH (TAG "a") UID REMOVEFROM (1 4)\r\n* 4 EXPUNGE\r\n', out)
        self.assertIn(b'* ESEARCH (TAG "a") UID ADDTO (2 5)\r\n', out)
        out = self.one.cmd(b"e UID SORT RETURN (ALL) (DATE) UTF-8 ALL")
        self.assertIn(b"ALL 3,5,2,1\r\n", out)
        out = self.one.cmd(b"f SORT RETURN (UPDATE) (REVERSE DATE) UTF-8 FROM amy")
        self.deliver(mail(b"g", b"amy@example.org", day=9))
        # sequence numbers 1, 2, 3, 4 are UIDs 1, 2, 3, 5; the new one (UID 6, day 9) is 5
        self.assertIn(b'* ESEARCH (TAG "f") ADDTO (1 5)\r\n', self.one.cmd(b"g NOOP"))

    def test_cancelupdate_select_and_limit(self) -> None:
        """CANCELUPDATE ends contexts; a new SELECT ends them all; more than MAX_CONTEXTS are
        refused with NOUPDATE (the result still sent)."""
        self.one.cmd(b"a UID SEARCH RETURN (UPDATE) ALL")
        self.one.cmd(b"b UID SEARCH RETURN (UPDATE) ALL")
        self.assertEqual(self.one.cmd(b'c CANCELUPDATE "a" "b"'),
                         b"c OK CANCELUPDATE completed.\r\n")
        self.deliver(mail(b"e"))
        self.assertNotIn(b"ESEARCH", self.one.cmd(b"d NOOP"))
        for i in range(MAX_CONTEXTS):
            self.one.cmd(b"u%d UID SEARCH RETURN (UPDATE) ALL" % i)
        out = self.one.cmd(b"x UID SEARCH RETURN (UPDATE COUNT) ALL")
        self.assertIn(b'* NO [NOUPDATE "x"]', out)
        self.assertIn(b'* ESEARCH (TAG "x") UID COUNT 5\r\nx OK', out)
        self.one.cmd(b"s SELECT INBOX")
        self.deliver(mail(b"f"))
        self.assertNotIn(b"ESEARCH", self.one.cmd(b"y NOOP"))
        self.assertIn(b"y BAD", self.one.cmd(b'y CANCELUPDATE "u1"'))

    def test_idle_and_hibernation(self) -> None:
        """Updates go out during IDLE; a session with a context does not hibernate."""
        self.one.cmd(b"a UID SEARCH RETURN (UPDATE) SUBJECT news")
        self.one.cmd(b"b IDLE")
        self.assertFalse(hibernatable(self.one.proto))
        self.deliver(mail(b"news"))
        out = self.one.take()
        self.assertIn(b"* 5 EXISTS\r\n", out)
        self.assertIn(b'* ESEARCH (TAG "a") UID ADDTO (0 5)\r\n', out)
        self.assertIn(b"b OK", self.one.cmd(b"DONE"))
        self.assertIn(b"c OK", self.one.cmd(b'c CANCELUPDATE "a"'))
        self.assertFalse(self.one.proto._contexts)
