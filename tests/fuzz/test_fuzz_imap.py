"""IMAP: the command parsers alone, then whole sessions of generated commands cut into arbitrary
reads. Invariants: only the parser's own error escapes a parser; every command gets exactly one
tagged reply, in order, whatever the reads; the replies do not depend on how the bytes were cut;
nothing is logged as a failure; a session goes on after a BAD; nesting past MAX_NESTING and
commands over the size limits are refused, with memory bounded."""

from __future__ import annotations

from hypothesis import example
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite.imap.fetch import FetchSyntaxError, fetch_plan
from mailsuite.imap.parser import (
    MAX_NESTING, Cursor, ParseError, encode_mailbox, parse_date_time,
    parse_flag_list, parse_sequence_set,
)
from mailsuite.imap.search import SearchSyntaxError, parse_search
from mailsuite.imap.reader import LOGIN_MAX_COMMAND
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore
from tests.fuzz import fuzz
from tests.fuzz import imapgrammar as g
from tests.fuzz.drive import check_imap_output, cut, feed, imap_responses, peak_memory
from tests.test_imap_server import BOSS, MESSAGE, WHEN, make_config, make_portal
import contextlib

MULTIPART = (b"From: a@example.org\nSubject: parts\nMIME-Version: 1.0\n"
             b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\n"
             b"one\n--XX\nContent-Type: message/rfc822\n\nSubject: inner\n\ntwo\n--XX--\n")

#: headers anyone can mail: a stray parenthesis in From, an 8-bit boundary
HOSTILE = (b"From: x)\nTo: (((, <@a:\nSubject: =?utf-8?b?!!?=\n"
           b'Content-Type: multipart/mixed; boundary="\xff"\n\n--\xff\nx\n--\xff--\n')


class Server:
    """A new store (three messages in INBOX), factory and connection, in ``state``."""

    def __init__(self, state: str = "select", max_line: int = 64 * 1024) -> None:
        self.clock = Clock()
        self.store = MemoryStore(now=lambda: WHEN)
        for data in (MESSAGE, MULTIPART, HOSTILE):
            self.store.deliver(BOSS, data, "bob@example.org")
        portal, _ = make_portal(self.store)
        maillog = MailLog(None, "mail.example.com", now=lambda: 0.0)
        factory = IMAPFactory(make_config(imap_max_line_length=max_line), portal, maillog,
                              clock=self.clock)
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 143),
                                         peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto.makeConnection(self.transport)
        if state != "unauth":
            self.send([b"L1 LOGIN boss secret\r\n"])
        if state == "select":
            self.send([b"S1 SELECT INBOX\r\n"])
        self.transport.clear()

    def send(self, pieces: list[bytes]) -> bytes:
        return feed(self.proto, self.transport, pieces, self.clock)


LIMIT_BYE = b"* BYE Too many invalid IMAP commands."


def one_at_a_time(state: str, lines: list[bytes]) -> tuple[Server, list[bytes]]:
    """Each command in one read, answered before the next: (server, output per command)."""
    server = Server(state)
    return server, [server.send([line]) for line in lines]


class ParserFuzz(unittest.TestCase):
    """The parsers alone, on generated and arbitrary input."""

    @fuzz(g.seq_ranges, weight=4)
    def test_sequence_set_round_trip(self, ranges: list[tuple[int | None, int | None]]) -> None:
        text = b",".join(g._range(r) for r in ranges)
        self.assertEqual(parse_sequence_set(text), [(lo, hi) for lo, hi in ranges])
        self.assertEqual(Cursor(text + b" x").sequence_set(), parse_sequence_set(text))

    @fuzz(st.binary(max_size=40) | g.seq_sets, weight=4)
    def test_sequence_set_only_parse_errors(self, text: bytes) -> None:
        with contextlib.suppress(ParseError):
            Cursor(text).sequence_set()

    @fuzz(st.binary(max_size=60) | g.flag_lists() | g.strings(), weight=4)
    def test_cursor_only_parse_errors(self, text: bytes) -> None:
        for read in ("astring", "nstring", "list_mailbox", "mailbox", "paren_list", "number",
                     "flag", "string"):
            with contextlib.suppress(ParseError):
                getattr(Cursor(text), read)()
        with contextlib.suppress(ParseError):
            parse_flag_list(Cursor(text).paren_list())

    @fuzz(st.text(st.characters(exclude_categories=["Cs"]), max_size=20), weight=4)
    @example("\n")  # Twisted's codec: "&-", read back as "&"
    @example("\x1f\n\x1f")  # a quoted string with a raw LF in it
    def test_mailbox_name_round_trip(self, name: str) -> None:
        """A name the server writes (LIST, LSUB) reads back as the same name (INBOX in any
        case is INBOX)."""
        wire = encode_mailbox(name)
        head, sep, tail = name.partition("/")
        expected = "INBOX" + sep + tail if head.upper() == "INBOX" else name
        self.assertEqual(Cursor(wire).mailbox(), expected)

    @fuzz(st.binary(max_size=40) | g.dates, weight=2)
    def test_date_time_only_parse_errors(self, text: bytes) -> None:
        with contextlib.suppress(ParseError):
            parse_date_time(text)

    @fuzz(g.search_programs() | st.binary(max_size=60), weight=4)
    def test_search_only_syntax_errors(self, text: bytes) -> None:
        with contextlib.suppress(SearchSyntaxError):
            parse_search(text)

    @fuzz(g.fetch_items() | st.binary(max_size=60), st.booleans(), weight=4)
    def test_fetch_items_only_syntax_errors(self, text: bytes, uid: bool) -> None:
        with contextlib.suppress(FetchSyntaxError):
            fetch_plan(text, uid)

    @fuzz(st.integers(1, 3 * MAX_NESTING), st.sampled_from(["(", "NOT ", "OR ALL "]), weight=2)
    def test_search_nesting_limit(self, depth: int, opener: str) -> None:
        """Keys nested up to MAX_NESTING are read; deeper ones are a syntax error, never a
        RecursionError."""
        closer = ")" if opener == "(" else ""
        text = (opener * depth + "ALL" + closer * depth).encode()
        if depth < MAX_NESTING:
            parse_search(text)
        elif depth > MAX_NESTING:
            self.assertRaises(SearchSyntaxError, parse_search, text)

    @fuzz(st.integers(1, 3 * MAX_NESTING), weight=2)
    def test_list_nesting_limit(self, depth: int) -> None:
        text = b"(" * depth + b")" * depth
        if depth <= MAX_NESTING:
            Cursor(text).paren_list()
        else:
            self.assertRaises(ParseError, Cursor(text).paren_list)


class SessionFuzz(unittest.TestCase):
    """Generated commands against the real protocol object and a MemoryStore."""

    def assertNothingLogged(self) -> None:
        self.assertEqual(self.flushLoggedErrors(), [])

    def assertOneReplyEach(self, lines: list[bytes], outputs: list[bytes]) -> bool:
        """True when the session is still open after them: before login the third invalid
        command ends it (Dovecot's imap-login: a BYE after its tagged reply, then nothing)."""
        for i, (line, out) in enumerate(zip(lines, outputs, strict=True)):
            if LIMIT_BYE in out:
                self.assertTrue(out.endswith(LIMIT_BYE + b"\r\n"), (line, out[-500:]))
                self.assertEqual(b"".join(outputs[i + 1:]), b"")
                return False
            self.assertEqual([t for t, _ in check_imap_output(out)], [b"t%d" % i],
                             (line, out[-500:]))
        return True

    @fuzz(st.sampled_from(["unauth", "auth", "select"]), g.sessions(), weight=1.5)
    def test_one_tagged_reply_per_command(self, state: str, lines: list[bytes]) -> None:
        """Each command alone: one tagged reply, well-formed untagged ones before it; no BYE
        but the limit of invalid commands before login; no traceback; the session answers
        NOOP afterwards."""
        server, outputs = one_at_a_time(state, lines)
        if self.assertOneReplyEach(lines, outputs):
            self.assertNotIn(b"* BYE", b"".join(outputs))
            self.assertIn(b"z OK", server.send([b"z NOOP\r\n"]))
        self.assertNothingLogged()

    @fuzz(st.sampled_from(["unauth", "auth", "select"]), st.data(), weight=1.5)
    def test_reads_do_not_change_replies(self, state: str, data: st.DataObject) -> None:
        """The same commands pipelined in one stream cut at arbitrary offsets get the same
        output, byte for byte, as when sent one at a time."""
        lines = data.draw(g.sessions())
        _, outputs = one_at_a_time(state, lines)
        stream = b"".join(lines)
        offsets = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=30))
        server = Server(state)
        self.assertEqual(server.send(cut(stream, offsets)), b"".join(outputs))
        self.assertNothingLogged()

    @fuzz(st.sampled_from(["unauth", "select"]),
          st.binary(max_size=300).filter(lambda b: b"{" not in b), st.data(), weight=1.5)
    @example("unauth", b"a ID (\r\n", None)
    def test_garbage_then_noop(self, state: str, garbage: bytes, data: st.DataObject | None
                               ) -> None:
        """Arbitrary bytes (no literals): well-formed replies, no traceback, and a NOOP after
        them is answered unless the server said BYE and closed."""
        server = Server(state)
        offsets = data.draw(st.lists(st.integers(1, 300), max_size=20)) if data else []
        out = server.send(cut(garbage + b"\r\nz NOOP\r\n", offsets))
        tags = check_imap_output(out)
        if server.transport.disconnecting:
            self.assertIn(b"* BYE", out)
        else:
            self.assertEqual(tags[-1], (b"z", b"OK"), out)
        self.assertNothingLogged()

    @example(b"X", [b"\x00 \x00", b"*", b"*"], None)  # the third bad command: BYE
    @fuzz(st.sampled_from([b"PLAIN", b"LOGIN", b"X", b"PLAIN AGJvc3MAc2VjcmV0", b"PLAIN =",
                           b"LOGIN Ym9zcw==", b"PLAIN !!", b"PLAIN *", b""]),
          st.lists(st.sampled_from([b"*", b"=", b"", b"AGJvc3MAc2VjcmV0", b"Ym9zcw==",
                                    b"c2VjcmV0", b"!!", b"AA==", b"z NOOP"])
                   | st.binary(max_size=20).filter(lambda b: not set(b) & set(b"\r\n{")),
                   max_size=3), st.data())
    def test_authenticate(self, start: bytes, lines: list[bytes],
                          data: st.DataObject | None) -> None:
        """AUTHENTICATE with any answers to its challenges: one tagged reply for it, and the
        session goes on (NOOP, or the command after a login), unless the answers were the
        third invalid command before login (Dovecot's imap-login: ``* BYE``, then the end)."""
        server = Server("unauth")
        stream = b"a AUTHENTICATE " + start + b"\r\n" + b"".join(x + b"\r\n" for x in lines)
        stream += b"z1 NOOP\r\n"
        offsets = data.draw(st.lists(st.integers(1, len(stream)), max_size=10)) if data else []
        out = server.send(cut(stream, offsets))
        tags = [t for t, _ in check_imap_output(out)]
        self.assertEqual(tags.count(b"a"), 1, tags)
        if server.transport.disconnecting:
            self.assertIn(b"* BYE", out)
            # the invalid commands: tagged NO/BAD, and ``* BAD`` for a line with no tag
            refused = [r for r in imap_responses(out)
                       if r.split(b" ", 2)[1:2] in ([b"NO"], [b"BAD"])]
            self.assertGreaterEqual(len(refused), 3, out)
        else:
            self.assertIn(b"z1 OK", server.send([b"z1 NOOP\r\n"]))
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(st.integers(1, 3 * MAX_NESTING),
          st.sampled_from([b"ID %s", b"SEARCH %s", b"STORE 1 FLAGS %s", b"FETCH 1 %s",
                           b"SELECT INBOX %s", b"STATUS INBOX %s", b"LIST %s \"\" *"]))
    def test_nesting_refused_past_the_limit(self, depth: int, command: bytes) -> None:
        """Parentheses nested past MAX_NESTING: BAD, and the session goes on."""
        server = Server("select")
        nested = b"(" * depth + (b"ALL" if command.startswith(b"SEARCH") else b"")
        out = server.send([b"a " + command % (nested + b")" * depth) + b"\r\n"])
        status = check_imap_output(out)[-1]
        if depth > MAX_NESTING:
            self.assertEqual(status, (b"a", b"BAD"), out)
        self.assertIn(b"z OK", server.send([b"z NOOP\r\n"]))
        self.assertNothingLogged()


class HostileMessageTests(unittest.TestCase):
    def test_fetch_and_search_hostile_headers(self) -> None:
        """FETCH ENVELOPE and BODYSTRUCTURE, SEARCH FROM and BODY of HOSTILE answer OK (the
        stray ")" looped for ever, the 8-bit boundary raised UnicodeEncodeError)."""
        server = Server("select")
        out = server.send([b"a FETCH 3 (ENVELOPE BODYSTRUCTURE BODY[1])\r\n",
                           b"b SEARCH FROM \"x)\"\r\n", b"c SEARCH BODY x\r\n"])
        self.assertEqual(check_imap_output(out), [(b"a", b"OK"), (b"b", b"OK"), (b"c", b"OK")])
        self.assertIn(b'((NIL NIL "x)" NIL))', out)
        self.assertIn(b"* SEARCH 3\r\nb OK", out)
        self.assertEqual(self.flushLoggedErrors(), [])


class LimitFuzz(unittest.TestCase):
    """Commands over the size limit, sent in arbitrary reads: refused before they are kept,
    with memory bounded by the limit, not by what the client sends."""

    @fuzz(st.sampled_from(["unauth", "select"]),
          st.sampled_from(["line", "sync", "plus", "chain"]),
          st.integers(1, 3), st.integers(1024, 65536), weight=0.4)
    def test_oversized_command_refused(self, state: str, kind: str, times: int,
                                       chunk: int) -> None:
        limit = LOGIN_MAX_COMMAND if state == "unauth" else 16 * 1024
        server = Server(state, max_line=16 * 1024)
        size = times * limit + 1
        if kind == "line":
            stream = b"a LOGIN " + b"x" * size
        elif kind == "chain":  # literals each under the limit, together over it
            piece = b"{%d+}\r\n" % (limit // 3) + b"x" * (limit // 3)
            stream = b"a LOGIN " + b" ".join([piece] * (3 * times + 1))
        else:
            stream = b"a LOGIN {%d%s}\r\n" % (size, b"+" if kind == "plus" else b"") + b"x" * size
        reads = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
        with peak_memory() as peak:
            out = server.send(reads)
        self.assertLess(peak(), 2 * limit + 3 * chunk + 256 * 1024)
        self.assertNotIn(b"a OK", out)
        if kind == "sync":
            self.assertTrue(out.startswith(b"a NO [TOOBIG]"), out[:200])
        else:
            self.assertIn(b"* BYE", out)
            self.assertTrue(server.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

