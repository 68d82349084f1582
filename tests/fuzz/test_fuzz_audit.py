"""Audit rules: the rule parser (auditrules.py), the MIME text decoder (mimetext.py) and the
literal pre-filter (needles.py). Invariants: a rule line gives a Rule or the parser's own
ValueError, never another exception; any bytes decode without an exception, within the
Limits (the text is capped per part and in total, memory stays bounded); the pre-filter
never hides a match the full pattern finds."""

from __future__ import annotations

import base64
import re

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.filter import mimetext
from mailsuite.filter.auditrules import match, parse_rule, parse_rules
from mailsuite.filter.needles import Needles
from mailsuite.tablefile import TableError
from tests.fuzz import fuzz
from tests.fuzz.drive import peak_memory

_RULE_WORDS = st.sampled_from([
    "r1", "名字", "/机密/", "/a|b/i", "#x#", "/(/", "/a\\/b/ms", "//", "/a*/", "WARN", "hold",
    "REJECT", "BCC:c@x.y", "BCC:", "bcc:nobody", "inbound", "outbound", "both", "x", "/",
    "\\", "/[/", "/(?P<n>a)(?P=n)/", "/\\b\\d{6}/", "/(?i:ab)c/x"])
rule_lines = st.lists(_RULE_WORDS, max_size=6).map(" ".join) | \
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60)

_HEADERS = st.sampled_from([
    b"Subject: =?utf-8?B?5py65a+G?=", b"Subject: =?gbk?Q?=BB=FA=C3=DC?= =?gbk?B?", b"X: =?",
    b"Content-Type: text/plain; charset=gb2312", b"Content-Type: text/html; charset=big5",
    b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: message/rfc822",
    b"Content-Type: multipart/digest; boundary=\"b\"", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable", b"Content-Type: text/plain; charset=zlib",
    b"Content-Disposition: attachment; filename*0*=gb2312''%BB; filename*1*=%FA",
    b"Content-Disposition: attachment; filename=\"=?gbk?B?u/rD3A==?=\"", b"\xff\xfe: \x80",
    b" continued", b"Content-Type: text/plain; charset=\"utf-8"])
_BODY = st.sampled_from([
    b"", b"--b\n", b"--b--\n", b"5py65a+G\n", b"=BB=FA=C3=DC\n", b"<p>x&amp;</p><style>",
    b"\xbb\xfa\xc3\xdc", b"\n", b"--bb\n", b"<<<<", b"plain words\n", b"==\n", b"=\n"])
messages = st.lists(_HEADERS | _BODY, max_size=30).map(b"\n".join) | st.binary(max_size=300)


class RuleParserFuzz(unittest.TestCase):
    @fuzz(rule_lines, weight=2)
    @example("r /a/ WARN both")
    def test_rule_or_value_error(self, line: str) -> None:
        """A line is a Rule or a ValueError; a whole file a list or a TableError."""
        try:
            rule = parse_rule(line)
        except ValueError:
            pass
        else:
            self.assertIsNone(rule.regex.search(""))
        try:
            parse_rules(f"# c\n{line}\n{line}\n", "f")
        except TableError as e:
            self.assertTrue(all(err.startswith("f:") for err in e.errors))


class DecoderFuzz(unittest.TestCase):
    limits = mimetext.Limits(part_bytes=200, total_bytes=600, parts=8, depth=4)

    @fuzz(messages, weight=2)
    @example(b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\n" * 50)
    @example(b"Content-Type: message/rfc822\n\n" * 40)
    def test_no_exception_and_bounded(self, data: bytes) -> None:
        """Any bytes: pieces of text within the caps, numbered parts, no exception."""
        pieces = mimetext.extract(data, self.limits)
        self.assertLessEqual(sum(len(p.text) for p in pieces), self.limits.total_bytes)
        for p in pieces:
            self.assertLessEqual(len(p.text), max(self.limits.part_bytes, mimetext.HEADER_BYTES))
            self.assertRegex(p.part, r"\A(HEADER|\d+(\.\d+)*(\.HEADER)?)\Z")

    @fuzz(st.integers(100, 2000), weight=0.1)
    def test_memory_bounded_on_a_big_message(self, kilobytes: int) -> None:
        """A big base64 text part allocates about its capped text, not the message again."""
        limits = mimetext.Limits(part_bytes=4096, total_bytes=8192)
        body = base64.encodebytes(b"\xbb\xfa" * (kilobytes * 512))
        data = b"Content-Type: text/plain; charset=gbk\nContent-Transfer-Encoding: base64\n\n"
        data += body
        mimetext.extract(data[:1000], limits)  # (the codec caches, once)
        with peak_memory() as peak:
            mimetext.extract(data, limits)
        self.assertLess(peak(), 100_000)


class NeedleFuzz(unittest.TestCase):
    @fuzz(st.sampled_from(["机密", "secret", "a(bc|de)+f", "pass\\s*word", "(?i:k)elvin",
                           "内部|资料", "x{2,}y", "st(r|R)asse"]),
          st.text("abcdefkrstxyKRSXYİK机密内部资料 ", max_size=30), st.booleans(), weight=2)
    def test_filter_never_hides_a_match(self, pattern: str, text: str, fold: bool) -> None:
        """Whenever the pattern matches, the pre-filter said it may."""
        regex = re.compile(pattern, re.I if fold else 0)
        if regex.search(text):
            self.assertTrue(Needles(regex).may_match(text, {}))
            self.assertEqual(len(match([parse_rule(f"n /{pattern}/{'' if fold else 'i'}"
                                                   " WARN both")],
                                       [mimetext.Piece("1", "text", text)])), 1)
