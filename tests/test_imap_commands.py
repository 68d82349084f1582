"""IMAP commands of issue 3 over StringTransport against a MemoryStore: folders, LIST variants,
STATUS, APPEND, COPY/MOVE/UID EXPUNGE (UIDPLUS), literals and LITERAL+, SEARCH literals,
BODYSTRUCTURE, streamed BODY[], IDLE, ENABLE; each TWISTED.md IMAP defect these paths fix."""

from __future__ import annotations

import re

from tests.test_imap_server import BOSS, MESSAGE, ImapTestCase

MULTIPART = (
    b"From: a@example.org\nSubject: parts\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=XX\n\n"
    b"preamble\n--XX\nContent-Type: text/plain; charset=utf-8\n\nhello\n"
    b"--XX\nContent-Type: message/rfc822\nContent-Disposition: attachment; filename=\"m.eml\"\n\n"
    b"Subject: inner\n\ninner body\n--XX--\n"
)


class FolderTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.s = self.session()
        self.s.login()

    def test_special_use_folders_listed_every_way(self) -> None:
        """LIST, LIST (SPECIAL-USE), LIST RETURN (SPECIAL-USE), XLIST and LSUB show INBOX and the
        pre-created, subscribed special-use folders with \\HasNoChildren (OUTLOOK.md item 6)."""
        out = self.s.cmd(b'a LIST "" "*"')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\n', out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n', out)
        out = self.s.cmd(b'b LIST (SPECIAL-USE) "" "*"')
        self.assertNotIn(b"INBOX", out)
        self.assertEqual(len(re.findall(rb"\* LIST", out)), 4)
        out = self.s.cmd(b'c LIST "" "*" RETURN (SPECIAL-USE SUBSCRIBED)')
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" Trash\r\n', out)
        out = self.s.cmd(b'd XLIST "" "*"')
        self.assertIn(b'* XLIST (\\HasNoChildren \\Inbox) "/" INBOX\r\n', out)
        self.assertIn(b"\\Junk \\Spam", out)
        out = self.s.cmd(b'e LSUB "" "*"')
        self.assertIn(b'* LSUB (\\HasNoChildren) "/" INBOX\r\n', out)
        self.assertIn(b'* LSUB (\\HasNoChildren \\Drafts) "/" Drafts\r\n', out)

    def test_folders_under_folders_with_mail_stay_selectable(self) -> None:
        """CREATE INBOX/Projects, APPEND into it, CREATE INBOX/Projects/2026: both selectable,
        \\HasChildren on the parent, % stops at a level (OUTLOOK.md item 7)."""
        self.assertIn(b"a OK", self.s.cmd(b'a CREATE "INBOX/Projects"'))
        self.assertTrue(self.s.cmd(b'b APPEND "INBOX/Projects" {9}').startswith(b"+ "))
        self.assertIn(b"b OK [APPENDUID ", self.s.cmd(b"Subject:x"))
        self.assertIn(b"c OK", self.s.cmd(b'c CREATE "INBOX/Projects/2026/"'))
        out = self.s.cmd(b'd LIST "" "INBOX*"')
        self.assertIn(b'* LIST (\\HasChildren) "/" INBOX/Projects\r\n', out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX/Projects/2026\r\n', out)
        self.assertNotIn(b"Noselect", out)
        out = self.s.cmd(b'e LIST "INBOX/" "%"')
        self.assertIn(b'"/" INBOX/Projects\r\n', out)
        self.assertNotIn(b"2026", out)
        self.assertIn(b"* 1 EXISTS", self.s.cmd(b'f SELECT "INBOX/Projects"'))
        self.assertIn(b"g OK [READ-WRITE]", self.s.cmd(b'g SELECT "INBOX/Projects/2026"'))

    def test_rename_delete_subscribe(self) -> None:
        """RENAME moves children; DELETE of a parent with children is NO, of a leaf OK;
        SUBSCRIBE / UNSUBSCRIBE show in LSUB (OUTLOOK.md item 8)."""
        self.s.cmd(b"a CREATE Work/Old")
        self.assertIn(b"b OK", self.s.cmd(b"b RENAME Work Jobs"))
        out = self.s.cmd(b'c LIST "" "*"')
        self.assertIn(b'"/" Jobs/Old\r\n', out)
        self.assertNotIn(b"Work", out)
        self.assertIn(b"d NO", self.s.cmd(b"d DELETE Jobs"))
        self.assertIn(b"e OK", self.s.cmd(b"e SUBSCRIBE Jobs/Old"))
        self.assertIn(b'* LSUB (\\HasNoChildren) "/" Jobs/Old', self.s.cmd(b'f LSUB "" "*"'))
        self.assertIn(b"g OK", self.s.cmd(b"g UNSUBSCRIBE Jobs/Old"))
        self.assertNotIn(b"Jobs/Old", self.s.cmd(b'h LSUB "" "*"'))
        self.assertIn(b"i OK", self.s.cmd(b"i DELETE Jobs/Old"))
        self.assertIn(b"j NO [NONEXISTENT]", self.s.cmd(b"j DELETE Jobs/Old"))
        self.assertIn(b"k NO", self.s.cmd(b"k DELETE INBOX"))

    def test_rename_inbox_moves_messages(self) -> None:
        """RENAME INBOX moves its messages to the new mailbox and leaves INBOX empty (RFC 3501)."""
        self.deliver()
        self.assertIn(b"a OK", self.s.cmd(b"a RENAME INBOX Archive"))
        self.assertIn(b"MESSAGES 0", self.s.cmd(b"b STATUS INBOX (MESSAGES)"))
        self.assertIn(b"MESSAGES 1", self.s.cmd(b"c STATUS Archive (MESSAGES)"))

    def test_status_items(self) -> None:
        """STATUS answers the items in the order asked; an unknown item is BAD, a missing
        mailbox NO."""
        self.deliver()
        self.deliver()
        self.successResultOf(self.box().set_flags({1: frozenset({"\\Seen"})}))
        out = self.s.cmd(b"a STATUS INBOX (UIDNEXT MESSAGES UNSEEN UIDVALIDITY)")
        self.assertIn(b"* STATUS INBOX (UIDNEXT 3 MESSAGES 2 UNSEEN 1 UIDVALIDITY %d)\r\n"
                      % self.box().uid_validity, out)
        self.assertIn(b"b BAD", self.s.cmd(b"b STATUS INBOX (BOGUS)"))
        self.assertIn(b"c NO", self.s.cmd(b"c STATUS Nowhere (MESSAGES)"))
        self.assertIn(b'* STATUS "Sent Items"', self.s.cmd(b'd CREATE "Sent Items"') +
                      self.s.cmd(b'e STATUS "Sent Items" (MESSAGES)'))

    def test_append_flags_date_and_trycreate(self) -> None:
        """APPEND with flags and a date: APPENDUID, the date is the INTERNALDATE, the flags
        stored; a missing mailbox is NO [TRYCREATE] (Twisted: BAD Server error); {0} is NO."""
        out = self.s.cmd(b'a APPEND Sent (\\Seen $Forwarded) "14-Sep-2026 19:07:10 +0200" {12+}\r\n'
                         b"Subject: s\r\n")
        m = re.search(rb"a OK \[APPENDUID (\d+) 1\]", out)
        self.assertIsNotNone(m, out)
        self.s.cmd(b"b SELECT Sent")
        out = self.s.cmd(b"c FETCH 1 (FLAGS INTERNALDATE)")
        self.assertIn(b'FLAGS (\\Seen \\Recent $Forwarded)'
                      b' INTERNALDATE "14-Sep-2026 19:07:10 +0200"', out)
        self.assertIn(b"d NO [TRYCREATE]", self.s.cmd(b"d APPEND Nowhere {3+}\r\nabc"))
        self.assertIn(b"e NO", self.s.send(b"e APPEND Sent {0}\r\n\r\n"))
        self.assertIn(b"f BAD", self.s.cmd(b"f APPEND Sent (\\Bogus) {1+}\r\nx"))

    def test_internal_date_zone_and_date_searches(self) -> None:
        """APPEND "24-Mar-2007 23:00:00 +0200": FETCH INTERNALDATE gives it back in that zone
        (not 21:00 +0000) and SEARCH ON/BEFORE/SINCE compare the date in its own zone
        (RFC 3501: time and zone disregarded), not the UTC day."""
        self.s.cmd(b'a APPEND INBOX "24-Mar-2007 23:00:00 +0200" {12+}\r\nSubject: s\r\n')
        self.s.cmd(b'b APPEND INBOX "25-Mar-2007 01:30:00 +0200" {12+}\r\nSubject: t\r\n')
        self.s.cmd(b'c APPEND INBOX "24-Mar-2007 23:30:00 -0500" {12+}\r\nSubject: u\r\n')
        self.s.cmd(b"d SELECT INBOX")
        out = self.s.cmd(b"e FETCH 1:3 INTERNALDATE")
        self.assertIn(b'* 1 FETCH (INTERNALDATE "24-Mar-2007 23:00:00 +0200")', out)
        self.assertIn(b'* 2 FETCH (INTERNALDATE "25-Mar-2007 01:30:00 +0200")', out)
        self.assertIn(b'* 3 FETCH (INTERNALDATE "24-Mar-2007 23:30:00 -0500")', out)
        self.assertIn(b"* SEARCH 1 3\r\n", self.s.cmd(b"f SEARCH ON 24-Mar-2007"))
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(b"g SEARCH SINCE 25-Mar-2007"))
        self.assertIn(b"* SEARCH 1 3\r\n", self.s.cmd(b"h SEARCH BEFORE 25-Mar-2007"))
        self.assertIn(b"* SEARCH 2\r\n", self.s.cmd(b"i UID SEARCH ON 25-Mar-2007"))

    def test_append_to_selected_mailbox_shows_exists(self) -> None:
        """APPEND to the selected mailbox: * EXISTS before the tagged OK, the message \\Recent."""
        self.s.cmd(b"a SELECT INBOX")
        out = self.s.cmd(b"b APPEND INBOX {12+}\r\nSubject: s\r\n")
        self.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\nb OK [APPENDUID", out)


class LiteralTests(ImapTestCase):
    def test_literal_plus_and_sync_literals_anywhere(self) -> None:
        """LOGIN with a LITERAL+ user, CREATE with a literal name, SEARCH with a UTF-8 literal
        (Twisted could not take literals in SEARCH)."""
        self.deliver()
        s = self.session()
        self.assertIn(b"a OK", s.send(b"a LOGIN {4+}\r\nboss {6+}\r\nsecret\r\n"))
        self.assertTrue(s.cmd(b"b CREATE {6}").startswith(b"+ "))
        self.assertIn(b"b OK", s.cmd(b"Caf\xc3\xa9s"))  # raw UTF-8 name tolerated
        s.cmd(b"c SELECT INBOX")
        out = s.send(b"d SEARCH CHARSET UTF-8 SUBJECT {5+}\r\nCaf\xc3\xa9\r\n")
        self.assertIn(b"* SEARCH 1\r\nd OK", out)
        out = s.cmd(b"e SEARCH OR (SUBJECT nothing) NOT NOT SUBJECT {3}")
        self.assertTrue(out.startswith(b"+ "))
        self.assertIn(b"* SEARCH 1\r\n", s.cmd(b"Caf"))

    def test_too_big_literal_refused(self) -> None:
        """A synchronising literal over the limit is NO [TOOBIG] without a continuation; the
        session goes on."""
        s = self.session()
        s.login()
        self.assertIn(b"a NO [TOOBIG]", s.cmd(b"a CREATE {99999999}"))
        self.assertIn(b"b OK", s.cmd(b"b NOOP"))


class CopyMoveTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        for _ in range(3):
            self.deliver()
        self.s = self.session()
        self.s.select()
        self.trash = self.store._box(BOSS, "Trash", create=False)

    def test_uid_copy_gives_copyuid_and_keeps_flags_and_date(self) -> None:
        """UID COPY: [COPYUID validity src dst], flags and INTERNALDATE kept (OUTLOOK.md 15)."""
        self.s.cmd(b"a STORE 2 +FLAGS (\\Flagged)")
        out = self.s.cmd(b"b UID COPY 2:3 Trash")
        self.assertIn(b"b OK [COPYUID %d 2:3 1:2] " % self.trash.uid_validity, out)
        self.assertEqual([m.flags for m in self.trash.messages],
                         [frozenset({"\\Flagged"}), frozenset()])
        self.assertIn(b"c NO [TRYCREATE]", self.s.cmd(b"c COPY 1 Nowhere"))
        self.assertEqual(self.s.cmd(b"d UID COPY 99 Trash"), b"d OK Copy completed.\r\n")

    def test_uid_expunge_removes_only_the_given_uids(self) -> None:
        """UID EXPUNGE n removes only n even when others are \\Deleted too (UIDPLUS)."""
        self.s.cmd(b"a STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.s.cmd(b"b UID EXPUNGE 2"),
                         b"* 2 EXPUNGE\r\nb OK UID EXPUNGE completed.\r\n")
        self.assertEqual([m.uid for m in self.box().messages], [1, 3])

    def test_move_and_uid_move(self) -> None:
        """MOVE: untagged OK [COPYUID], then EXPUNGE, then OK; UID MOVE the same (RFC 6851)."""
        out = self.s.cmd(b"a UID MOVE 2 Trash")
        self.assertEqual(
            out, b"* OK [COPYUID %d 2 1] Moved UIDs.\r\n* 2 EXPUNGE\r\na OK Move completed.\r\n"
            % self.trash.uid_validity)
        out = self.s.cmd(b"b MOVE 1:2 Trash")
        self.assertIn(b"[COPYUID %d 1,3 2:3]" % self.trash.uid_validity, out)
        self.assertIn(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nb OK", out)
        self.assertEqual(self.box().messages, [])

    def test_edit_cycles_leave_no_duplicates(self) -> None:
        """Outlook's edit = APPEND new + UID STORE \\Deleted + UID EXPUNGE old, repeated: no
        duplicates (OUTLOOK.md 15)."""
        for i in range(3):
            out = self.s.send(b"a APPEND INBOX {12+}\r\nSubject: %d\r\n\r\n" % i)
            new = int(re.search(rb"APPENDUID \d+ (\d+)", out).group(1))  # type: ignore[union-attr]
            old = new - 1
            self.s.cmd(b"b UID STORE %d +FLAGS.SILENT (\\Deleted)" % old)
            self.s.cmd(b"c UID EXPUNGE %d" % old)
        self.assertEqual([m.uid for m in self.box().messages], [1, 2, 6])


class BodyStructureTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver(MULTIPART)
        self.s = self.session()
        self.s.select()

    def test_bodystructure_with_extension_data(self) -> None:
        """BODYSTRUCTURE of multipart/mixed with a text part and a message/rfc822 attachment:
        sizes in CRLF octets, line counts, envelope, disposition, boundary parameter."""
        out = self.s.cmd(b"a FETCH 1 BODYSTRUCTURE")
        self.assertIn(
            b'BODYSTRUCTURE (("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "7BIT" 5 1'
            b' NIL NIL NIL NIL)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 28'
            b' (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL) 3 NIL '
            b'("attachment" ("filename" "m.eml")) NIL NIL) "MIXED" ("boundary" "XX") NIL NIL NIL)',
            out,
        )
        self.assertIn(b'BODY (("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "7BIT" 5 1)',
                      self.s.cmd(b"b FETCH 1 BODY"))

    def test_sizes_match_sections(self) -> None:
        """The size BODYSTRUCTURE gives a part is the length of BODY[n]; nested parts, MIME
        headers and the FULL macro work; BODY.PEEK leaves \\Seen alone."""
        out = self.s.cmd(b"a FETCH 1 (BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[2.HEADER]"
                         b" BODY.PEEK[1.MIME] BODY.PEEK[2.1])")
        self.assertIn(b"BODY[1] {5}\r\nhello", out)
        self.assertIn(b"BODY[2] {28}\r\nSubject: inner\r\n\r\ninner body", out)
        self.assertIn(b"BODY[2.HEADER] {18}\r\nSubject: inner\r\n\r\n", out)
        self.assertIn(b"BODY[1.MIME] {43}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", out)
        self.assertIn(b"BODY[2.1] {10}\r\ninner body", out)
        self.assertIn(b"ENVELOPE (", self.s.cmd(b"b FETCH 1 FULL"))
        self.assertEqual(self.box().messages[0].flags, frozenset())


class StreamingTests(ImapTestCase):
    def test_big_body_streamed_through_a_producer(self) -> None:
        """A 1 MB BODY[] is written by a pull producer in chunks, not as one string; the bytes
        are the message's wire form and RFC822.SIZE is their length."""
        body = b"".join(b"line %06d of a big message\n" % i for i in range(40000))
        self.deliver(b"Subject: big\n\n" + body)
        s = self.session()
        s.select()
        s.proto.dataReceived(b"a FETCH 1 (RFC822.SIZE BODY.PEEK[])\r\n")
        self.assertIsNotNone(s.transport.producer)
        writes = 0
        while s.transport.producer is not None:
            s.transport.producer.resumeProducing()
            writes += 1
        out = s.take()
        wire = (b"Subject: big\n\n" + body).replace(b"\n", b"\r\n")
        self.assertIn(b"RFC822.SIZE %d BODY[] {%d}\r\n" % (len(wire), len(wire)) + wire
                      + b")\r\na OK", out)
        self.assertGreater(writes, 10)


class IdleTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver()
        self.s = self.session()
        self.s.select()

    def test_idle_pushes_new_mail_at_once(self) -> None:
        """IDLE: + idling; a delivery is pushed as EXISTS/RECENT straight from the store listener
        (no poll needed); DONE ends it with a tagged OK (OUTLOOK.md 13, 17)."""
        self.assertEqual(self.s.cmd(b"a IDLE"), b"+ idling\r\n")
        self.deliver()
        self.assertEqual(self.s.take(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(self.s.cmd(b"DONE"), b"a OK Idle completed.\r\n")

    def test_idle_keepalive_and_no_timeout(self) -> None:
        """While idling: `* OK Still here` every 2 minutes and no autologout even after an hour
        (Twisted's 30-minute timeout still applied)."""
        self.s.cmd(b"a IDLE")
        self.clock.advance(120)
        self.assertEqual(self.s.take(), b"* OK Still here\r\n")
        for _ in range(30):
            self.clock.advance(120)
        self.assertFalse(self.s.transport.disconnecting)
        self.assertEqual(self.s.take().count(b"Still here"), 30)
        self.assertIn(b"a OK", self.s.cmd(b"done"))
        self.clock.advance(31 * 60)
        self.assertTrue(self.s.transport.disconnecting)

    def test_only_done_ends_idle(self) -> None:
        """Another line during IDLE does not end it (Twisted ended IDLE on any line)."""
        self.s.cmd(b"a IDLE")
        self.assertEqual(self.s.cmd(b"b NOOP"), b"* BAD Expected DONE.\r\n")
        self.deliver()
        self.assertIn(b"* 2 EXISTS", self.s.take())
        self.assertEqual(self.s.cmd(b"DONE"), b"a OK Idle completed.\r\n")

    def test_idle_sees_external_writers_and_expunges(self) -> None:
        """Mail written by another program reaches an IDLE session by the once-a-second refresh;
        an expunge by another session is pushed as EXPUNGE during IDLE."""
        self.s.cmd(b"a IDLE")
        self.box().external_append(b"Subject: from mutt\n\nx\n")
        self.clock.advance(1)
        self.assertIn(b"* 2 EXISTS", self.s.take())
        other = self.session()
        other.select()
        other.cmd(b"b STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.cmd(b"c EXPUNGE")
        self.assertIn(b"* 1 EXPUNGE", self.s.take())
        self.s.cmd(b"DONE")

    def test_disconnect_during_idle_cleans_up(self) -> None:
        """A connection lost while idling removes the listener, timers and the poll."""
        self.s.cmd(b"a IDLE")
        self.s.proto.connectionLost(None)
        self.assertEqual(self.box()._listeners, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class MiscTests(ImapTestCase):
    def test_enable_never_enables_uidonly(self) -> None:
        """ENABLE UIDONLY (Outlook) enables nothing: `* ENABLED` lists only the others it
        names (RFC 5161)."""
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"a ENABLE UIDONLY CONDSTORE"),
                         b"* ENABLED CONDSTORE\r\na OK Enabled.\r\n")

    def test_select_failure_leaves_selected_state(self) -> None:
        """A failed SELECT deselects the previous mailbox (RFC 3501 6.3.1)."""
        s = self.session()
        s.select()
        self.assertIn(b"a NO", s.cmd(b"a SELECT Nowhere"))
        self.assertIn(b"b BAD", s.cmd(b"b FETCH 1 FLAGS"))

    def test_keyword_search_and_unknown_command(self) -> None:
        """SEARCH KEYWORD / UNKEYWORD work (Twisted stubbed KEYWORD); unknown command is BAD."""
        self.deliver(MESSAGE)
        self.deliver(MESSAGE)
        s = self.session()
        s.select()
        s.cmd(b"a STORE 2 +FLAGS ($Label1)")
        self.assertIn(b"* SEARCH 2\r\n", s.cmd(b"b SEARCH KEYWORD $Label1"))
        self.assertIn(b"* SEARCH 1\r\n", s.cmd(b"c SEARCH UNKEYWORD $Label1"))
        self.assertIn(b"d BAD", s.cmd(b"d FROBNICATE"))


class RecentTests(ImapTestCase):
    def test_recent_goes_to_the_first_session_only(self) -> None:
        """\\Recent (RFC 3501 2.3.2): APPENDed mail counts in STATUS RECENT, is recent in the first
        SELECT and not in a later one; EXAMINE sees it without taking it."""
        s = self.session()
        s.login()
        s.cmd(b"a STATUS INBOX (RECENT)")
        s.cmd(b"b APPEND INBOX {12+}\r\nSubject: s\r\n")
        self.assertIn(b"* STATUS INBOX (RECENT 1)", s.cmd(b"c STATUS INBOX (RECENT)"))
        self.assertIn(b"* 1 RECENT", s.cmd(b"d EXAMINE INBOX"))
        self.assertIn(b"* 1 RECENT", s.cmd(b"e SELECT INBOX"))
        self.assertIn(b"* SEARCH 1", s.cmd(b"f SEARCH RECENT"))
        other = self.session()
        self.assertIn(b"* 0 RECENT", other.select())
        self.assertIn(b"* SEARCH\r\n", other.cmd(b"g SEARCH RECENT"))
