"""UTF8=ACCEPT (RFC 6855): ENABLE in the authenticated state, mailbox names in UTF-8 both ways
once enabled (modified UTF-7 before), UTF-8 in quoted strings, APPEND's ``UTF8 (~{n})`` form
(every cut into reads), SEARCH CHARSET refused, no hibernation of such a session."""

from __future__ import annotations

import re

from mailsuite.imap import hibernate
from mailsuite.imap.parser import Cursor, ParseError
from mailsuite.imap.utf8 import utf8_message
from tests.test_imap_server import ImapTestCase, Session

CAFE = "Café".encode()


class Utf8Tests(ImapTestCase):
    def enabled(self) -> Session:
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"e ENABLE UTF8=ACCEPT"),
                         b"* ENABLED UTF8=ACCEPT\r\ne OK Enabled.\r\n")
        return s

    def test_capability_and_enable(self) -> None:
        """Advertised after login only; ENABLE lists it once; refused (not listed) while a
        mailbox is selected (RFC 6855 3: authenticated state only)."""
        s = self.session()
        self.assertNotIn(b"UTF8=ACCEPT", s.cmd(b"a CAPABILITY"))
        s.login()
        self.assertIn(b" UTF8=ACCEPT", s.cmd(b"b CAPABILITY"))
        s.cmd(b"c SELECT INBOX")
        self.assertEqual(s.cmd(b"d ENABLE UTF8=ACCEPT"), b"* ENABLED\r\nd OK Enabled.\r\n")
        self.assertFalse(s.proto.utf8_names)
        t = self.enabled()
        self.assertEqual(t.cmd(b"f ENABLE UTF8=ACCEPT"), b"* ENABLED\r\nf OK Enabled.\r\n")

    def test_names_in_utf8(self) -> None:
        """A folder made with a UTF-8 name is listed in UTF-8 to this session, in modified
        UTF-7 to one that did not enable; ``&`` is a plain character once enabled."""
        s = self.enabled()
        self.assertIn(b"c OK", s.cmd(b'c CREATE "' + CAFE + b'"'))
        self.assertIn(b"d OK", s.cmd(b'd CREATE "A&B"'))
        listed = s.cmd(b'l LIST "" "*"')
        self.assertIn(b'"/" "' + CAFE + b'"\r\n', listed)
        self.assertIn(b'"/" A&B\r\n', listed)
        self.assertIn(b'* STATUS "' + CAFE + b'" (MESSAGES 0)',
                      s.cmd(b'm STATUS "' + CAFE + b'" (MESSAGES)'))
        self.assertIn(b'"/" "' + CAFE + b'"\r\n', s.cmd(b'n LIST "" "Caf*"'))
        other = self.session()
        other.login()
        plain = other.cmd(b'l LIST "" "*"')
        self.assertIn(b'"/" Caf&AOk-\r\n', plain)
        self.assertIn(b'"/" A&-B\r\n', plain)

    def test_bad_utf8_name(self) -> None:
        s = self.enabled()
        self.assertTrue(s.cmd(b'a CREATE "Caf\xe9"').startswith(b"a BAD"))
        self.assertEqual(s.cmd(b"b NOOP"), b"b OK NOOP completed.\r\n")

    def test_search(self) -> None:
        """SEARCH with a CHARSET is BAD once enabled; a UTF-8 quoted string searches."""
        self.deliver()
        s = self.enabled()
        s.cmd(b"s SELECT INBOX")
        self.assertTrue(s.cmd(b"a SEARCH CHARSET UTF-8 ALL").startswith(b"a BAD"))
        self.assertEqual(s.cmd(b'b SEARCH SUBJECT "' + CAFE + b'"'),
                         b"* SEARCH 1\r\nb OK SEARCH completed.\r\n")
        other = self.session()
        other.login()
        other.cmd(b"s SELECT INBOX")
        self.assertIn(b"* SEARCH 1", other.cmd(b"c SEARCH CHARSET UTF-8 ALL"))

    def test_append_utf8_every_cut(self) -> None:
        """APPEND INBOX UTF8 (~{n+}...) with UTF-8 headers, then a FETCH, cut at every byte
        into two reads: the message stored as sent."""
        message = b"Subject: " + CAFE + b"\r\n\r\nbody\r\n"
        data = (b"a APPEND INBOX (\\Seen) UTF8 (~{%d+}\r\n" % len(message) + message
                + b")\r\nb SELECT INBOX\r\nc FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\n"
                + b"z LOGOUT\r\n")
        expected = None
        for i in range(1, len(data), 3):
            self.store._boxes.clear()
            s = self.enabled()
            out = s.send(data[:i]) + s.send(data[i:])
            out = re.sub(rb"(APPENDUID|UIDVALIDITY) \d+|MAILBOXID \(\w+\)", rb"\1 v", out)
            self.assertIn(b"a OK [APPENDUID", out)
            self.assertIn(b"Subject: " + CAFE, out)
            if expected is None:
                expected = out
            self.assertEqual(out, expected, i)

    def test_not_hibernated(self) -> None:
        s = self.enabled()
        s.cmd(b"i IDLE")
        self.assertFalse(hibernate.hibernatable(s.proto))


class Literal8Tests(ImapTestCase):
    def test_literal8(self) -> None:
        c = Cursor(b"~{3}abc rest")
        self.assertEqual(c.literal8(), b"abc")
        self.assertEqual(c.data[c.pos:], b" rest")
        for bad in (b"{3}abc", b"~{9}abc", b"~{x}"):
            with self.assertRaises(ParseError):
                Cursor(bad).literal8()

    def test_utf8_message(self) -> None:
        self.assertEqual(utf8_message(Cursor(b"UTF8 (~{2}hi)")), b"hi")
        for bad in (b"UTF9 (~{2}hi)", b"UTF8 ~{2}hi", b"UTF8 (~{2}hi"):
            with self.assertRaises(ParseError):
                utf8_message(Cursor(bad))

    def test_append_utf8_refused_shapes(self) -> None:
        s = self.session()
        s.login()
        self.assertTrue(s.cmd(b"a APPEND INBOX UTF8 {2+}\r\nhi").startswith(b"a BAD"))
        self.assertEqual(s.cmd(b"b NOOP"), b"b OK NOOP completed.\r\n")
