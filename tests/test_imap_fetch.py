"""FETCH attribute parsing and section extraction from raw bytes (mailsuite.imap.fetch), and
search-key parsing (mailsuite.imap.search)."""

from __future__ import annotations

from twisted.trial import unittest

from mailsuite.imap.encode import envelope
from mailsuite.imap.fetch import TO_END, FetchSyntaxError, parse_fetch_items, section_bytes
from mailsuite.imap.parser import parse_sequence_set
from mailsuite.imap.search import SearchSyntaxError, parse_search

MULTIPART = (
    b"From: a@b.c\n"
    b"Subject: parts\n"
    b'Content-Type: multipart/mixed; boundary="XX"\n'
    b"\n"
    b"preamble\n"
    b"--XX\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"first part\n"
    b"--XX\n"
    b"Content-Type: message/rfc822\n"
    b"\n"
    b"Subject: inner\n"
    b"\n"
    b"inner body\n"
    b"--XX--\n"
    b"epilogue\n"
)


class ParseFetchTests(unittest.TestCase):
    def test_items_any_case(self) -> None:
        """Items parse in any case; RFC822.PEEK is a peek answered as RFC822."""
        items = parse_fetch_items(
            b"(uid Flags rfc822.peek body.peek[header.fields (From \"To\")]<0.2048>)")
        self.assertEqual([i.name for i in items], ["UID", "FLAGS", "RFC822", "BODY[]"])
        self.assertTrue(items[2].peek and items[3].peek)
        self.assertEqual(items[3].section.fields, [b"FROM", b"TO"])  # type: ignore[union-attr]
        self.assertEqual(items[3].partial, (0, 2048))
        self.assertEqual(parse_fetch_items(b"BODY[]<7>")[0].partial, (7, TO_END))

    def test_single_item_and_seen(self) -> None:
        """A bare item without parentheses; BODY[] and RFC822 set \\Seen, RFC822.HEADER does not."""
        self.assertTrue(parse_fetch_items(b"BODY[]")[0].sets_seen())
        self.assertTrue(parse_fetch_items(b"RFC822")[0].sets_seen())
        self.assertFalse(parse_fetch_items(b"RFC822.HEADER")[0].sets_seen())

    def test_errors(self) -> None:
        """Unknown items, bad sections and zero-length partials are syntax errors."""
        for bad in (b"(FLAGS BOGUS)", b"BODY[FOO]", b"BODY[]<0.0>", b"BODY[MIME]", b"(FLAGS", b"",
                    b"()", b"( )"):
            self.assertRaises(FetchSyntaxError, parse_fetch_items, bad)


class SectionTests(unittest.TestCase):
    def section(self, text: bytes) -> bytes:
        item = parse_fetch_items(b"BODY.PEEK[" + text + b"]")[0]
        assert item.section is not None
        return section_bytes(MULTIPART, item.section)

    def test_part_numbers(self) -> None:
        """BODY[1], BODY[1.MIME], BODY[2] (a message/rfc822 part) and BODY[2.HEADER] / [2.TEXT]."""
        self.assertEqual(self.section(b"1"), b"first part")
        self.assertEqual(self.section(b"1.MIME"), b"Content-Type: text/plain\n\n")
        self.assertEqual(self.section(b"2"), b"Subject: inner\n\ninner body")
        self.assertEqual(self.section(b"2.HEADER"), b"Subject: inner\n\n")
        self.assertEqual(self.section(b"2.TEXT"), b"inner body")
        self.assertEqual(self.section(b"3"), b"")

    def test_crlf_message_sections(self) -> None:
        """A message stored with CRLF line ends has the same sections as its LF form: the
        header ends at the CRLF blank line and CRLF boundary lines delimit the parts."""
        crlf_message = MULTIPART.replace(b"\n", b"\r\n")
        for text in (b"HEADER", b"TEXT", b"1", b"1.MIME", b"2", b"2.HEADER", b"2.TEXT", b"3"):
            item = parse_fetch_items(b"BODY.PEEK[" + text + b"]")[0]
            assert item.section is not None
            self.assertEqual(section_bytes(crlf_message, item.section),
                             self.section(text).replace(b"\n", b"\r\n"), text)

    def test_single_part_body_is_part_one(self) -> None:
        """In a non-multipart message BODY[1] is the body."""
        item = parse_fetch_items(b"BODY[1]")[0]
        assert item.section is not None
        self.assertEqual(section_bytes(b"Subject: x\n\nhello\n", item.section), b"hello\n")

    def test_header_without_body(self) -> None:
        """A message with no blank line: HEADER is all of it, TEXT is empty."""
        item = parse_fetch_items(b"BODY[TEXT]")[0]
        assert item.section is not None
        self.assertEqual(section_bytes(b"Subject: x\n", item.section), b"")

    def test_envelope_defaults_and_escapes(self) -> None:
        """Sender/Reply-To default to From; quotes are escaped; missing fields are NIL."""
        env = envelope(b'From: "A \\"B\\"" <a@b.c>\nSubject: say "hi"\n\n')
        self.assertEqual(
            env,
            b'(NIL "say \\"hi\\"" (("A \\"B\\"" NIL "a" "b.c")) (("A \\"B\\"" NIL "a" "b.c")) '
            b'(("A \\"B\\"" NIL "a" "b.c")) NIL NIL NIL NIL NIL)',
        )


class ParseSearchTests(unittest.TestCase):
    def test_sequence_sets(self) -> None:
        """1:3,5,7:* parses; 0 and junk do not."""
        self.assertEqual(parse_sequence_set(b"1:3,5,7:*"), [(1, 3), (5, 5), (7, None)])
        for bad in (b"0", b"1:x", b""):
            self.assertRaises(ValueError, parse_sequence_set, bad)

    def test_nested_program(self) -> None:
        """CHARSET, OR, NOT, parentheses and quoted strings build a tree."""
        charset, key = parse_search(b'CHARSET UTF-8 OR (FROM "a b" UNSEEN) NOT UID 4:*')
        self.assertEqual(charset, "UTF-8")
        self.assertEqual(
            key,
            ("AND", [("OR", ("AND", [("FROM", b"a b"), ("UNSEEN",)]),
                      ("NOT", ("UID", [(4, None)])))]),
        )

    def test_errors(self) -> None:
        """Unknown keys, missing arguments, bad dates and unbalanced parentheses are errors."""
        for bad in (b"FROB", b"FROM", b"SINCE 32-Jan-2026", b"(ALL", b"", b"LARGER x"):
            self.assertRaises(SearchSyntaxError, parse_search, bad)
