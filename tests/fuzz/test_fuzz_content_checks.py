"""Postfix's content checks (mailsuite.filter.checks, regexptable): a table of any text gives a
Table or a TableError naming a line of it, never another exception; a Table looks any text
up; any message goes through the scan of every class with every action without an exception,
and a scan that changes nothing leaves the bytes as they were."""

from __future__ import annotations

from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.filter import checks
from mailsuite.filter.regexptable import TableError, parse_table
from mailsuite.mta.transaction import Client, Envelope, Message, Recipient
from tests.fuzz import fuzz

_TABLE_LINES = st.lists(st.one_of(
    st.sampled_from([
        "/^Subject: (.*)/ REPLACE Subject: $1", "!/^From:/ WARN", "if /^X-/", "endif",
        "if !/a/", "/a/!/b/ DUNNO", "/[[:alpha:]]+/i INFO x", "/\\<w\\>/m OK", "/a\\(b\\)/x OK",
        "#c", "", "  continued", "/(/ REJECT", "/a/ FROB", "/x/ REDIRECT a@b", "/x/ BCC $1",
        "/(a)|b/ PREPEND X-A: $1", "/[/ IGNORE", "/a/q HOLD", "/a/U HOLD", "|x|s STRIP",
        "/a/ FILTER smtp:x", "/a{2,1}/ PASS", "/(?P<n>a)/ DISCARD $2", "/\\p{Han}/ REJECT",
        "/$$/ REJECT $$ ${1", "endif x", "IF /a/ b", "/a/E OK", "/a/A OK",
    ]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
), max_size=8).map("\n".join)
_SUBJECTS = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


class TableFuzz(unittest.TestCase):
    @fuzz(_TABLE_LINES, st.sampled_from(["regexp", "pcre"]), _SUBJECTS, weight=4)
    def test_any_table_parses_or_names_its_line(self, text: str, kind: str,
                                                subject: str) -> None:
        try:
            table = parse_table(text, kind, "/t", checks.validate_action)
        except TableError as e:
            self.assertTrue(str(e).startswith("/t:"))
            self.assertTrue(1 <= e.line <= text.count("\n") + 1, str(e))
            return
        found = table.lookup(subject)
        if found is not None:
            result, line = found
            self.assertIsNone(checks.validate_action(result) if "$" not in text else None)
            self.assertTrue(1 <= line <= text.count("\n") + 1)


_PIECES = st.lists(st.sampled_from([
    b"Subject: hello\n", b"X-Mailer: bulk\n", b" folded\n", b"\tfolded\n", b"Content-Type: "
    b"multipart/mixed; boundary=b\n", b"Content-Type: message/rfc822\n", b"\n", b"--b\n",
    b"--b--\n", b"body line\n", b"secret\n", b"x" * 300 + b"\n", b"not a header\n", b"From: a@b\n",
    b"Content-Type: multipart/alternative; boundary=\"c\"\n", b"--c\n", b"--c--\n", b"\xff\xfe\n",
    b"no newline at the end",
]), max_size=25).map(b"".join)
_RULES = """\
/^Subject: (.*)/ REPLACE Subject: [x] $1
/^X-Mailer/ PREPEND X-Seen: yes
/folded/ IGNORE
/^secret/ REPLACE [gone]
/^body/ PREPEND > quote
/^From/ BCC audit@example.com
/x{200}/ WARN long
/^--b$/ INFO boundary
/^Content-Type: message/ HOLD
/^not a header/ STRIP
"""


class _Fixed:
    def __init__(self, text: str) -> None:
        self.table = parse_table(text, "regexp", "/t", checks.validate_action)

    def current(self) -> tuple[object, None]:
        return self.table, None


class ScanFuzz(unittest.TestCase):
    @fuzz(_PIECES, st.sampled_from(list(checks.KEYS)), st.integers(0, 400), weight=3)
    def test_any_message_scans(self, data: bytes, key: tuple[str, str], limit: int) -> None:
        tables = checks.Tables({key[0]: [_Fixed(_RULES)]}, body_limit=limit, line_limit=64)
        env = Envelope("Q", "a@b", [Recipient("c@d")], Client("smtp"))
        out = checks.Scan(tables, checks.Context.of(Message(env, data)), data).run()
        edited = checks.apply_edits(data, out.edits)
        if not out.edits:
            self.assertEqual(edited, data)
        self.assertIsInstance(edited, bytes)
        self.assertLessEqual(len(out.lines), data.count(b"\n") * 3 + 3)
