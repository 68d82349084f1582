"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 sections 4 and 5) over StringTransport against a
MemoryStore: PARTIAL, UPDATE with ADDTO / REMOVEFROM from another session's APPEND, STORE and
EXPUNGE, the points where updates may go out, CANCELUPDATE, NOUPDATE, IDLE, hibernation."""

from __future__ import annotations

from twisted.internet import defer

from mailsuite.imap.context import MAX_CONTEXTS
from mailsuite.imap.hibernate import hibernatable
from mailsuite.store.interfaces import StoreError
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
        """RFC 5267 4.4: PARTIAL low:high of the result's positions (either order), the range
        as asked with what is there, NIL past the end; for SORT in the sort order."""
        out = self.one.cmd(b"a UID SEARCH RETURN (PARTIAL 2:3 COUNT) ALL")
        self.assertIn(b'* ESEARCH (TAG "a") UID COUNT 4 PARTIAL (2:3 2:3)\r\na OK', out)
        out = self.one.cmd(b"b UID SEARCH RETURN (PARTIAL 3:9) ALL")
        self.assertIn(b'* ESEARCH (TAG "b") UID PARTIAL (3:9 3:4)\r\n', out)
        out = self.one.cmd(b"c UID SEARCH RETURN (PARTIAL 5:9) ALL")
        self.assertIn(b'* ESEARCH (TAG "c") UID PARTIAL (5:9 NIL)\r\n', out)
        out = self.one.cmd(b"d SORT RETURN (PARTIAL 1:2) (DATE) UTF-8 ALL")
        self.assertIn(b'* ESEARCH (TAG "d") PARTIAL (1:2 4,3)\r\n', out)
        out = self.one.cmd(b"e SEARCH RETURN (PARTIAL 3:1) ALL")
        self.assertIn(b'* ESEARCH (TAG "e") PARTIAL (1:3 1:3)\r\n', out)
        for bad in (b"f SEARCH RETURN (PARTIAL) ALL", b"f SEARCH RETURN (PARTIAL 0:4) ALL",
                    b"f SEARCH RETURN (PARTIAL 1:2 ALL) ALL",
                    b"f SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL",
                    b"f SEARCH RETURN (PARTIAL 1:*) ALL", b"f SEARCH RETURN (PARTIAL x) ALL",
                    b"f SORT RETURN (PARTIAL 1:2 ALL) (DATE) UTF-8 ALL", b"f CANCELUPDATE",
                    b"f CANCELUPDATE a"):
            self.assertTrue(self.one.cmd(bad).startswith(b"f BAD"), bad)
        self.assertIn(b"g OK", self.one.cmd(b"g NOOP"))

    def test_rfc5267_examples(self) -> None:
        """The examples of RFC 5267 4.2 to 4.3.5 on this mailbox: CONTEXT is a hint; tag reuse
        is BAD and has no effect; an ADDTO after the FETCH of a flag change (even after a
        FETCH: 4.3.2 lets them go at any time); a REMOVEFROM between commands before the
        EXPUNGE of the next NOOP; CANCELUPDATE."""
        out = self.one.cmd(b"A01 SEARCH RETURN (CONTEXT COUNT) UNDELETED UNKEYWORD $Junk")
        self.assertEqual(out, b'* ESEARCH (TAG "A01") COUNT 4\r\nA01 OK SEARCH completed.\r\n')
        out = self.one.cmd(b"B01 UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk")
        self.assertEqual(out, b'* ESEARCH (TAG "B01") UID COUNT 0\r\n'
                         b"B01 OK UID SEARCH completed.\r\n")
        out = self.one.cmd(b"B01 SORT RETURN (UPDATE) (DATE) UTF-8 FLAGGED")
        self.assertTrue(out.startswith(b"B01 BAD") and b"ESEARCH" not in out, out)
        self.one.cmd(b"S0 SEARCH RETURN (SAVE) 1")
        out = self.one.cmd(b"B01 SEARCH RETURN (UPDATE SAVE) 2:4")
        self.assertTrue(out.startswith(b"B01 BAD"), out)
        self.assertIn(b"ALL 1\r\n", self.one.cmd(b"S1 SEARCH RETURN (ALL) $"))  # kept
        self.two.cmd(b"s1 STORE 2:3 +FLAGS (\\Deleted $Junk \\Seen)")
        out = self.one.cmd(b"f1 FETCH 1 UID")
        self.assertIn(b"* 2 FETCH (FLAGS (\\Deleted \\Seen $Junk))\r\n"
                      b"* 3 FETCH (FLAGS (\\Deleted \\Seen $Junk))\r\n"
                      b'* ESEARCH (TAG "B01") UID ADDTO (0 2:3)\r\n', out)
        self.two.cmd(b"s2 EXPUNGE")
        self.assertEqual(self.one.take(), b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 2:3)\r\n')
        self.assertEqual(self.one.cmd(b"B03 NOOP"),
                         b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nB03 OK NOOP completed.\r\n")
        self.assertEqual(self.one.cmd(b'B04 CANCELUPDATE "B01"'),
                         b"B04 OK CANCELUPDATE completed.\r\n")
        self.two.cmd(b"s3 STORE 1 +FLAGS (\\Deleted $Junk)")
        self.assertNotIn(b"ESEARCH", self.one.cmd(b"B05 NOOP"))
        self.assertIn(b"B01 OK", self.one.cmd(b"B01 SEARCH RETURN (UPDATE) ALL"))  # tag free

    def test_search_updates_from_another_session(self) -> None:
        """RFC 5267 4.3: UPDATE keeps the result: another session's APPEND (delivery), STORE and
        EXPUNGE come as ADDTO / REMOVEFROM (position 0 for SEARCH), an ADDTO after its EXISTS,
        the REMOVEFROM of an expunged message before its EXPUNGE."""
        out = self.one.cmd(b'a UID SEARCH RETURN (UPDATE) FROM "boss" UNSEEN')
        self.assertEqual(out, b'* ESEARCH (TAG "a") UID\r\na OK UID SEARCH completed.\r\n')
        self.deliver(mail(b"e"))
        self.two.cmd(b"b STORE 1 +FLAGS (\\Seen)")
        out = self.one.cmd(b"d NOOP")
        self.assertIn(b'* ESEARCH (TAG "a") UID REMOVEFROM (0 1) ADDTO (0 5)\r\n', out)
        self.assertLess(out.index(b"EXISTS"), out.index(b"ADDTO"))
        self.two.cmd(b"e STORE 3 +FLAGS (\\Deleted)")
        self.two.cmd(b"f EXPUNGE")
        self.assertEqual(self.one.take(), b'* ESEARCH (TAG "a") UID REMOVEFROM (0 3)\r\n')
        self.assertEqual(self.one.cmd(b"g NOOP"), b"* 3 EXPUNGE\r\ng OK NOOP completed.\r\n")
        self.assertEqual(self.one.cmd(b"h NOOP"), b"h OK NOOP completed.\r\n")

    def test_sequence_set_bound_when_received(self) -> None:
        """RFC 5267 4.3: sequence numbers in the criteria are the messages they named when the
        command came; later messages at those numbers are no matches."""
        self.one.cmd(b"a UID SEARCH RETURN (UPDATE) 2:* UNSEEN")
        self.two.cmd(b"b STORE 2 +FLAGS (\\Deleted)")
        self.two.cmd(b"c EXPUNGE")
        self.assertEqual(self.one.take(), b'* ESEARCH (TAG "a") UID REMOVEFROM (0 2)\r\n')
        self.one.cmd(b"d NOOP")
        self.deliver(mail(b"e"))
        self.two.cmd(b"e STORE 1 +FLAGS (\\Flagged)")
        out = self.one.cmd(b"f NOOP")
        self.assertIn(b"* 4 EXISTS", out)
        self.assertNotIn(b"ESEARCH", out)

    def test_pipelined(self) -> None:
        """SEARCH with UPDATE, a change, NOOP and CANCELUPDATE in one write."""
        out = self.one.send(b"a UID SEARCH RETURN (UPDATE) SUBJECT x\r\nb NOOP\r\n"
                            b'c CANCELUPDATE "a"\r\nd NOOP\r\n')
        self.assertEqual(out, b'* ESEARCH (TAG "a") UID\r\na OK UID SEARCH completed.\r\n'
                         b"b OK NOOP completed.\r\nc OK CANCELUPDATE completed.\r\n"
                         b"d OK NOOP completed.\r\n")

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
        self.assertIn(b"z OK", self.one.cmd(b'z CANCELUPDATE "u1"'))  # ended by the SELECT

    def test_idle_and_hibernation(self) -> None:
        """Updates go out during IDLE; a session with a context does not hibernate."""
        self.box().watch_paths = lambda: [("/var/mail/boss", False)]  # as an mbox's would
        self.one.cmd(b"a UID SEARCH RETURN (UPDATE) SUBJECT news")
        self.one.cmd(b"b IDLE")
        self.two.cmd(b"i IDLE")
        self.assertFalse(hibernatable(self.one.proto))
        self.assertTrue(hibernatable(self.two.proto))  # the same without a context
        self.deliver(mail(b"news"))
        out = self.one.take()
        self.assertIn(b"* 5 EXISTS\r\n", out)
        self.assertIn(b'* ESEARCH (TAG "a") UID ADDTO (0 5)\r\n', out)
        self.assertIn(b"b OK", self.one.cmd(b"DONE"))
        self.assertIn(b"c OK", self.one.cmd(b'c CANCELUPDATE "a"'))
        self.one.cmd(b"d IDLE")
        self.assertTrue(hibernatable(self.one.proto))

    def test_listener_let_go(self) -> None:
        """The context's store listener goes with the last context, a new SELECT, or the
        connection."""
        listeners = self.box()._listeners
        before = len(listeners)
        self.one.cmd(b"a UID SEARCH RETURN (UPDATE) ALL")
        self.one.cmd(b"b UID SEARCH RETURN (UPDATE) SEEN")
        self.assertEqual(len(listeners), before + 1)
        self.one.cmd(b'c CANCELUPDATE "a" "b"')
        self.assertEqual(len(listeners), before)
        self.one.cmd(b"d UID SEARCH RETURN (UPDATE) ALL")
        self.one.cmd(b"e SELECT INBOX")
        self.assertEqual(len(listeners), before)
        self.one.cmd(b"f UID SEARCH RETURN (UPDATE) ALL")
        self.one.proto.connectionLost(None)
        self.assertEqual(len(listeners), before - 1)  # the view's own too

    def test_own_changes_and_save(self) -> None:
        """The session's own STORE and EXPUNGE update its contexts (after the STORE's FETCH,
        the REMOVEFROM before the EXPUNGE); UPDATE goes with SAVE (no interaction, RFC 5267
        4.1), a "$" in the criteria is the result saved before the command."""
        self.one.cmd(b"a SEARCH RETURN (SAVE) 1:2")
        out = self.one.cmd(b"b SEARCH RETURN (UPDATE SAVE COUNT) $ UNSEEN")
        self.assertIn(b'* ESEARCH (TAG "b") COUNT 2\r\n', out)
        out = self.one.cmd(b"c STORE 2 +FLAGS (\\Seen)")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Seen))\r\n"
                         b'* ESEARCH (TAG "b") REMOVEFROM (0 2)\r\nc OK STORE completed.\r\n')
        self.one.cmd(b"d STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.one.cmd(b"e EXPUNGE"), b'* ESEARCH (TAG "b") REMOVEFROM (0 1)\r\n'
                         b"* 1 EXPUNGE\r\ne OK EXPUNGE completed.\r\n")
        self.assertIn(b"COUNT 0", self.one.cmd(b"f SEARCH RETURN (COUNT) UID 1:2 UNSEEN"))

    def test_header_key_updates_come_before_the_tagged_ok(self) -> None:
        """A key that needs the headers, read asynchronously (the mbox store reads in its
        threads): the ADDTO / REMOVEFROM a STORE causes come before its tagged OK, not with the
        next command (imaptest's search-context-update2; Dovecot does the same)."""
        box = self.box()
        read = box.read_headers

        def later(uids):  # answered on a later reactor turn, as a thread's result is
            d = defer.Deferred()
            self.clock.callLater(0.01, lambda: read(uids).chainDeferred(d))
            return d

        out = self.one.cmd(b'a UID SEARCH RETURN (UPDATE) SEEN SUBJECT "c"')
        self.assertEqual(out, b'* ESEARCH (TAG "a") UID\r\na OK UID SEARCH completed.\r\n')
        box.read_headers = later
        self.one.send(b"b UID STORE 3 +FLAGS (\\Seen)\r\n")
        self.assertNotIn(b"b OK", self.one.take())  # the evaluation still runs: the reply waits
        self.clock.advance(0.01)
        out = self.one.take()
        self.assertIn(b'* ESEARCH (TAG "a") UID ADDTO (0 3)\r\n', out)
        self.assertTrue(out.endswith(b"b OK UID STORE completed.\r\n"), out)
        out = self.one.cmd(b"c UID STORE 3 -FLAGS (\\Seen)")  # back: REMOVEFROM, the same way
        self.assertNotIn(b"c OK", out)
        self.clock.advance(0.01)
        out = self.one.take()
        self.assertIn(b'* ESEARCH (TAG "a") UID REMOVEFROM (0 3)\r\n', out)
        self.assertTrue(out.endswith(b"c OK UID STORE completed.\r\n"), out)
        self.assertEqual(self.one.cmd(b"d NOOP"), b"d OK NOOP completed.\r\n")

    def test_store_failure_ends_the_context(self) -> None:
        """A header read that fails while matching: ``* NO [NOUPDATE "tag"]`` and the context
        ends (RFC 5267 4.3.1); the session goes on."""
        self.one.cmd(b'a UID SEARCH RETURN (UPDATE) FROM "amy"')
        self.one.cmd(b"b UID SEARCH RETURN (UPDATE) UNSEEN")
        self.box().read_headers = lambda uids: defer.fail(StoreError("disk on fire"))
        self.deliver(mail(b"e", b"amy@example.org"))
        out = self.one.cmd(b"c NOOP")
        self.assertIn(b'* ESEARCH (TAG "b") UID ADDTO (0 5)\r\n', out)
        self.assertIn(b'* NO [NOUPDATE "a"] Updates stopped\r\n', out)
        self.assertTrue(out.endswith(b"c OK NOOP completed.\r\n"))
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)
        self.assertEqual(list(self.one.proto._contexts), [b"b"])

    def test_every_split_of_a_pipeline(self) -> None:
        """SEARCH RETURN (UPDATE PARTIAL) with a literal in the criteria, and CANCELUPDATE with
        a literal tag, cut at every byte: the same answers."""
        data = (b"a UID SEARCH RETURN (UPDATE PARTIAL 1:1) SUBJECT {1+}\r\nc\r\n"
                b"b CANCELUPDATE {1+}\r\na\r\nc NOOP\r\n")
        expected = None
        for i in range(1, len(data)):
            s = self.session()
            s.select()
            out = s.send(data[:i]) + s.send(data[i:])
            self.assertTrue(out.endswith(b"c OK NOOP completed.\r\n"), (i, out))
            if expected is None:
                expected = out
                self.assertEqual(out, b'* ESEARCH (TAG "a") UID PARTIAL (1:1 3)\r\n'
                                 b"a OK UID SEARCH completed.\r\n"
                                 b"b OK CANCELUPDATE completed.\r\nc OK NOOP completed.\r\n")
            self.assertEqual(out, expected, i)
            self.assertFalse(s.proto._contexts)
            s.cmd(b"z LOGOUT")

    def test_slow_header_read_during_idle(self) -> None:
        """A key that needs the headers: the new message is matched when its headers come,
        and the ADDTO goes out then, in IDLE; the session answers meanwhile."""
        self.one.cmd(b'a UID SEARCH RETURN (UPDATE) FROM "amy"')
        box = self.box()
        read, pending = box.read_headers, []

        def slow(uids: list[int]) -> defer.Deferred[dict[int, bytes]]:
            d: defer.Deferred[dict[int, bytes]] = defer.Deferred()
            pending.append((d, uids))
            return d

        box.read_headers = slow
        self.one.cmd(b"b IDLE")
        self.deliver(mail(b"e", b"amy@example.org"))
        self.assertEqual(self.one.take(), b"* 5 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual([uids for _, uids in pending], [[5]])
        box.read_headers = read
        pending[0][0].callback(self.successResultOf(read([5])))
        self.assertEqual(self.one.take(), b'* ESEARCH (TAG "a") UID ADDTO (0 5)\r\n')
        self.assertEqual(self.one.cmd(b"DONE"), b"b OK Idle completed.\r\n")
