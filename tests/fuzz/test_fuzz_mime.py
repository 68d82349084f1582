"""MIME: BODYSTRUCTURE, BODY[section], ENVELOPE and SEARCH BODY/TEXT over generated MIME trees
(multiparts, message/rfc822, parameters, RFC 2231, encodings, CRLF) and arbitrary bytes.
Invariants: no exception; BODYSTRUCTURE is one well-formed list with a part for each part of the
tree; the size and line count it gives a part are those of the BODY[part] a client fetches."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.imap.addresses import parse_address_list
from mailsuite.imap.bodystructure import body_structure
from mailsuite.imap.encode import envelope
from mailsuite.imap.fetch import Section, section_bytes
from mailsuite.imap.message import MAX_MIME_DEPTH
from mailsuite.imap.search import Candidate, matches, parse_search
from mailsuite.wire import crlf
from tests.fuzz import fuzz

Tree = Any  # ("leaf", header lines, body) | ("multi", subtype, boundary, [Tree]) | ("msg", Tree)

_PARAMS = st.sampled_from([b"", b'; charset="utf-8"', b"; charset=iso-8859-1",
                           b"; name*=utf-8''%E2%82%AC.txt", b'; name="a\\"b"', b"; x",
                           b"; charset=\xff", b"; format=flowed; delsp=yes"])
_LEAF_TYPES = st.sampled_from([b"text/plain", b"text/html", b"application/octet-stream",
                               b"image/png", b"TEXT/PLAIN", b"text", b"", b"message/delivery"])
_EXTRA = st.sampled_from([b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: "
                          b"quoted-printable", b"Content-Disposition: attachment; filename=a",
                          b"Content-Language: en, de", b"Content-ID: <x@y>",
                          b"Content-Description: d", b"Content-Location: http://x/",
                          b"Content-MD5: abc", b"X-Other: \xc3\xa9"])
_BODIES = st.sampled_from([b"", b"hello\n", b"aGVsbG8=\n", b"caf=C3=A9\n", b"!!!\n",
                           b"line\nline\n", b"no newline", b"\xff\xfe\n", b"--b\n", b"\n\n"])
_BOUNDARIES = st.sampled_from(["b", "=_x", "a b", "0" * 70, "-", "simple"])


def leaves() -> st.SearchStrategy[Tree]:
    return st.tuples(st.just("leaf"), _LEAF_TYPES, _PARAMS, st.lists(_EXTRA, max_size=2),
                     _BODIES)


trees = st.recursive(
    leaves(),
    lambda kids: st.one_of(
        st.tuples(st.just("multi"), st.sampled_from(["mixed", "alternative", "digest"]),
                  _BOUNDARIES, st.lists(kids, min_size=1, max_size=3)),
        st.tuples(st.just("msg"), kids),
    ),
    max_leaves=6,
)


def render(tree: Tree, depth: int = 0) -> bytes:
    """The entity (header, blank line, body) of ``tree``; boundaries made unique per level."""
    if tree[0] == "leaf":
        _, ctype, params, extra, body = tree
        header = b"".join(x + b"\n" for x in extra)
        if ctype:
            header = b"Content-Type: " + ctype + params + b"\n" + header
        return header + b"\n" + body
    if tree[0] == "msg":
        return b"Content-Type: message/rfc822\n\nSubject: inner\n" + render(tree[1], depth + 1)
    _, sub, boundary, kids = tree
    mark = f"{boundary}{depth}".encode()
    body = b"".join(b"--" + mark + b"\n" + render(k, depth + 1) + b"\n" for k in kids)
    return (b'Content-Type: multipart/%s; boundary="%s"\n\n' % (sub.encode(), mark)
            + b"preamble\n" + body + b"--" + mark + b"--\n")


def read_list(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """One IMAP value: (list | bytes | None, end); asserts it is well-formed."""
    if data[pos:pos + 1] == b"(":
        out, pos = [], pos + 1
        while data[pos:pos + 1] != b")":
            assert pos < len(data), "unbalanced"
            if out and data[pos:pos + 1] == b" ":
                pos += 1
            elif out:  # only the parts of a multipart follow each other without a space
                assert isinstance(out[-1], list) and data[pos:pos + 1] == b"(", data[pos:]
            value, pos = read_list(data, pos)
            out.append(value)
        return out, pos + 1
    if data.startswith(b"NIL", pos):
        return None, pos + 3
    m = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"|\{(\d+)\}\r\n|(\d+)').match(data, pos)
    assert m is not None, data[pos:pos + 40]
    if m.group(2) is not None:
        end = m.end() + int(m.group(2))
        return data[m.end():end], end
    return (m.group(1) if m.group(1) is not None else m.group(3)), m.end()


def leaf_paths(tree: Tree, path: tuple[int, ...] = (), depth: int = 0) -> list[Any]:
    """(part number, tree) of every part BODYSTRUCTURE describes as a single part."""
    if tree[0] == "multi" and depth < MAX_MIME_DEPTH:
        return [p for i, kid in enumerate(tree[3], 1)
                for p in leaf_paths(kid, (*path, i), depth + 1)]
    return [((*path,) or (1,), tree)]


def structure_at(structure: Any, path: tuple[int, ...]) -> Any:
    for number in path:
        if isinstance(structure[0], list):  # a multipart: its parts come first
            structure = structure[number - 1]
    return structure


_SEARCH = [b"BODY hello", b"TEXT caf", b"BODY \xc3\xa9", b'HEADER Content-Type "multi"',
           b"FROM x", b"SUBJECT inner", b"OR BODY a NOT TEXT b"]


class MimeFuzz(unittest.TestCase):
    @fuzz(trees, st.booleans(), weight=2)
    def test_structure_matches_sections(self, tree: Tree, crlf_stored: bool) -> None:
        raw = b"From: a@b\nSubject: s\n" + render(tree)
        if crlf_stored:
            raw = raw.replace(b"\n", b"\r\n")
        for extended in (False, True):
            text = body_structure(raw, extended)
            structure, end = read_list(text)
            self.assertEqual(end, len(text))
        if tree[0] != "multi":
            return
        for path, leaf in leaf_paths(tree):
            part = structure_at(structure, path)
            body = section_bytes(raw, Section(list(path), "", []))
            self.assertEqual(int(part[6]), len(crlf(body)), (path, part, body))
            if leaf[0] == "leaf" and part[0] == b"TEXT":
                self.assertEqual(int(part[7]), len(crlf(body).split(b"\r\n")) - 1
                                 + (not crlf(body).endswith(b"\r\n") and body != b""))

    @fuzz(st.lists(st.sampled_from([
        b"Content-Type: multipart/mixed; boundary=b\n", b"Content-Type: message/rfc822\n",
        b"--b\n", b"--b--\n", b"\n", b"Content-Type: text/plain; charset=x\n", b"x\n",
        b"Content-Transfer-Encoding: base64\n", b"Content-Type: multipart/x; boundary=\"\xff\"\n",
        b"Content-Type: multipart/x; boundary*=utf-8''%E2%82%AC\n", b"--\xff\n", b"\r\n",
        b"From: \"a\" <b@c>, (c) d@e,, <@r:x@y>\n", b"Subject: =?utf-8?b?!!?=\n",
    ]) | st.binary(max_size=10), max_size=25).map(b"".join),
          st.lists(st.integers(0, 3), max_size=4), st.sampled_from(_SEARCH), weight=3)
    @example(b'Content-Type: multipart/x; boundary="\xff"\n\n--\xff\nx\n--\xff--\n', [1],
             b"BODY x")
    @example(b"Content-Type: multipart/x; boundary*=utf-8''%E2%82%AC\n\n--x\n", [1], b"TEXT x")
    def test_anything(self, raw: bytes, path: list[int], search: bytes) -> None:
        for extended in (False, True):
            text = body_structure(raw, extended)
            self.assertEqual(read_list(text)[1], len(text))
        for spec in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS"):
            if (path and 0 not in path) or spec not in ("MIME", ""):
                section_bytes(raw, Section([n for n in path if n], spec, [b"FROM"]))
        text = envelope(raw.split(b"\n\n")[0] + b"\n\n")
        self.assertEqual(read_list(text)[1], len(text))
        when = datetime(2026, 1, 1, tzinfo=UTC)
        candidate = Candidate(1, 1, frozenset(), when, len(raw), 1, 1, raw, raw)
        matches(parse_search(search)[1], candidate)

    @fuzz(st.text(max_size=60) | st.sampled_from([
        '"a" <b@c>', "a@b, (c) d@e", "<@r,@s:x@y>", "g: a@b, c@d;", "=?utf-8?q?x?= <a@b>",
        '"unclosed <a@b>', "<<>>", "a@", "@b", "(((", "\\"]), weight=3)
    @example("x)")  # looped for ever, appending empty atoms: FETCH ENVELOPE hung the server
    def test_address_lists(self, text: str) -> None:
        """Any From/To/Cc text: a list of addresses, no exception, no endless loop."""
        for address in parse_address_list(text[:60]):
            address.search_text()
