"""LIST / LSUB patterns matched in linear time (issue 9 S4): one LIST must not freeze the server;
nor may any other command line make a regex backtrack (FETCH's header field list).

The old matcher turned ``*%*%*%...b`` into a backtracking regex matched on the reactor (6 ``*%``
pairs against a 30-letter name: 60 s). The tests that would have hung use ``deadline``, a per-test
time-out that also interrupts code blocking the reactor (trial's own ``timeout`` cannot: it is a
reactor timer). No test asserts how fast anything is.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.imap.fetch import FetchSyntaxError, parse_fetch_items
from mailsuite.imap.listmatch import (
    MAX_PATTERN_TOKENS,
    ListMatcher,
    PatternTooLong,
    collapse,
    full_pattern,
)
from tests.test_imap_server import MESSAGE, ImapTestCase

#: Seconds a test may take that the old matcher would keep busy for hours.
DEADLINE = 30


@contextmanager
def deadline(case: unittest.TestCase, seconds: float = DEADLINE) -> Iterator[None]:
    """Fail the test if the block takes longer than ``seconds``: SIGALRM interrupts even a regex
    match running in C (``re`` checks for signals), which a reactor timer never could."""
    late: list[bool] = []

    def expire(signum: int, frame: Any) -> None:
        late.append(True)
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except BaseException:
        if not late:
            raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if late:  # whatever the interrupted code made of the TimeoutError (the server: SERVERBUG)
        case.fail(f"did not finish within {seconds} s")


def reference_match(pattern: str, name: str) -> bool:
    """RFC 3501 6.3.8 read literally: ``*`` matches any run of characters, ``%`` any run
    without '/'; a pattern starting with INBOX (any case) matches those five letters in any
    case. Exponential without the cache, quadratic with it: for checking only."""
    fold = 5 if pattern[:5].upper() == "INBOX" else 0

    @cache
    def at(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        token = pattern[i]
        if token == "*":
            return any(at(i + 1, k) for k in range(j, len(name) + 1))
        if token == "%":
            k = j
            while not at(i + 1, k):
                if k == len(name) or name[k] == "/":
                    return False
                k += 1
            return True
        if j == len(name):
            return False
        same = name[j].upper() == token.upper() if i < fold else name[j] == token
        return same and at(i + 1, j + 1)

    return at(0, 0)


_PATTERNS = st.text(alphabet="ab/*%", max_size=12)
_NAMES = st.text(alphabet="ab/", max_size=12)
_CASES = st.sampled_from(["INBOX", "inbox", "InBoX", "INB", "inboxa"])


class MatcherPropertyTests(unittest.TestCase):
    @settings(max_examples=1500, deadline=None)
    @given(pattern=_PATTERNS, name=_NAMES)
    def test_agrees_with_the_reference(self, pattern: str, name: str) -> None:
        """Any pattern of letters, '/', '*' and '%' against any name: the same answer as the
        literal reading of RFC 3501 (the % that stops at '/', empty runs, collapsed wildcards)."""
        self.assertEqual(ListMatcher([pattern]).match(name), reference_match(pattern, name))

    @settings(max_examples=500, deadline=None)
    @given(head=_CASES, pattern=_PATTERNS, name_head=_CASES, name=_NAMES)
    def test_inbox_prefix_in_any_case(
        self, head: str, pattern: str, name_head: str, name: str
    ) -> None:
        """A pattern starting with INBOX in any case matches INBOX in any case, and only there."""
        pattern, name = head + pattern, name_head + name
        self.assertEqual(ListMatcher([pattern]).match(name), reference_match(pattern, name))

    @settings(max_examples=500, deadline=None)
    @given(patterns=st.lists(_PATTERNS, max_size=4), name=_NAMES)
    def test_several_patterns_match_as_any_of_them(self, patterns: list[str], name: str) -> None:
        """LIST (p1 p2 ...) in one automaton: a name matches when one of the patterns does; no
        state leaks from one pattern into the next."""
        self.assertEqual(ListMatcher(patterns).match(name),
                         any(reference_match(p, name) for p in patterns))

    @given(pattern=_PATTERNS)
    def test_collapse_keeps_the_meaning(self, pattern: str) -> None:
        """Collapsing leaves no two wildcards in a row and matches the same names."""
        short = collapse(pattern)
        self.assertNotRegex(short, r"[*%]{2}")
        for name in ("", "a", "ab/b", "a/", "/b/a", "ba/ab/"):
            self.assertEqual(reference_match(short, name), reference_match(pattern, name))


class MatcherTests(unittest.TestCase):
    def test_reference_and_pattern(self) -> None:
        """The reference is prefixed unless the pattern starts at the root ('/')."""
        self.assertEqual(full_pattern("INBOX/", "%"), "INBOX/%")
        self.assertEqual(full_pattern("Work/", "/x"), "/x")
        self.assertEqual(full_pattern("", "*"), "*")

    def test_wildcard_bomb_is_linear(self) -> None:
        """4,000 ``*%`` pairs before a 'b' against 4,000 letters (and the issue's own pattern):
        each character of the name is one step, so this is immediate; a backtracking regex does
        not finish in a lifetime."""
        with deadline(self):
            self.assertFalse(ListMatcher(["*%" * 4000 + "b"]).match("a" * 4000))
            self.assertTrue(ListMatcher(["*%" * 4000 + "b"]).match("a" * 4000 + "b"))
            self.assertFalse(ListMatcher(["%a" * 3000 + "%b"]).match("a" * 5000))

    def test_patterns_over_the_limit_refused(self) -> None:
        """More than MAX_PATTERN_TOKENS after collapsing (over all patterns) is refused before
        any work; a long run of wildcards collapses to one and is fine."""
        self.assertTrue(ListMatcher(["*" * 100000]).match("anything"))
        with self.assertRaises(PatternTooLong):
            ListMatcher(["a" * (MAX_PATTERN_TOKENS + 1)])
        with self.assertRaises(PatternTooLong):
            ListMatcher(["a" * 5000, "b" * 5000])
        with self.assertRaises(PatternTooLong):
            ListMatcher([""] * (MAX_PATTERN_TOKENS + 1))


class ListCommandTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.s = self.session()
        self.s.login()
        self.assertIn(b"c OK", self.s.cmd(b"c CREATE " + b"a" * 30))

    def test_issue_pattern_answers_at_once(self) -> None:
        """The issue's LIST with 10 ``*%`` pairs (the old code: hours at 100% CPU, no greeting on
        any port) is answered, with no match; with a final 'a' it lists the folder."""
        with deadline(self):
            out = self.s.cmd(b'l1 LIST "" "' + b"*%" * 10 + b'b"')
            self.assertNotIn(b"* LIST", out)
            self.assertIn(b"l1 OK", out)
            out = self.s.cmd(b'l2 LSUB "" "' + b"*%" * 10 + b'b"')
            self.assertIn(b"l2 OK", out)
            out = self.s.cmd(b'l3 LIST "" "' + b"*%" * 10 + b'a"')
            self.assertIn(b'* LIST (\\HasNoChildren) "/" ' + b"a" * 30 + b"\r\n", out)

    def test_several_patterns_and_reference(self) -> None:
        """LIST with a pattern list (RFC 5258) and a reference still selects as before."""
        self.s.cmd(b"c2 CREATE Work/2026")
        out = self.s.cmd(b'l1 LIST "" (INBOX "W%")')
        self.assertIn(b'"/" INBOX\r\n', out)
        self.assertIn(b'"/" Work\r\n', out)
        self.assertNotIn(b"2026", out)
        out = self.s.cmd(b'l2 LIST "Work/" "%"')
        self.assertIn(b'"/" Work/2026\r\n', out)
        self.assertEqual(out.count(b"* LIST"), 1)
        out = self.s.cmd(b'l3 LIST "" "inbox"')
        self.assertIn(b'"/" INBOX\r\n', out)

    def test_too_long_patterns_get_limit(self) -> None:
        """Patterns longer than the limit get NO [LIMIT], not minutes of work."""
        literal = b"x" * (MAX_PATTERN_TOKENS + 10)
        self.assertTrue(self.s.cmd(b'l1 LIST "" {%d}' % len(literal)).startswith(b"+ "))
        self.assertIn(b"l1 NO [LIMIT] LIST patterns too long", self.s.cmd(literal))


class FieldListTests(ImapTestCase):
    def test_unclosed_quote_in_header_fields_is_bad_at_once(self) -> None:
        """``BODY[HEADER.FIELDS ("\\"\\"...)]`` with no closing quote: the old field regex
        rescanned from every quote (quadratic: 13 s for 64 KB, minutes for the 300 KB given to
        the parser here, which is past what the wire lets one command carry); now a syntax error
        at once, and BAD on the wire (60 KB, under the command limit). Closed quoted names still
        work."""
        names = b'"' + b'\\"' * 150000
        with deadline(self):
            self.assertRaises(FetchSyntaxError, parse_fetch_items,
                              b"BODY.PEEK[HEADER.FIELDS (" + names + b")]")
        self.deliver(MESSAGE)
        s = self.session()
        s.select()
        names = names[:60001]
        with deadline(self):
            s.cmd(b"f1 FETCH 1 BODY.PEEK[HEADER.FIELDS ({%d+}" % len(names))
            out = s.cmd(names + b")]")
        self.assertEqual(out.split(b" ")[:2], [b"f1", b"BAD"])
        out = s.cmd(b'f2 FETCH 1 BODY.PEEK[HEADER.FIELDS ("Subject" To)]')
        self.assertIn(b"Subject: Caf", out)
        self.assertIn(b"To: boss@example.com", out)
        self.assertIn(b"f2 OK", out)
