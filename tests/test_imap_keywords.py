"""A keyword new to a mailbox is announced (issue 9 IMAP 3): every session that has the mailbox
selected gets ``* FLAGS (...)`` and ``* OK [PERMANENTFLAGS (...)]`` naming it before any FETCH
that shows it (RFC 3501 7.2.6), whether a STORE, an APPEND, a COPY or a MOVE brought it in."""

from __future__ import annotations

import re

from twisted.internet import defer

from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.imap.recent import RecentTracker
from tests.store_conformance import MSG1
from tests.test_imap_server import MESSAGE, ImapTestCase, Session
from tests.test_store_mbox import MboxTestCase

_FLAGS = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft"


class KeywordAnnouncementTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(MESSAGE)
        self.a, self.b = self.session(), self.session()
        self.a.select()
        self.b.select()

    def assertAnnounced(self, out: bytes, keywords: bytes, readonly: bool = False) -> None:
        """FLAGS and PERMANENTFLAGS name exactly the keywords, and come before the first FETCH
        or EXISTS in ``out``."""
        flags = _FLAGS + (b" " + keywords if keywords else b"") + b")\r\n"
        self.assertIn(flags, out)
        permanent = b"()" if readonly else flags[len(b"* FLAGS "):-3] + b" \\*)"
        self.assertIn(b"* OK [PERMANENTFLAGS " + permanent + b"]", out)
        first = re.search(rb"\* \d+ (FETCH|EXISTS)", out)
        if first is not None:
            self.assertLess(out.index(flags), first.start(), out)

    def test_store_announces_to_itself_and_to_the_other_session(self) -> None:
        """STORE +FLAGS ($Label1): the storing session gets FLAGS before its own FETCH (also
        with .SILENT), the other one at its next command before the unsolicited FETCH; a keyword
        already announced is not announced again."""
        out = self.a.cmd(b"s1 STORE 1 +FLAGS ($Label1)")
        self.assertAnnounced(out, b"$Label1")
        self.assertIn(b"* 1 FETCH (FLAGS ($Label1))", out)
        out = self.b.cmd(b"n1 NOOP")
        self.assertAnnounced(out, b"$Label1")
        self.assertIn(b"* 1 FETCH (FLAGS ($Label1))", out)
        out = self.a.cmd(b"s2 STORE 1 +FLAGS.SILENT (\\Seen Work)")
        self.assertAnnounced(out, b"$Label1 Work")
        self.assertNotIn(b"FETCH", out)
        self.assertAnnounced(self.b.cmd(b"n2 NOOP"), b"$Label1 Work")
        out = self.a.cmd(b"s3 STORE 1 -FLAGS ($Label1)")
        self.assertNotIn(b"* FLAGS", out)
        self.assertNotIn(b"* FLAGS", self.b.cmd(b"n3 NOOP"))

    def test_examine_session_told_with_empty_permanentflags(self) -> None:
        """A read-only (EXAMINE) session is told too; its PERMANENTFLAGS stays ()."""
        c = self.session()
        c.login()
        c.cmd(b"e1 EXAMINE INBOX")
        self.a.cmd(b"s1 STORE 1 +FLAGS (Todo)")
        self.assertAnnounced(c.cmd(b"n1 NOOP"), b"Todo", readonly=True)

    def test_append_with_a_new_keyword(self) -> None:
        """APPEND (Invoice) INBOX from a third session: both selected sessions get FLAGS before
        the EXISTS, so the FETCH FLAGS that follows shows a defined keyword."""
        c = self.session()
        c.login()
        self.assertTrue(c.cmd(b"p1 APPEND INBOX (Invoice) {9}").startswith(b"+ "))
        self.assertIn(b"p1 OK", c.cmd(b"Subject:x"))
        for session in (self.a, self.b):
            out = session.cmd(b"n1 NOOP")
            self.assertAnnounced(out, b"Invoice")
            self.assertIn(b"* 2 EXISTS", out)
            self.assertIn(b"* 2 FETCH (FLAGS (\\Recent Invoice))" if session is self.a
                          else b"* 2 FETCH (FLAGS (Invoice))", session.cmd(b"f1 FETCH 2 FLAGS"))

    def test_append_by_the_selected_session_itself(self) -> None:
        """The session that appends into its own selected mailbox is told in the APPEND reply."""
        self.assertTrue(self.a.cmd(b"p1 APPEND INBOX (Mine) {9}").startswith(b"+ "))
        out = self.a.cmd(b"Subject:x")
        self.assertAnnounced(out, b"Mine")
        self.assertIn(b"* 2 EXISTS", out)

    def _other_folder_with_keyword(self, session: Session) -> None:
        session.cmd(b"c1 CREATE Other")
        self.assertTrue(session.cmd(b"p1 APPEND Other (Moved) {9}").startswith(b"+ "))
        self.assertIn(b"p1 OK", session.cmd(b"Subject:y"))

    def test_copy_and_move_into_a_selected_mailbox(self) -> None:
        """COPY and MOVE of a message with a keyword from another folder into INBOX: the sessions
        that have INBOX selected get FLAGS before the new message shows."""
        c = self.session()
        c.login()
        self._other_folder_with_keyword(c)
        c.cmd(b"s1 SELECT Other")
        self.assertIn(b"k1 OK", c.cmd(b"k1 COPY 1 INBOX"))
        out = self.a.cmd(b"n1 NOOP")
        self.assertAnnounced(out, b"Moved")
        self.assertIn(b"* 2 EXISTS", out)
        c.cmd(b"s2 STORE 1 +FLAGS (Later)")
        self.assertIn(b"m1 OK", c.cmd(b"m1 MOVE 1 INBOX"))
        self.assertAnnounced(self.b.cmd(b"n2 NOOP"), b"Later Moved")

    def test_copy_within_the_selected_mailbox(self) -> None:
        """COPY from the selected mailbox to itself: the copying session is told in the reply."""
        self.a.cmd(b"s1 STORE 1 FLAGS (Dup)")
        out = self.a.cmd(b"k1 COPY 1 INBOX")
        self.assertIn(b"* 2 EXISTS", out)
        self.assertNotIn(b"* FLAGS", out)  # Dup was announced by the STORE already
        self.assertAnnounced(self.b.cmd(b"n1 NOOP"), b"Dup")

    def test_fetch_setting_seen_tells_a_keyword_it_learns(self) -> None:
        """A keyword another session stored reaches this one through its own FETCH BODY[] (the
        implicit \\Seen returns the stored flags): FLAGS comes before that FETCH."""
        self.b.cmd(b"s1 STORE 1 +FLAGS (Other)")
        out = self.a.cmd(b"f1 FETCH 1 (FLAGS BODY[])")
        self.assertAnnounced(out, b"Other")
        self.assertIn(b"Other", out[out.index(b"* 1 FETCH"):])


class MboxKeywordTests(MboxTestCase):
    @defer.inlineCallbacks
    def test_keyword_written_by_another_program(self):
        """Mail another program appends with ``X-Keywords: Ext`` (mutt, Dovecot): the sessions'
        views announce Ext before the EXISTS; a keyword the mailbox already had at SELECT is in
        its first FLAGS and not announced again."""
        box = yield self.open_with(MSG1)
        recent = RecentTracker()  # as the server's sessions share one
        mine = ImapMailboxView(box, False, self.account, self.store, recent)
        other = ImapMailboxView(box, True, self.account, self.store, recent)
        self.assertEqual(mine.flags_responses()[0], _FLAGS[2:] + b")")
        self.external_append(b"X-Keywords: Ext\n" + MSG1)
        yield box.refresh()
        for view in (mine, other):
            updates = view.take_updates()
            self.assertEqual(updates[0], _FLAGS[2:] + b" Ext)")
            count = b"1 RECENT" if view is mine else b"0 RECENT"
            self.assertEqual(updates[2:], [b"2 EXISTS", count])
        self.assertTrue(other.flags_responses()[1].startswith(b"OK [PERMANENTFLAGS ()]"))
        late = ImapMailboxView(box, False, self.account, self.store, recent)
        self.assertEqual(late.flags_responses()[0], _FLAGS[2:] + b" Ext)")
        self.assertEqual(late.take_updates(), [])
        for view in (mine, other, late):
            view.close()
