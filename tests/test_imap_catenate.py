"""CATENATE (RFC 4469) with URL-PARTIAL (RFC 5550): APPEND from TEXT literals and IMAP URLs
(RFC 5092) to the user's own messages; [BADURL], [TOOBIG]; every split of the command."""

from __future__ import annotations

import re
from typing import Any

from mailsuite.imap.catenate import BadURL, parse_url
from mailsuite.imap.server import IMAPFactory
from tests.configs import real_config
from tests.test_imap_server import BOSS, ImapTestCase, Session

BOUNDARY = b"------------030308070208000400050907"
DRAFT = (b"From: boss@example.com\nSubject: draft\nMIME-Version: 1.0\n"
         b'Content-Type: multipart/mixed; boundary="' + BOUNDARY + b'"\n\n'
         b"--" + BOUNDARY + b"\nContent-Type: text/plain\n\nFirst part.\n"
         b"--" + BOUNDARY + b"\nContent-Type: text/plain\n\nSecond part.\n"
         b"--" + BOUNDARY + b"--\n")
OTHER = b"Subject: forwarded\n\nForwarded text.\n"


class CatenateTests(ImapTestCase):
    def ready(self) -> tuple[Session, int]:
        box = self.store._box(BOSS, "Drafts", create=True)
        box.append(DRAFT)
        box.append(OTHER)
        s = self.session()
        s.login()
        return s, int(box.uid_validity)

    def drafts(self) -> Any:
        return self.store._box(BOSS, "Drafts", create=False)

    def test_rfc4469_example(self) -> None:
        """RFC 4469 5's forward-with-a-new-part: the header and first part of a draft by URL,
        boundaries as TEXT, a whole other message by URL; the result is the parts in order."""
        s, v = self.ready()
        url = b"/Drafts;UIDVALIDITY=%d/;UID=" % v
        sep = b"\r\n--" + BOUNDARY + b"\r\n"
        end = b"\r\n--" + BOUNDARY + b"--\r\n"
        first = (b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "' + url
                 + b'1/;section=HEADER" TEXT {%d}\r\n' % len(sep))
        self.assertEqual(s.send(first), b"+ Ready for literal data\r\n")
        second = (sep + b' URL "' + url + b'1/;section=1.MIME" URL "' + url
                  + b'1/;section=1" TEXT {%d}\r\n' % len(sep))
        self.assertEqual(s.send(second), b"+ Ready for literal data\r\n")
        self.assertEqual(s.send(sep + b' URL "' + url + b'2" TEXT {%d}\r\n' % len(end)),
                         b"+ Ready for literal data\r\n")
        out = s.send(end + b")\r\n")
        self.assertRegex(out, rb"^A003 OK \[APPENDUID \d+ 3\] Append completed.\r\n$")
        header = DRAFT[: DRAFT.index(b"\n\n") + 2].replace(b"\n", b"\r\n")
        expected = (header + sep + b"Content-Type: text/plain\r\n\r\n" + b"First part."
                    + sep + OTHER.replace(b"\n", b"\r\n") + end)
        box = self.drafts()
        self.assertEqual(box._bodies[3], expected.replace(b"\r\n", b"\n"))
        self.assertEqual(box.messages[2].flags, {"\\Seen", "\\Draft", "$MDNSent"})

    def test_partial_and_relative_urls(self) -> None:
        """URL-PARTIAL: ;PARTIAL=offset.length of the section; a ;UID= URL is relative to the
        selected mailbox; an imap:// URL of the same user."""
        s, v = self.ready()
        s.cmd(b"s SELECT Drafts")
        out = s.cmd(b'a APPEND Drafts CATENATE (URL ";UID=2/;SECTION=TEXT/;PARTIAL=0.9" '
                    b'URL "imap://boss@mail.example.com/Drafts;UIDVALIDITY=%d/;UID=2'
                    b'/;SECTION=TEXT/;PARTIAL=9")' % v)
        self.assertIn(b"a OK [APPENDUID", out)
        self.assertEqual(self.drafts()._bodies[3], b"Forwarded text.\n")

    def test_bad_urls(self) -> None:
        """Each is NO [BADURL url], nothing is appended, the session goes on."""
        s, v = self.ready()
        for url in (b"/Drafts;UIDVALIDITY=%d/;UID=2" % (v + 1), b"/Drafts/;UID=99",
                    b"/Nowhere/;UID=1", b"imap://alice@host/INBOX/;UID=1", b";UID=1",
                    b"/Drafts", b"/Drafts/;UID=1/;SECTION=BOGUS", b"/Drafts/;UID=1/;SECTION=3",
                    b"/Drafts/;UID=1/;URLAUTH=anonymous", b"http://x/"):
            out = s.cmd(b'a APPEND Drafts CATENATE (TEXT {1+}\r\nx URL "' + url + b'")')
            self.assertEqual(out, b"a NO [BADURL " + url + b"] Bad URL.\r\n")
        self.assertEqual(len(self.drafts().messages), 2)
        self.assertIn(b"b OK", s.cmd(b"b NOOP"))

    def test_syntax_errors(self) -> None:
        s, _ = self.ready()
        for bad in (b"CATENATE", b"CATENATE ()", b"CATENATE (FOO x)", b'CATENATE (URL "x"',
                    b'CATENATE (TEXT "x")', b"CONCATENATE (TEXT {1+}\r\nx)"):
            self.assertTrue(s.cmd(b"a APPEND Drafts " + bad).startswith(b"a BAD"), bad)

    def test_too_big(self) -> None:
        self.factory = IMAPFactory(real_config(auth={"disable_plaintext_auth": True},
                                               mail={"message_size_limit": 100}),
                                   self.portal, self.maillog, clock=self.clock)
        s, _ = self.ready()
        out = s.cmd(b'a APPEND Drafts CATENATE (TEXT {60+}\r\n' + b"x" * 60
                    + b' URL "/Drafts/;UID=1")')
        self.assertEqual(out, b"a NO [TOOBIG] Message too big.\r\n")
        self.assertEqual(len(self.drafts().messages), 2)

    def test_multiappend_with_a_bad_url_appends_none(self) -> None:
        s, _ = self.ready()
        out = s.cmd(b"a APPEND Drafts {5+}\r\nhello CATENATE (URL \"/Drafts/;UID=77\")")
        self.assertEqual(out, b"a NO [BADURL /Drafts/;UID=77] Bad URL.\r\n")
        self.assertEqual(len(self.drafts().messages), 2)

    def test_every_split(self) -> None:
        command = (b'a APPEND Drafts CATENATE (TEXT {6+}\r\nhello\n URL "/Drafts/;UID=2" '
                   b"TEXT ~{3+}\r\n\0!\n)\r\nb NOOP\r\n")
        expected = None
        for cut in range(1, len(command)):
            self.setUp()
            s, _ = self.ready()
            out = s.send(command[:cut]) + s.send(command[cut:])
            if expected is None:
                expected = out
                self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 3\] Append completed.\r\n"
                                      rb"b OK NOOP completed.\r\n$")
            self.assertEqual(out, expected, cut)
            self.assertEqual(self.drafts()._bodies[3], b"hello\n" + OTHER + b"\0!\n")

    def test_capabilities(self) -> None:
        s = self.session()
        s.login()
        caps = s.cmd(b"a CAPABILITY")
        self.assertIn(b" CATENATE ", caps)
        self.assertIn(b" URL-PARTIAL", caps)

    def test_parse_url(self) -> None:
        ref = parse_url(b"imap://boss;AUTH=*@h:143/A%20b/c;UIDVALIDITY=7/;UID=3/;SECTION=1.2"
                        b"/;PARTIAL=5", "boss", None)
        self.assertEqual((ref["box"], ref["uid"], ref["validity"], ref["offset"], ref["length"]),
                         ("A b/c", 3, 7, 5, None))
        self.assertEqual(ref["section"].part, [1, 2])
        with self.assertRaises(BadURL):
            parse_url(b"/INBOX/;UID=0", "boss", None)
        self.assertTrue(re.fullmatch(r"\w+", parse_url(b";UID=1", "boss", "INBOX")["box"]))
