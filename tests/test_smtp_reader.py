"""The command reader the SMTP-family doors share (mailsuite.smtp.reader): SMTP, LMTP and
``sendmail -bs`` read commands and DATA the same way."""

from __future__ import annotations

import io

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite import cli
from mailsuite.maillog import MailLog
from mailsuite.smtp import reader as reader_module
from mailsuite.smtp.lmtp import LINE_LIMIT, LMTPFactory
from mailsuite.smtp.reader import TOO_LONG, Body, Reader, split_command
from tests.configs import real_config
from tests.fakes import FakeDelivery


def fed(reader: Reader, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])


class CommandTests(unittest.TestCase):
    def test_lines(self) -> None:
        """A command line ends at LF, a CR before it dropped; an unfinished one waits."""
        r = Reader()
        r.feed(b"EHLO a\r\nNOOP\nMAIL FROM:<x>")
        self.assertEqual((r.command(), r.command(), r.command()), (b"EHLO a", b"NOOP", None))
        r.feed(b"\r\n")
        self.assertEqual(r.command(), b"MAIL FROM:<x>")
        self.assertEqual(split_command(b"  mail   FROM:<x>  "), (b"MAIL", b"FROM:<x>"))

    def test_too_long_once(self) -> None:
        """An over-long line is TOO_LONG once, whether it arrives whole or in pieces, its tail
        is discarded, and the next line is read as usual; no limit with line_limit None."""
        for step in (10, 1000, 10_000):
            r = Reader(line_limit=100)
            fed(r, b"X" * 500 + b"\r\nQUIT\r\n", step)
            out = [r.command() for _ in range(3)]
            self.assertEqual(out, [TOO_LONG, b"QUIT", None], step)
        r = Reader(line_limit=None)
        r.feed(b"Y" * 100_000 + b"\n")
        self.assertEqual(r.command(), b"Y" * 100_000)


class DataTests(unittest.TestCase):
    MESSAGE = b"Subject: s\r\n\r\n..dot\r\n.\nnot the end\r\n.\r\nQUIT\r\n"

    def read(self, data: bytes, step: int, **kw: object) -> tuple[Body | None, bytes]:
        r = Reader(**kw)  # type: ignore[arg-type]
        r.start_data(0)
        body = None
        for i in range(0, len(data), step):
            r.feed(data[i : i + step])
            body = body or r.data()
        return body, r.buffer

    def test_any_packet_sizes(self) -> None:
        """Dots unstuffed, CRLF -> LF, a dot line ended by a bare LF kept; what follows
        the end of data stays for the commands, whatever the packet sizes."""
        for step in (1, 2, 3, 7, len(self.MESSAGE)):
            body, rest = self.read(self.MESSAGE, step)
            self.assertEqual(body, Body(b"Subject: s\n\n.dot\n.\nnot the end\n", 31, False),
                             step)
            self.assertEqual(rest, b"QUIT\r\n")

    def test_lf_ends_data(self) -> None:
        """Only CRLF . CRLF ends the data of a network door; with lf_ends_data (sendmail -bs)
        a lone dot between bare LFs ends it too."""
        data = b"a\n.\nb\r\n.\r\n"
        self.assertEqual(self.read(data, 1)[0], Body(b"a\n.\nb\n", 6, False))
        for step in (1, 4, len(data)):
            body, rest = self.read(data, step, lf_ends_data=True)
            self.assertEqual((body, rest), (Body(b"a\n", 2, False), b"b\r\n.\r\n"), step)
        self.assertEqual(self.read(b".\nx", 1, lf_ends_data=True), (Body(b"", 0, False), b"x"))

    def test_size_limit(self) -> None:
        """Beyond size_limit the data is counted, not kept."""
        r = Reader()
        r.start_data(10)
        r.feed(b"0123456789\r\nabc\r\n.\r\n")
        self.assertEqual(r.data(), Body(b"", 15, True))


class LMTPReadsAsSMTPTests(unittest.TestCase):
    def setUp(self) -> None:
        self.delivery = FakeDelivery(hold=True)
        config = real_config("mail.example.test")
        factory = LMTPFactory(config, self.delivery, MailLog(None, "mail.example.test"))
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_long_body_line_kept(self) -> None:
        """A body line longer than LMTP's line limit is delivered whole (read as SMTP reads
        DATA; it closed the connection); a command line that long is refused, the connection
        closed."""
        self.proto.dataReceived(b"LHLO x\r\nMAIL FROM:<j@x>\r\nRCPT TO:<a@x>\r\nDATA\r\n")
        line = b"L" * (LINE_LIMIT + 10)
        self.proto.dataReceived(b"Subject: s\r\n\r\n" + line + b"\r\n.\r\n")
        self.assertFalse(self.transport.disconnecting)
        data, _, _, _ = self.delivery.held[0]
        self.assertTrue(data.endswith(b"\nSubject: s\n\n" + line + b"\n"))
        self.delivery.held[0][3].callback(None)
        self.proto.dataReceived(b"NOOP " + line + b"\r\n")
        self.assertTrue(self.transport.value().endswith(b"500 5.5.2 Error: line too long\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_input_paused_behind_a_slow_step(self) -> None:
        """Much input waiting behind a slow recipient look-up stops the reading (as SMTP's),
        and it goes on once the look-up is answered."""
        self.proto.dataReceived(b"LHLO x\r\nMAIL FROM:<j@x>\r\nRCPT TO:<slow@x>\r\n")
        self.proto.dataReceived(b"NOOP\r\n" * (reader_module.PAUSE_BUFFER // 6 + 1))
        self.assertEqual(self.transport.producerState, "paused")
        self.delivery.resolving["slow@x"].callback(["slow"])
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.proto.reader.buffer, b"")


class SendmailSessionTests(unittest.TestCase):
    def test_commands_and_data(self) -> None:
        """sendmail -bs reads a line at a time with the shared reader: a last line without its
        LF still counts, DATA ends at a lone dot with LF or CRLF, dots are unstuffed, and the
        end of stdin in DATA is None (the session ends EX_TEMPFAIL)."""
        r = Reader(line_limit=None, lf_ends_data=True)
        stdin = io.BytesIO(b"EHLO me\r\nDATA\n..x\r\ny\n.\nQUIT")
        self.assertEqual(cli._next_command(r, stdin), b"EHLO me")
        self.assertEqual(cli._next_command(r, stdin), b"DATA")
        self.assertEqual(cli._read_data(r, stdin), b".x\ny\n")
        self.assertEqual(cli._next_command(r, stdin), b"QUIT")
        self.assertIsNone(cli._next_command(r, stdin))
        self.assertIsNone(cli._read_data(r, io.BytesIO(b"no end\n")))
