"""The mbox parser and writer (mailsuite.store.mboxformat): what the writer renders parses back
to the same messages (From_ lines, ``>From`` quoting, CRLF or LF, a last message without its
blank line or final newline, Status / X-Status / X-Keywords, X-IMAPbase, X-UID); arbitrary bytes
parse without an error into ordered, disjoint messages, the same whole or a window at a time."""

from __future__ import annotations

import os
import tempfile

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial import unittest

from mailsuite.store import mboxformat
from mailsuite.store.mboxformat import (
    from_line_date, header_end, header_flags, imap_base, make_from_line, parse, served_header,
    to_stored, with_status, x_uid,
)
from mailsuite.wire import wire_size
from tests.fuzz import fuzz
from tests.test_store_mbox import MboxTestCase

_LINES = st.sampled_from([
    b"Subject: s", b"From: a@b", b"", b"From x", b"From a Tue Nov 28 06:01:02 2026",
    b">From y", b"body", b"Status: RO", b"X-UID: 7", b"\r", b" cont", b"From ", b"x" * 100,
    b"Content-Length: 3", b"\xff",
])
messages = st.lists(_LINES, max_size=8).map(b"\n".join) | st.binary(max_size=60)
senders = st.sampled_from(["a@b.example", "", "MAILER-DAEMON", "x y", "\u00e9@x", "a\nb"])
# whole seconds from 1971 to 2100, away from the local DST fold
whens = st.integers(3600 * 24 * 366, 4102444800)
FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Work", "Junk", "a_b"]


def stored(data: bytes, crlf: bool) -> bytes:
    return to_stored(data).replace(b"\n", b"\r\n") if crlf else to_stored(data)


def render(items: list[tuple[str, bytes, int]], ending: str, crlf: bool) -> bytes:
    """What the delivery writes (mboxfile.append_many); ``ending``: ``blank`` (each message
    ends in a blank line), ``newline`` (the last without its blank line) or ``none`` (nor its
    final newline: a writer that crashed)."""
    out = []
    for i, (sender, data, when) in enumerate(items):
        message = stored(data, crlf)
        last = i == len(items) - 1
        if last and ending == "none":
            message = message[:-1]
        out.append(make_from_line(sender, when) + message + (b"" if last and ending != "blank"
                                                             else b"\n"))
    return b"".join(out)


class RoundTripFuzz(unittest.TestCase):
    @fuzz(st.lists(st.tuples(senders, messages, whens), max_size=5),
          st.sampled_from(["blank", "newline", "none"]), st.booleans(), weight=4)
    @example([("a@b", b"", 86400 * 400)], "none", False)
    @example([("a@b", b"From x\n\nFrom y\n", 86400 * 400)] * 2, "blank", True)
    @example([("a@b", b"Subject: s\n\n", 86400 * 400)], "newline", False)
    def test_parse_what_was_written(self, items: list[tuple[str, bytes, int]], ending: str,
                                    crlf: bool) -> None:
        buf = render(items, ending, crlf)
        found = parse(buf, 0, len(buf))
        self.assertEqual(len(found), len(items), buf)
        for i, ((sender, data, when), p) in enumerate(zip(items, found, strict=True)):
            message = stored(data, crlf)
            if i == len(items) - 1 and ending == "none":
                message = message[:-1]
            if i == len(items) - 1 and ending != "blank" and message.endswith(b"\n\n"):
                # a file that ends in a blank line: read as the usual blank line after the
                # last message, not as the last line of a message cut off before its own
                message = message[:-1]
            self.assertEqual(buf[p.body_off:p.end], message)
            self.assertTrue(p.body_off <= p.hdr_end <= p.end, p)
            self.assertEqual(buf[p.offset:p.body_off], make_from_line(sender, when))
            self.assertEqual(p.date, from_line_date(make_from_line(sender, when)[:-1]))

    @fuzz(whens, senders, weight=2)
    def test_from_line_date(self, when: int, sender: str) -> None:
        line = make_from_line(sender, when)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(from_line_date(line[:-1]), when)

    @fuzz(st.lists(_LINES.filter(lambda x: b":" in x and not x.startswith(b"From ")),
                   max_size=5), st.frozensets(st.sampled_from(FLAGS)), st.booleans(), weight=4)
    def test_status_headers_round_trip(self, lines: list[bytes], flags: frozenset[str],
                                       crlf: bool) -> None:
        """The flags written into Status / X-Status / X-Keywords read back; the headers
        clients are shown stay byte for byte."""
        eol = b"\r\n" if crlf else b"\n"
        header = b"".join(line + eol for line in lines) + eol
        written = with_status(header, flags)
        self.assertEqual(header_flags(written)[0], flags)
        self.assertEqual(served_header(written), served_header(header))
        self.assertTrue(written.endswith(b"\n" + eol), written)

    @fuzz(st.integers(1, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
          st.lists(st.sampled_from(["$Work", "Junk", "\\Seen", "a"]), max_size=3),
          st.integers(1, 0xFFFFFFFF), weight=2)
    def test_dovecot_headers_round_trip(self, validity: int, last: int, keywords: list[str],
                                        uid: int) -> None:
        header = (b"Subject: x\nX-IMAPbase: %d %d %s\nX-UID: %d\n\n"
                  % (validity, last, " ".join(keywords).encode(), uid))
        self.assertEqual(imap_base(header),
                         (validity, last, [k for k in keywords if not k.startswith("\\")]))
        self.assertEqual(x_uid(header), uid)
        self.assertEqual(served_header(header), b"Subject: x\n\n")


class ArbitraryFuzz(unittest.TestCase):
    _chunks = st.lists(st.sampled_from([
        b"From a Tue Nov 28 06:01:02 2026\n", b"From b  Mon Jan  1 00:00:00 1990\n", b"\n",
        b"Subject: x\n", b"\r\n", b"body\n", b"From x\n", b">From a\n", b"Status: O\n",
        b"X-Status: AF\n", b"X-Keywords: $a b\n", b"\n\n",
    ]) | st.binary(max_size=8), max_size=30).map(b"".join)

    @fuzz(_chunks, weight=3)
    @example(b"From a Tue Nov 28 06:01:02 2026\n\nFrom b Tue Nov 28 06:01:02 2026\n")
    def test_parse_anything(self, buf: bytes) -> None:
        found = parse(buf, 0, len(buf))
        last = 0
        for p in found:
            self.assertTrue(last <= p.offset < p.body_off <= p.hdr_end <= p.end <= len(buf), p)
            self.assertTrue(buf.startswith(b"From ", p.offset))
            last = p.end
        # nothing after ``stop`` counts (a window of the file is parsed like the whole)
        self.assertEqual(found, parse(buf + b"\n", 0, len(buf)))

    @fuzz(_chunks, st.integers(8, 64), weight=2)
    def test_windows_parse_like_the_whole(self, buf: bytes, window: int) -> None:
        """The file read a window at a time (mboxfile.parse_file) gives the same messages."""
        self.patch(mboxformat, "WINDOW", window)
        with tempfile.TemporaryFile() as f:
            f.write(buf)
            f.flush()
            fd = f.fileno()
            self.assertEqual(mboxformat.parse_file(fd, 0, len(buf), False),
                             parse(buf, 0, len(buf)))



class StoreFuzz(MboxTestCase):
    """Through the real MboxStore on files: what is delivered is what a client reads back."""

    @fuzz(st.lists(messages, min_size=1, max_size=4), st.booleans(), weight=0.7)
    @example([b"", b"Status: RO\n\nFrom x", b"\r\n\r\nFrom a Tue Nov 28 06:01:02 2026\r\n"],
             True)
    def test_delivered_read_back(self, datas: list[bytes], reparse: bool) -> None:
        self.setUp()  # new files for each example
        store = self.make_store()
        for data in datas:
            self.successResultOf(store.deliver(self.account, data, "a@example.test"))
        if reparse:  # once with our index, then from the file alone
            self.successResultOf(store.open(self.account)).close()
            os.unlink(self.index_path)
            store = self.make_store()
        box = self.successResultOf(store.open(self.account))
        self.assertEqual(len(box.messages), len(datas))
        for data, info in zip(datas, box.messages, strict=True):
            message = to_stored(data)
            end = header_end(message, 0, len(message))
            served = served_header(message[:end]) + message[end:]
            self.assertEqual(self.successResultOf(box.read(info.uid)), served)
            self.assertEqual(info.size, wire_size(served))
        box.close()
