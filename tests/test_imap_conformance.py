"""RFC 3501 points where a scripted compliance run against the server found us wrong: folded
MIME parameters, ENVELOPE groups and source routes, and SEARCH on addresses written with comments.
FETCH of a message another session expunged: tests/integration/test_imap_sessions.py."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.trial import unittest

from mailsuite.imap.addresses import parse_address_list
from mailsuite.imap.bodystructure import body_structure
from mailsuite.imap.encode import envelope
from mailsuite.imap.fetch import parse_fetch_items, section_bytes
from mailsuite.imap.message import split_message
from mailsuite.imap.search import Candidate, matches, parse_search

FOLDED_BOUNDARY = (
    b"From: a@example.org\r\nMime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer\r\n part"\r\n\r\n'
    b"prologue\r\n--outer part\r\nContent-Type: text/x-custom; charset=us-ascii\r\n\r\nhi there\r\n"
    b"--outer part\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--outer part--\r\n"
)


class FoldedParameterTests(unittest.TestCase):
    def test_folded_boundary_is_unfolded(self) -> None:
        """A quoted boundary folded over two lines means the value with the line break removed
        (RFC 5322 2.2.3), so parts are found for BODY[n], BODY[n.MIME] and BODYSTRUCTURE."""
        def section(spec: bytes) -> bytes:
            item = parse_fetch_items(b"BODY.PEEK[" + spec + b"]")[0]
            return section_bytes(FOLDED_BOUNDARY, item.section)

        self.assertEqual(section(b"1"), b"hi there")
        self.assertEqual(section(b"1.MIME"),
                         b"Content-Type: text/x-custom; charset=us-ascii\r\n\r\n")
        self.assertEqual(section(b"2"), b"<b>x</b>")
        structure = body_structure(FOLDED_BOUNDARY, extended=False)
        self.assertEqual(
            structure,
            b'(("TEXT" "X-CUSTOM" ("charset" "us-ascii") NIL NIL "7BIT" 8 1)'
            b'("TEXT" "HTML" ("charset" "us-ascii") NIL NIL "7BIT" 8 1) "MIXED")',
        )
        self.assertIn(b'("boundary" "outer part")', body_structure(FOLDED_BOUNDARY, extended=True))


class EnvelopeAddressTests(unittest.TestCase):
    def addresses(self, field: bytes, value: bytes) -> bytes:
        env = envelope(b"Date: Sat, 01 Feb 2007 01:02:03 +0200\r\n"
                       + field + b": " + value + b"\r\n\r\n")
        return env

    def test_group_markers(self) -> None:
        """A group is given as (NIL NIL "name" NIL), its members, then (NIL NIL NIL NIL)
        (RFC 3501 7.4.2), an empty group too."""
        env = self.addresses(b"To", b"team: a@x.org, b@y.org;, solo: c@z.org;, nobody:;")
        self.assertIn(
            b'((NIL NIL "team" NIL)(NIL NIL "a" "x.org")(NIL NIL "b" "y.org")(NIL NIL NIL NIL)'
            b'(NIL NIL "solo" NIL)(NIL NIL "c" "z.org")(NIL NIL NIL NIL)'
            b'(NIL NIL "nobody" NIL)(NIL NIL NIL NIL))',
            env,
        )

    def test_source_route_and_comments(self) -> None:
        """A source route is the address's adl; comments inside an address are not part of it;
        a trailing comment names a bare addr-spec."""
        self.assertIn(b'((NIL "@relay.example" "user" "example.org"))',
                      self.addresses(b"From", b"<@relay.example:user@example.org>"))
        self.assertIn(b'((NIL NIL "user" "example.org"))',
                      self.addresses(b"From", b"<user (c1)@ (c2) example.org>"))
        self.assertIn(b'(("Real Name" NIL "user" "example.org"))',
                      self.addresses(b"From", b"user@example.org (Real Name)"))
        self.assertIn(b'(("Doe, John" NIL "jd" "example.org")(NIL NIL "x" "y.org"))',
                      self.addresses(b"From", b'"Doe, John" <jd@example.org>, x@y.org'))

    def test_parser_never_raises(self) -> None:
        """Broken address text gives some answer rather than an exception."""
        for junk in ("<<>>", "a@", "@b", ";;,,:", '"open', "(open", "a: b", "<@x"):
            parse_address_list(junk)


class SearchInternalDateTests(unittest.TestCase):
    def test_index_entry_day_in_its_own_zone(self) -> None:
        """SEARCH ON/SINCE/BEFORE on a store index entry use its epoch and zone as integers
        (no datetime per message) and agree with the date in its own zone."""
        from mailsuite.store.index import Entry

        epoch = int(datetime(2007, 3, 24, 21, 0, tzinfo=UTC).timestamp())  # 23:00 +0200
        zones = ((7200, b"24-Mar-2007"), (-3 * 3600, b"24-Mar-2007"), (4 * 3600, b"25-Mar-2007"))
        for tz, day in zones:
            e = Entry(1, 0, 0, 0, 0, 10, epoch, "f", "s", frozenset(), tz)
            self.assertEqual(e.internal_date.utcoffset().total_seconds(), tz)
            candidate = Candidate(1, 1, frozenset(), e, 10, 1, 1)
            for program, want in ((b"ON " + day, True), (b"SINCE " + day, True),
                                  (b"BEFORE " + day, False)):
                _, key = parse_search(program)
                self.assertEqual(matches(key, candidate), want, (tz, program))


class SearchAddressTests(unittest.TestCase):
    def hits(self, program: bytes, header: bytes) -> bool:
        _, key = parse_search(program)
        c = Candidate(1, 1, frozenset(), datetime(2024, 1, 1, tzinfo=UTC), 100, 1, 1,
                      header=split_message(header + b"\r\n\r\nbody\r\n")[0])
        return matches(key, c)

    def test_address_with_comments(self) -> None:
        """FROM user@host finds an address written with comments around its parts; display
        names in comments and group names are found too; a non-member is not."""
        self.assertTrue(self.hits(b"FROM user-from@domain.org",
                                  b"From: <user-from (x)@ (y) domain.org>"))
        self.assertTrue(self.hits(b"FROM realfrom", b"From: user-from@domain.org (RealFrom)"))
        to = b"To: groupname: g1@domain.org, g2@domain.org;,\r\n  other: g3@domain.org;"
        self.assertTrue(self.hits(b"TO groupname", to))
        self.assertTrue(self.hits(b"TO g3@domain", to))
        self.assertFalse(self.hits(b"TO g4", to))
