"""COMPRESS=DEFLATE (RFC 4978) driven with Python's zlib: the RFC's example, raw deflate both
ways from the byte after the tagged OK, pipelined compressed input behind the command, every cut
of the compressed input into reads, IDLE pushes flushed whole, bad input, no hibernation."""

from __future__ import annotations

import itertools
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.imap import hibernate
from mailsuite.imap.compress import Deflate
from tests.test_imap_server import ImapTestCase, Session
from tests.test_imap_wire import PLAIN_OK, _Run


class Client:
    """The client's ends of the two deflate streams (RFC 4978 4: raw deflate, sync flushes)."""

    def __init__(self) -> None:
        self.out = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)

    def z(self, data: bytes) -> bytes:
        return self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)

    def unz(self, data: bytes) -> bytes:
        return self.inp.decompress(data)


def clear_part(output: bytes, tag: bytes = b"c") -> tuple[bytes, bytes]:
    """Split the server's bytes after the COMPRESS command's ``tag OK ...`` line."""
    marker = b"\r\n" + tag + b" OK DEFLATE active\r\n"
    head, sep, rest = output.partition(marker)
    assert sep, output
    return head + sep, rest


class CompressTests(ImapTestCase):
    def compressed(self) -> tuple[Session, Client]:
        s = self.session()
        s.login()
        client = Client()
        out = s.cmd(b"c COMPRESS DEFLATE")
        self.assertEqual(out, b"c OK DEFLATE active\r\n")
        return s, client

    def test_rfc_example(self) -> None:
        """RFC 4978 5's example: COMPRESS=DEFLATE after login, ``OK DEFLATE active`` in clear,
        then everything compressed both ways (a NOOP answered through the streams)."""
        s = self.session()
        self.assertNotIn(b"COMPRESS=DEFLATE", s.greeting + s.cmd(b"a CAPABILITY"))
        self.assertIn(b"COMPRESS=DEFLATE", s.cmd(b"b LOGIN boss secret"))
        self.assertEqual(s.cmd(b"c compress deflate"), b"c OK DEFLATE active\r\n")
        client = Client()
        self.assertEqual(client.unz(s.send(client.z(b"d NOOP\r\n"))), b"d OK NOOP completed.\r\n")

    def test_second_compress_is_compressionactive(self) -> None:
        """RFC 4978 3: COMPRESS while compression is active is ``NO [COMPRESSIONACTIVE]``, sent
        compressed; the session goes on compressed."""
        s, client = self.compressed()
        out = client.unz(s.send(client.z(b"e COMPRESS DEFLATE\r\nf NOOP\r\n")))
        self.assertEqual(
            out, b"e NO [COMPRESSIONACTIVE] DEFLATE active\r\nf OK NOOP completed.\r\n")

    def test_pipelined_behind_compress(self) -> None:
        """What the client sent behind COMPRESS's CRLF in the same read is compressed input;
        the OK is the last thing in clear."""
        s = self.session()
        s.login()
        client = Client()
        out = s.send(b"c COMPRESS DEFLATE\r\n" + client.z(b"d SELECT INBOX\r\ne LOGOUT\r\n"))
        head, rest = clear_part(b"\r\n" + out)
        self.assertEqual(head, b"\r\nc OK DEFLATE active\r\n")
        plain = client.unz(rest)
        self.assertIn(b"d OK [READ-WRITE] Select completed.", plain)
        self.assertTrue(plain.endswith(b"* BYE Logging out\r\ne OK Logout completed.\r\n"), plain)

    def test_bad_arguments(self) -> None:
        """An unknown mechanism is BAD (RFC 4978 3), missing argument BAD, COMPRESS before login
        BAD; none of them starts compressing."""
        s = self.session()
        self.assertIn(b"a BAD", s.cmd(b"a COMPRESS DEFLATE"))
        s.login()
        self.assertIn(b"b BAD", s.cmd(b"b COMPRESS LZ4"))
        self.assertIn(b"c BAD", s.cmd(b"c COMPRESS"))
        self.assertIn(b"d BAD", s.cmd(b"d COMPRESS DEFLATE extra"))
        self.assertEqual(s.cmd(b"e NOOP"), b"e OK NOOP completed.\r\n")

    def test_garbage_input_closes(self) -> None:
        """Input that is no deflate stream: ``* BYE`` (compressed) and the connection closes,
        never a traceback."""
        s, client = self.compressed()
        out = s.send(b"\xff\xff\xff\xff garbage")
        self.assertTrue(client.unz(out).startswith(b"* BYE bad deflate data"))
        self.assertTrue(s.transport.disconnecting)

    def test_bomb_closes(self) -> None:
        """Compressed input that inflates beyond a command and a message is refused."""
        s, client = self.compressed()
        limit = self.factory.config.imap.imap_max_line_length + (
            self.factory.config.mail.message_size_limit or 64 * 1024 * 1024)
        bomb = client.z(b"x" * (limit + 10))
        self.assertLess(len(bomb), limit // 100)
        out = client.unz(s.send(bomb))
        self.assertIn(b"* BYE compressed input expands too much", out)
        self.assertTrue(s.transport.disconnecting)

    def test_idle_pushes_are_flushed(self) -> None:
        """In IDLE each push (new mail) reaches the client as a whole sync-flushed block: it
        inflates completely from what was sent so far."""
        s, client = self.compressed()
        self.assertIn(b"d OK", client.unz(s.send(client.z(b"d SELECT INBOX\r\n"))))
        self.assertEqual(client.unz(s.send(client.z(b"e IDLE\r\n"))), b"+ idling\r\n")
        self.deliver()
        self.assertEqual(client.unz(s.take()), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.deliver()
        self.assertEqual(client.unz(s.take()), b"* 2 EXISTS\r\n* 2 RECENT\r\n")
        self.assertEqual(client.unz(s.send(client.z(b"DONE\r\n"))), b"e OK Idle completed.\r\n")

    def test_not_hibernated(self) -> None:
        """A compressed session in IDLE is not hibernatable (zlib's state stays in the process
        that holds the session); the same session without COMPRESS is."""
        plain = self.session()
        plain.login()
        plain.cmd(b"i IDLE")
        self.assertTrue(hibernate.hibernatable(plain.proto))
        s, client = self.compressed()
        self.assertEqual(client.unz(s.send(client.z(b"i IDLE\r\n"))), b"+ idling\r\n")
        self.assertFalse(hibernate.hibernatable(s.proto))


class DeflateTests(unittest.TestCase):
    def test_raw_deflate_both_ways(self) -> None:
        """Deflate speaks raw deflate (wbits -15), as zlib with -15 on the other end reads."""
        d = Deflate()
        client = Client()
        self.assertEqual(client.unz(d.compress(b"* OK hello\r\n")), b"* OK hello\r\n")
        self.assertEqual(d.decompress(client.z(b"a NOOP\r\n"), 100), b"a NOOP\r\n")
        with self.assertRaises(ValueError):
            Deflate().decompress(zlib.compress(b"zlib header"), 100)


# -- every cut of the compressed input into reads, with a store that answers a turn later ------
#: in clear (the login through STARTTLS and then COMPRESS), then compressed: literals,
#: LITERAL+, IDLE/DONE, a streamed BODY[] and the LOGOUT
CLEAR = [b"t1 STARTTLS\r\n", b"a1 AUTHENTICATE PLAIN " + PLAIN_OK + b"\r\n",
         b"c COMPRESS DEFLATE\r\n"]
ZIPPED = [b"s1 SELECT INBOX\r\n", b"p1 APPEND INBOX (\\Seen) {12+}\r\n", b"Subject: a\r\n\r\n",
          b"p2 APPEND {5}\r\n", b"INBOX {12}\r\n", b"Subject: b\r\n\r\n",
          b"f1 FETCH 1:* (UID FLAGS)\r\n", b"fb FETCH 2 BODY.PEEK[]\r\n",
          b"x1 IDLE\r\n", b"DONE\r\n", b"lo LOGOUT\r\n"]


def run_compressed(reads: list[bytes]) -> bytes:
    """The session: CLEAR one write each, then ``reads`` (compressed); the inflated answers."""
    run = _Run()
    for piece in CLEAR:
        run.feed(piece, settle=True)
    for piece in reads:
        run.feed(piece, settle=True)
    _, rest = clear_part(run.output)
    return Client().unz(rest)


def zipped_pieces() -> list[bytes]:
    client = Client()
    return [client.z(piece) for piece in ZIPPED]


class SplitTests(unittest.TestCase):
    """However the compressed input is cut into reads (a deflate block split anywhere), the
    answers are those to one compressed write per command, after STARTTLS."""

    def setUp(self) -> None:
        self.expected = run_compressed(zipped_pieces())
        self.stream = b"".join(zipped_pieces())

    def test_expected_session(self) -> None:
        """The reference run answers every command (so the comparisons below mean something)."""
        for tag in (b"s1", b"p1", b"p2", b"f1", b"fb", b"x1", b"lo"):
            self.assertIn(b"\r\n" + tag + b" OK", self.expected)
        self.assertIn(b"line 008999 of a message", self.expected)

    def test_every_cut_in_two(self) -> None:
        """Every split of the whole compressed stream into two reads."""
        for i in range(1, len(self.stream)):
            self.assertEqual(run_compressed([self.stream[:i], self.stream[i:]]), self.expected, i)

    def test_byte_by_byte(self) -> None:
        self.assertEqual(run_compressed([bytes([b]) for b in self.stream]), self.expected)

    def test_all_in_one_read_with_compress(self) -> None:
        """COMPRESS and every compressed command in one read."""
        run = _Run()
        for piece in CLEAR[:-1]:
            run.feed(piece, settle=True)
        run.feed(CLEAR[-1] + self.stream, settle=True)
        _, rest = clear_part(run.output)
        self.assertEqual(Client().unz(rest), self.expected)

    def test_behind_a_slow_login(self) -> None:
        """The login, COMPRESS and the compressed commands in one read while the login is
        still being checked (reading is paused, everything waits in the buffer): the bytes
        after COMPRESS are inflated when it runs, not before."""
        run = _Run()
        run.feed(CLEAR[0], settle=True)
        run.feed(CLEAR[1] + CLEAR[2] + self.stream, settle=True)
        _, rest = clear_part(run.output)
        self.assertEqual(Client().unz(rest), self.expected)

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=4000), max_size=12))
    def test_random_cuts(self, offsets: list[int]) -> None:
        bounds = [0, *sorted({o for o in offsets if o < len(self.stream)}), len(self.stream)]
        reads = [self.stream[a:b] for a, b in itertools.pairwise(bounds)]
        self.assertEqual(run_compressed(reads), self.expected)


class CompressAfterRefreshTests(ImapTestCase):
    def test_pipelined_behind_compress_while_selected(self) -> None:
        """In the selected state a command waits for a refresh of the mailbox first (in a
        thread for an mbox); COMPRESS does not (``server._NO_REFRESH``): it runs in the read
        that brought it, so what was pipelined behind it is inflated and answered at once."""
        s = self.session()
        s.select()
        box = s.proto.view.mailbox
        later: list[defer.Deferred[Any]] = []

        def slow_refresh() -> defer.Deferred[Any]:
            later.append(defer.Deferred())
            return later[-1]

        box.refresh = slow_refresh  # as the mbox store's, answered from a thread
        client = Client()
        out = s.send(b"c COMPRESS DEFLATE\r\n" + client.z(b"d NOOP\r\n"))
        head, rest = clear_part(b"\r\n" + out)
        self.assertEqual(head, b"\r\nc OK DEFLATE active\r\n")
        while later:  # NOOP's own refresh, answered
            later.pop().callback(None)
        self.assertIn(b"d OK NOOP completed.\r\n", client.unz(rest + s.take()))
