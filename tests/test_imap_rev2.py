"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: advertised always, on after ``ENABLE IMAP4rev2`` in
the authenticated state; then SELECT without RECENT and [UNSEEN n] but with LIST (RFC 9051
6.3.2's example), no ``\\Recent`` anywhere (and none taken from IMAP4rev1 sessions), UID in
unsolicited FETCH, SEARCH answered with ESEARCH (RFC 9051 6.4.4's examples), SEARCH CHARSET
allowed, UTF-8 mailbox names, no hibernation; a session that never enables it is unchanged."""

from __future__ import annotations

import re

from mailsuite.imap import hibernate
from tests.test_imap_server import ImapTestCase, Session

CAFE = "Café".encode()
GLOBAL = (b"Subject: outer\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
          b"--b\nContent-Type: text/plain\n\nouter text\n"
          b"--b\nContent-Type: message/global\nContent-Transfer-Encoding: 8bit\n\n"
          b"Subject: inner\n\ninner text\n"
          b"--b--\n")


def untagged(replies: bytes) -> list[bytes]:
    return [line for line in replies.split(b"\r\n") if line.startswith(b"* ")]


class Rev2Tests(ImapTestCase):
    def rev2(self) -> Session:
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"e ENABLE IMAP4rev2"),
                         b"* ENABLED IMAP4REV2\r\ne OK Enabled.\r\n")
        return s

    def three(self) -> None:
        for subject in (b"one", b"two", b"three"):
            self.deliver(b"Subject: " + subject + b"\n\nbody " + subject + b"\n")

    def test_capability_and_enable(self) -> None:
        """Advertised beside IMAP4rev1 before and after login; ENABLE lists it once; refused
        (not listed) while a mailbox is selected (RFC 5161 3.1), taken again after UNSELECT."""
        s = self.session()
        self.assertIn(b" IMAP4rev2", s.cmd(b"a CAPABILITY"))
        s.login()
        caps = s.cmd(b"b CAPABILITY")
        self.assertIn(b"* CAPABILITY IMAP4rev1 ", caps)
        self.assertIn(b" IMAP4rev2", caps)
        s.cmd(b"c SELECT INBOX")
        self.assertEqual(s.cmd(b"d ENABLE IMAP4rev2"), b"* ENABLED\r\nd OK Enabled.\r\n")
        self.assertNotIn(b"IMAP4REV2", s.proto.enabled)
        self.assertIn(b" RECENT\r\n", s.cmd(b"f SELECT INBOX"))
        s.cmd(b"g UNSELECT")
        self.assertEqual(s.cmd(b"h ENABLE imap4rev2 IMAP4rev2"),
                         b"* ENABLED IMAP4REV2\r\nh OK Enabled.\r\n")
        self.assertEqual(s.cmd(b"i ENABLE IMAP4rev2"), b"* ENABLED\r\ni OK Enabled.\r\n")

    def test_select_transcript(self) -> None:
        """RFC 9051 6.3.2's example: EXISTS, FLAGS, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT and
        the LIST of the mailbox; no RECENT, no [UNSEEN n]; [CLOSED] before a second SELECT."""
        self.three()
        s = self.rev2()
        uv = self.box().uid_validity
        replies = re.sub(rb"\* OK \[MAILBOXID [^\r]*\r\n", b"", s.cmd(b"A142 SELECT INBOX"))
        self.assertEqual(replies, (
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags "
            b"permitted.\r\n"
            b"* 3 EXISTS\r\n"
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
            b"* OK [UIDNEXT 4] Predicted next UID\r\n"
            b"* OK [HIGHESTMODSEQ %d] Highest\r\n"
            b"A142 OK [READ-WRITE] Select completed.\r\n"
        ) % (uv, self.box().highest_modseq))
        again = s.cmd(b"A143 EXAMINE inbox")
        self.assertTrue(again.startswith(b"* OK [CLOSED] Previous mailbox closed.\r\n"), again)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\n', again)
        self.assertTrue(again.endswith(b"A143 OK [READ-ONLY] Examine completed.\r\n"))
        self.assertNotIn(b"RECENT", again)
        self.assertNotIn(b"UNSEEN", again)

    def test_select_list_attributes(self) -> None:
        """The LIST of SELECT has the attributes LIST gives: children, special use; the name
        is the one the server has (INBOX in any case), in UTF-8."""
        s = self.rev2()
        s.cmd(b'a LIST "" "*"')  # the special-use folders are made at the first LIST
        self.assertIn(b" OK", s.cmd(b"b CREATE Sent/2026"))
        self.assertIn(b'* LIST (\\HasChildren \\Sent) "/" Sent\r\n', s.cmd(b"c SELECT Sent"))
        self.assertIn(b'* LIST (\\HasNoChildren) "/" Sent/2026\r\n',
                      s.cmd(b"d EXAMINE Sent/2026"))
        self.assertIn(b" OK", s.cmd(b'e CREATE "' + CAFE + b'"'))
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "' + CAFE + b'"\r\n',
                      s.cmd(b'f SELECT "' + CAFE + b'"'))
        self.assertIn(b'"/" "' + CAFE + b'"\r\n', s.cmd(b'g LIST "" "*"'))
        self.assertIn(b"h NO [NONEXISTENT] Mailbox doesn't exist: Nowhere",
                      s.cmd(b"h SELECT Nowhere"))
        self.assertEqual(s.cmd(b"i NOOP"), b"i OK NOOP completed.\r\n")

    def test_list_empty_pattern(self) -> None:
        """RFC 9051 6.3.9: ``LIST "" ""`` gives the delimiter and the root; LSUB still works."""
        s = self.rev2()
        self.assertEqual(s.cmd(b'A101 LIST "" ""'),
                         b'* LIST (\\Noselect) "/" ""\r\nA101 OK List completed.\r\n')
        self.assertIn(b"A102 OK", s.cmd(b'A102 LSUB "" "*"'))

    def test_no_recent(self) -> None:
        """New mail: EXISTS without RECENT, FLAGS without \\Recent; the message stays recent
        for an IMAP4rev1 session (a rev2 one claims none); a flag change made elsewhere comes
        with the UID (RFC 9051 7.5.2)."""
        self.three()
        other = self.session()
        other.login()
        self.assertIn(b"* 0 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n",
                      other.cmd(b"o SELECT INBOX"))
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        self.deliver(b"Subject: four\n\nbody\n")
        self.assertEqual(s.cmd(b"b NOOP"), b"* 4 EXISTS\r\nb OK NOOP completed.\r\n")
        self.assertEqual(untagged(s.cmd(b"c FETCH 4 FLAGS")), [b"* 4 FETCH (FLAGS ())"])
        self.assertEqual(untagged(s.cmd(b"d SEARCH RECENT")), [b'* ESEARCH (TAG "d")'])
        self.assertEqual(other.cmd(b"p NOOP"),
                         b"* 4 EXISTS\r\n* 1 RECENT\r\np OK NOOP completed.\r\n")
        self.assertIn(b"\\Recent", other.cmd(b"p FETCH 4 FLAGS"))
        other.cmd(b"q STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(untagged(s.cmd(b"e NOOP")),
                         [b"* 2 FETCH (UID 2 FLAGS (\\Flagged))"])

    def test_search_transcripts(self) -> None:
        """RFC 9051 6.4.4: SEARCH is answered with ESEARCH (without RETURN as RETURN (ALL));
        UID SEARCH with UID; nothing found: the tag alone; RETURN (MIN COUNT); CHARSET
        UTF-8 allowed, an unknown one NO [BADCHARSET]; SORT keeps its SORT reply."""
        self.three()
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        s.cmd(b"b STORE 2:3 +FLAGS (\\Flagged)")
        self.assertEqual(s.cmd(b"A282 SEARCH RETURN (MIN COUNT) FLAGGED"),
                         b'* ESEARCH (TAG "A282") MIN 2 COUNT 2\r\nA282 OK SEARCH completed.\r\n')
        self.assertEqual(s.cmd(b"A283 SEARCH RETURN () FLAGGED"),
                         b'* ESEARCH (TAG "A283") ALL 2:3\r\nA283 OK SEARCH completed.\r\n')
        self.assertEqual(s.cmd(b'A284 SEARCH TEXT "string not in mailbox"'),
                         b'* ESEARCH (TAG "A284")\r\nA284 OK SEARCH completed.\r\n')
        self.assertEqual(s.cmd(b"c SEARCH ALL"),
                         b'* ESEARCH (TAG "c") ALL 1:3\r\nc OK SEARCH completed.\r\n')
        self.assertEqual(s.cmd(b"d UID SEARCH NOT FLAGGED"),
                         b'* ESEARCH (TAG "d") UID ALL 1\r\nd OK UID SEARCH completed.\r\n')
        self.assertEqual(untagged(s.cmd(b'f SEARCH CHARSET UTF-8 SUBJECT "two"')),
                         [b'* ESEARCH (TAG "f") ALL 2'])
        self.assertIn(b"g NO [BADCHARSET", s.cmd(b'g SEARCH CHARSET KOI9 SUBJECT "two"'))
        self.assertEqual(untagged(s.cmd(b"k SEARCH LARGER 4294967296")),  # number64
                         [b'* ESEARCH (TAG "k")'])
        s.cmd(b"l ENABLE UTF8=ACCEPT")  # (refused while selected: rev2's rule stays)
        self.assertEqual(untagged(s.cmd(b'm SEARCH CHARSET UTF-8 SUBJECT "two"')),
                         [b'* ESEARCH (TAG "m") ALL 2'])
        self.assertEqual(untagged(s.cmd(b"h SORT (SUBJECT) UTF-8 ALL")), [b"* SORT 1 3 2"])
        self.assertEqual(s.cmd(b"i SEARCH RETURN (SAVE) FLAGGED"), b"i OK SEARCH completed.\r\n")
        self.assertEqual(untagged(s.cmd(b"j FETCH $ UID")),
                         [b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)"])

    def test_utf8_search_without_charset(self) -> None:
        """RFC 9051 6.4.4: UTF-8 in a quoted string or a literal+, no CHARSET needed."""
        self.deliver()  # Subject: Café plans
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        self.assertEqual(untagged(s.cmd(b'b SEARCH SUBJECT "' + CAFE + b'"')),
                         [b'* ESEARCH (TAG "b") ALL 1'])
        self.assertEqual(untagged(s.cmd(b"c UID SEARCH SUBJECT {5+}\r\n" + CAFE)),
                         [b'* ESEARCH (TAG "c") UID ALL 1'])

    def test_charset_with_both_enabled(self) -> None:
        """ENABLE IMAP4rev2 UTF8=ACCEPT: both listed; SEARCH CHARSET keeps RFC 9051's rule."""
        self.three()
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"e ENABLE IMAP4rev2 UTF8=ACCEPT"),
                         b"* ENABLED IMAP4REV2 UTF8=ACCEPT\r\ne OK Enabled.\r\n")
        s.cmd(b"a SELECT INBOX")
        self.assertEqual(untagged(s.cmd(b'b SEARCH CHARSET UTF-8 SUBJECT "two"')),
                         [b'* ESEARCH (TAG "b") ALL 2'])

    def test_message_global(self) -> None:
        """RFC 9051 7.5.2 (RFC 9755 6): in IMAP4rev2 BODYSTRUCTURE shows message/global as
        message/rfc822 (envelope, body, lines), and its parts are numbered inside; IMAP4rev1
        shows it as a basic part."""
        self.deliver(GLOBAL)
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        rev2 = s.cmd(b"b FETCH 1 BODY")
        self.assertIn(b'("MESSAGE" "GLOBAL" NIL NIL NIL "8BIT" 28 (NIL "inner" NIL NIL NIL NIL '
                      b'NIL NIL NIL NIL) ("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" '
                      b'10 1) 3) "MIXED")', rev2)
        self.assertIn(b"BODY[2.1] {10}\r\ninner text)", s.cmd(b"c FETCH 1 BODY.PEEK[2.1]"))
        t = self.session()
        t.login()
        t.cmd(b"a SELECT INBOX")
        self.assertIn(b'("MESSAGE" "GLOBAL" NIL NIL NIL "8BIT" 28) "MIXED")',
                      t.cmd(b"b FETCH 1 BODY"))

    def test_status_items(self) -> None:
        """STATUS DELETED and SIZE (RFC 9051 6.3.11) in a rev2 session."""
        self.three()
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        s.cmd(b"b STORE 1 +FLAGS (\\Deleted)")
        s.cmd(b"c UNSELECT")
        reply = untagged(s.cmd(b"d STATUS INBOX (MESSAGES DELETED SIZE)"))
        self.assertRegex(reply[0], rb"^\* STATUS INBOX \(MESSAGES 3 DELETED 1 SIZE \d+\)$")

    def test_rev1_unchanged(self) -> None:
        """Without ENABLE IMAP4rev2: RECENT and [UNSEEN n], no LIST at SELECT, \\Recent in
        FETCH, SEARCH's SEARCH reply, SEARCH CHARSET after UTF8=ACCEPT still BAD."""
        self.three()
        s = self.session()
        s.login()
        replies = s.cmd(b"a SELECT INBOX")
        self.assertIn(b"* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UNSEEN 1] First unseen.\r\n", replies)
        self.assertNotIn(b"* LIST", replies)
        self.assertEqual(s.cmd(b"c SEARCH ALL"), b"* SEARCH 1 2 3\r\nc OK SEARCH completed.\r\n")
        self.deliver()
        self.assertEqual(s.cmd(b"d NOOP"), b"* 4 EXISTS\r\n* 1 RECENT\r\nd OK NOOP completed.\r\n")
        self.assertIn(b"\\Recent", s.cmd(b"b FETCH 4 FLAGS"))
        t = self.session()
        t.login()
        t.cmd(b"e ENABLE UTF8=ACCEPT")
        t.cmd(b"f SELECT INBOX")
        self.assertTrue(t.cmd(b"g SEARCH CHARSET UTF-8 ALL").startswith(b"g BAD"))

    def test_pipelined_and_split(self) -> None:
        """ENABLE, SELECT and SEARCH pipelined, cut into reads at every byte: the same replies."""
        self.three()
        script = b"e ENABLE IMAP4rev2\r\na SELECT INBOX\r\nb SEARCH SUBJECT {3}\r\ntwo\r\n"
        expected = None
        for cut in (1, 2, 7, len(script)):
            s = self.session()
            s.login()
            out = b""
            for i in range(0, len(script), cut):
                out += s.send(script[i:i + cut])
            out = out.replace(b"+ Ready for additional command text\r\n", b"")
            self.assertIn(b'* ESEARCH (TAG "b") ALL 2\r\nb OK SEARCH completed.\r\n', out)
            if expected is None:
                expected = out
            self.assertEqual(out, expected, cut)
            s.cmd(b"z CLOSE")

    def test_idle_new_mail(self) -> None:
        """New mail during IDLE: EXISTS alone; a flag change with its UID."""
        self.three()
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        self.assertEqual(s.cmd(b"i IDLE"), b"+ idling\r\n")
        self.deliver()
        self.assertEqual(s.take(), b"* 4 EXISTS\r\n")
        other = self.session()
        other.login()
        other.cmd(b"o SELECT INBOX")
        other.cmd(b"p STORE 1 +FLAGS (\\Seen)")
        self.assertEqual(s.take(), b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n")
        self.assertEqual(s.cmd(b"DONE"), b"i OK Idle completed.\r\n")

    def test_not_hibernated(self) -> None:
        s = self.rev2()
        s.cmd(b"a SELECT INBOX")
        s.cmd(b"i IDLE")
        self.assertFalse(hibernate.hibernatable(s.proto))

    def test_unauthenticate_ends_it(self) -> None:
        """RFC 8437 4.1: UNAUTHENTICATE forgets what ENABLE turned on, UTF-8 names too."""
        s = self.rev2()
        self.assertIn(b"u OK", s.cmd(b"u UNAUTHENTICATE"))
        self.assertFalse(s.proto.utf8_names)
        s.login()
        self.assertIn(b"* 0 RECENT", s.cmd(b"a SELECT INBOX"))
