"""SMTP and LMTP: the path and parameter parsers alone, then sessions of generated commands
(EHLO, MAIL with parameters, RCPT to local, unknown and remote addresses, DATA with dot-stuffed
bodies, AUTH, junk) cut into arbitrary reads. Invariants: only PathError / ValueError escapes a
parser; every command line gets exactly one complete reply (LMTP: one per accepted recipient
after the data), the same codes however the bytes were cut; nothing logged as a failure; a line
over the limit is refused with memory bounded."""

from __future__ import annotations

from typing import Any

from hypothesis import example
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite.auth import sasl
from mailsuite.maillog import MailLog
from mailsuite.mta import address as addr
from mailsuite.smtp.lmtp import LMTPFactory
from mailsuite.smtp.reader import COMMAND_LINE_LIMIT  # line_length_limit's default
from tests.configs import real_config
from tests.fakes import FakeDelivery, NoDelayTransport
from tests.fuzz import fuzz
from tests.fuzz.drive import cut, feed, peak_memory, smtp_replies
from tests.test_smtp_server import build
import contextlib

_LOCAL = st.sampled_from(["boss", "alice", "ghost", "Boss", '"a b"', '"a\\"b"', "a.b", ".a",
                          "a..b", "x" * 65, "postmaster", "caf\u00e9", "a+tag", ""])
_DOMAIN = st.sampled_from(["mail.example.com", "example.org", "[192.0.2.1]", "[IPv6:::1]",
                           "localhost", "-bad-", "a..b", "x" * 64 + ".example", "ex.test",
                           "\u00e9.example", ""])
paths = st.one_of(
    st.tuples(_LOCAL, _DOMAIN).map(lambda p: f"<{p[0]}@{p[1]}>".encode()),
    _LOCAL.map(lambda x: f"<{x}>".encode()),
    st.sampled_from([b"<>", b"<@r.example,@s.example:boss@mail.example.com>", b"boss",
                     b"<boss@mail.example.com", b"<<>>", b"<\xff@x>", b" <a@b> ", b""]),
)
_MAIL_PARAMS = st.sampled_from([b"SIZE=100", b"SIZE=99999999999", b"SIZE=x", b"BODY=8BITMIME",
                                b"BODY=7BIT", b"BODY=BINARYMIME", b"SMTPUTF8", b"RET=FULL",
                                b"RET=HDRS", b"RET=X", b"ENVID=a+2Bb", b"ENVID=+zz",
                                b"AUTH=<>", b"X=Y", b"=", b"SIZE"])
_RCPT_PARAMS = st.sampled_from([b"NOTIFY=NEVER", b"NOTIFY=SUCCESS,FAILURE,DELAY",
                                b"NOTIFY=NEVER,SUCCESS", b"NOTIFY=", b"ORCPT=rfc822;a+40b",
                                b"ORCPT=x", b"ORCPT=rfc822;+", b"X=Y"])
#: lines of a body as a client sends them: dot-stuffed (a lone "." would end the data)
_BODY_LINES = st.sampled_from([b"Subject: s", b"", b"..", b"..x", b"From me", b"x" * 3000,
                               b"a\rb", b"\xff\xfe", b". "])
bodies = st.lists(_BODY_LINES, max_size=6).map(lambda ls: b"".join(x + b"\r\n" for x in ls))


def _params(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(strategy, max_size=3).map(lambda ps: b"".join(b" " + p for p in ps))


def commands(hello: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from([hello + b" client.example", hello, b"HELO x", b"RSET", b"RSET x",
                         b"NOOP", b"VRFY boss", b"VRFY", b"HELP", b"DATA", b"DATA x",
                         b"STARTTLS", b"AUTH PLAIN AGJvc3MAc2VjcmV0", b"AUTH LOGIN", b"AUTH",
                         b"AUTH X", b"*", b"", b"  ", b"XYZZY", b"MAIL", b"RCPT TO:"]),
        st.tuples(st.sampled_from([b"MAIL FROM:", b"mail from: ", b"MAIL FROM "]),
                  paths, _params(_MAIL_PARAMS)).map(b"".join),
        st.tuples(st.sampled_from([b"RCPT TO:", b"rcpt to: "]), paths,
                  _params(_RCPT_PARAMS)).map(b"".join),
        st.binary(max_size=20).filter(lambda b: b"\n" not in b),
    )


@st.composite
def sessions(draw: st.DrawFn, hello: bytes) -> list[tuple[bytes, bytes]]:
    """(command line, the body sent if the command is an accepted DATA)."""
    head = [(hello + b" client.example\r\n", b"")] if draw(st.booleans()) else []
    rest = draw(st.lists(st.tuples(commands(hello), bodies), min_size=1, max_size=10))
    return head + [(line + b"\r\n", body + b".\r\n") for line, body in rest]


class Session:
    def __init__(self, case: unittest.TestCase, lmtp: bool) -> None:
        self.clock = Clock()
        if lmtp:
            self.delivery = FakeDelivery()
            config = real_config("mail.example.test", mail={"message_size_limit": 4096})
            factory: Any = LMTPFactory(config, self.delivery, MailLog(None, "mail.example.test"))
            self.transport = StringTransport()
        else:
            factory = build(case, 4096, self.clock)[0]
            self.transport = NoDelayTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self.greeting = self.send([])

    def send(self, pieces: list[bytes]) -> bytes:
        return feed(self.proto, self.transport, pieces, self.clock)


def one_at_a_time(case: unittest.TestCase, lmtp: bool, script: list[tuple[bytes, bytes]]
                  ) -> tuple[bytes, list[tuple[bytes, list[bytes], list[bytes] | None]]]:
    """Each line alone, answered before the next; the body after a 354; up to the end of the
    session (QUIT). (the bytes sent, (line, its reply codes, the codes after the body))."""
    s = Session(case, lmtp)
    sent, answered = [], []
    for line, body in script:
        if s.transport.disconnecting:
            break
        sent.append(line)
        codes = smtp_replies(s.send([line]))
        after = None
        if codes == [b"354"]:
            sent.append(body)
            after = smtp_replies(s.send([body]))
        answered.append((line, codes, after))
    return b"".join(sent), answered


class ParserFuzz(unittest.TestCase):
    @fuzz(paths | st.binary(max_size=40), st.booleans(), st.booleans(), weight=4)
    def test_path_only_path_errors(self, raw: bytes, utf8: bool, bare: bool) -> None:
        try:
            path = addr.parse_path(raw.strip(), utf8, allow_bare_local=bare)
        except addr.PathError:
            return
        self.assertNotIn("<", path.replace('"<', ""))
        if not utf8:
            self.assertTrue(path.isascii())

    @fuzz(st.tuples(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}", fullmatch=True),
                    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,6}){1,2}", fullmatch=True)),
          weight=4)
    def test_good_path_read_back(self, pair: tuple[str, str]) -> None:
        address = "@".join(pair)
        self.assertEqual(addr.parse_path(b"<%s>" % address.encode(), False), address)
        self.assertEqual(addr.split(address), pair)

    @fuzz(st.text(max_size=30), weight=4)
    def test_xtext_round_trip(self, text: str) -> None:
        self.assertEqual(addr.xtext_decode(addr.xtext_encode(text).encode("ascii")), text)

    @fuzz(st.binary(max_size=30), weight=4)
    def test_dsn_parameters_only_value_errors(self, raw: bytes) -> None:
        for parse in (addr.parse_notify, addr.parse_orcpt, addr.xtext_decode):
            with contextlib.suppress(ValueError):
                parse(raw)


class SessionFuzz(unittest.TestCase):
    def check_one_reply_each(self, lmtp: bool, script: list[tuple[bytes, bytes]]) -> None:
        _, answered = one_at_a_time(self, lmtp, script)
        accepted = 0
        for line, replies, after_data in answered:
            self.assertEqual(len(replies), 1, (line, replies))
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb in (b"LHLO", b"RSET", b"MAIL") and replies[0] == b"250":
                accepted = 0
            elif verb == b"RCPT" and replies[0] == b"250":
                accepted += 1
            if after_data is not None:
                self.assertEqual(len(after_data), accepted if lmtp else 1, (line, after_data))
                accepted = 0
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(sessions(b"EHLO"), weight=1.5)
    def test_smtp_one_reply_per_command(self, script: list[tuple[bytes, bytes]]) -> None:
        self.check_one_reply_each(False, script)

    @fuzz(sessions(b"LHLO"), weight=1.5)
    @example([(b"LHLO x\r\n", b""), (b"MAIL FROM:<a@b>\r\n", b""),
              (b"RCPT TO:<c@ex.test>\r\n", b""), (b"RCPT TO:<d@ex.test>\r\n", b""),
              (b"DATA\r\n", b"x\r\n.\r\n")])
    def test_lmtp_one_reply_per_recipient(self, script: list[tuple[bytes, bytes]]) -> None:
        self.check_one_reply_each(True, script)

    @fuzz(st.booleans(), st.data(), weight=1.5)
    def test_reads_do_not_change_replies(self, lmtp: bool, data: st.DataObject) -> None:
        """The session pipelined in one stream, cut anywhere: the same reply codes."""
        script = data.draw(sessions(b"LHLO" if lmtp else b"EHLO"))
        stream, answered = one_at_a_time(self, lmtp, script)
        codes = [c for _, replies, after in answered for c in replies + (after or [])]
        offsets = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=30))
        s = Session(self, lmtp)
        self.assertEqual(smtp_replies(s.send(cut(stream, offsets))), codes)
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(st.booleans(), st.binary(max_size=300), st.data(), weight=1.5)
    def test_garbage_then_noop(self, lmtp: bool, garbage: bytes, data: st.DataObject) -> None:
        """Arbitrary bytes: complete replies only, no traceback; NOOP is answered after them
        unless the session ended (421 after too many errors, or QUIT)."""
        s = Session(self, lmtp)
        offsets = data.draw(st.lists(st.integers(1, 300), max_size=20))
        out = s.send(cut(garbage + b"\r\nRSET\r\nNOOP\r\n", offsets))
        codes = smtp_replies(out)
        if not s.transport.disconnecting:
            self.assertEqual(codes[-1], b"250", out[-300:])
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(st.booleans(), st.integers(1, 4), st.integers(256, 65536), weight=0.5)
    def test_long_line_refused(self, lmtp: bool, times: int, chunk: int) -> None:
        """A command line over the limit (2048 SMTP, 64 KB LMTP) is refused, not kept: memory
        stays within a bound however much of it comes."""
        limit = 65536 if lmtp else COMMAND_LINE_LIMIT
        s = Session(self, lmtp)
        stream = b"MAIL FROM:<" + b"x" * (times * limit) + b"@x>\r\nNOOP\r\n"
        reads = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
        with peak_memory() as peak:
            out = s.send(reads)
        self.assertLess(peak(), 2 * limit + 3 * chunk + 256 * 1024)
        codes = smtp_replies(out)
        self.assertNotIn(b"250", codes[:-1])
        self.assertEqual(codes[0][:1], b"5", out[:300])
        self.assertEqual(self.flushLoggedErrors(), [])


_SASL_LINES = st.one_of(
    st.sampled_from([b"*", b"=", b"", b"AGJvc3MAc2VjcmV0", b"Ym9zcw==", b"c2VjcmV0", b"!!",
                     b"AA==", b"AAA=", b" AGJvc3MAc2VjcmV0 ", b"YQBiAGM="]),
    st.binary(max_size=30).map(sasl.encode),
    st.binary(max_size=20),
)


class SaslFuzz(unittest.TestCase):
    """The SASL PLAIN / LOGIN exchange all three doors use (mailsuite.auth.sasl)."""

    @fuzz(st.sampled_from([b"PLAIN", b"LOGIN", b"plain", b"CRAM-MD5", b"\xff"]),
          st.none() | _SASL_LINES, st.lists(_SASL_LINES, max_size=3), weight=4)
    def test_only_sasl_errors(self, mechanism: bytes, initial: bytes | None,
                              lines: list[bytes]) -> None:
        try:
            exchange = sasl.Exchange.start(mechanism, initial)
            step = exchange.step()
            for line in lines:
                if isinstance(step, sasl.Attempt):
                    break
                step = exchange.respond(line)
        except sasl.SaslError:
            pass

    @fuzz(st.binary(max_size=10).filter(lambda b: b"\0" not in b),
          st.binary(min_size=1, max_size=10).filter(lambda b: b"\0" not in b),
          st.binary(max_size=10), weight=4)
    def test_plain_round_trip(self, authzid: bytes, user: bytes, password: bytes) -> None:
        initial = sasl.encode(authzid + b"\0" + user + b"\0" + password.replace(b"\0", b""))
        attempt = sasl.Exchange.start(b"PLAIN", initial).step()
        self.assertEqual(attempt, sasl.Attempt("PLAIN", user, password.replace(b"\0", b""),
                                               authzid))
