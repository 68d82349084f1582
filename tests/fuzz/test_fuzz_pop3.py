"""POP3: sessions of generated commands (USER/PASS, AUTH, STAT, LIST, UIDL, RETR, TOP, DELE,
RSET, CAPA, junk and wrong arguments) cut into arbitrary reads. Invariants: each command gets
one response, ``+OK``/``-ERR`` (or an AUTH continuation), a multi-line one dot-terminated; the
output does not depend on how the bytes were cut; nothing logged as a failure; a session goes on
after an error; a line over the limit is refused with memory bounded."""

from __future__ import annotations

from hypothesis import strategies as st
from twisted.cred import checkers, portal
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.maillog import MailLog
from mailsuite.pop3 import server as pop3
from mailsuite.store.memory import MemoryStore
from tests.fakes import NoDelayTransport
from tests.fuzz import fuzz
from tests.fuzz.drive import cut, feed, peak_memory
from tests.test_pop3 import BOSS, LOOPBACK, SERVER, Realm, make_config

MESSAGES = [b"Subject: one\n\nhello\n.\n..x\n", b"Subject: two\n\n" + b"line\n" * 50, b"x"]
_NUMBERS = st.sampled_from([b"1", b"2", b"3", b"4", b"0", b"-1", b"x", b"99999999999999999999",
                            b"1 2", b""])
commands = st.one_of(
    st.sampled_from([b"STAT", b"LIST", b"UIDL", b"RSET", b"NOOP", b"CAPA", b"USER boss",
                     b"PASS secret", b"PASS wrong", b"USER", b"PASS", b"USER a b", b"AUTH",
                     b"AUTH PLAIN AGJvc3MAc2VjcmV0", b"AUTH PLAIN =", b"AUTH PLAIN !!",
                     b"AUTH X", b"APOP boss 0123", b"STLS", b"", b" ", b"XYZZY", b"stat",
                     b"RETR", b"TOP 1", b"LAST"]),
    st.tuples(st.sampled_from([b"LIST ", b"UIDL ", b"RETR ", b"DELE ", b"TOP "]), _NUMBERS,
              st.sampled_from([b"", b" 0", b" 2", b" x", b" 99999999999"])).map(b"".join),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
)


class Session:
    def __init__(self, logged_in: bool) -> None:
        self.clock = Clock()
        store = MemoryStore()
        for data in MESSAGES:
            store.deliver(BOSS, data, "sender@example.test")
        checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")
        the_portal = portal.Portal(Realm(store), [checker])
        maillog = MailLog(None, "mail.example.test", now=self.clock.seconds)
        factory = pop3.POP3Factory(make_config(), the_portal, maillog, clock=self.clock)
        self.proto = factory.buildProtocol(LOOPBACK)
        self.transport = NoDelayTransport(hostAddress=SERVER, peerAddress=LOOPBACK)
        self.proto.makeConnection(self.transport)
        if logged_in:
            self.send([b"USER boss\r\nPASS secret\r\n"])
        self.transport.clear()

    def send(self, pieces: list[bytes]) -> bytes:
        return feed(self.proto, self.transport, pieces, self.clock)


def check_response(test: unittest.TestCase, line: bytes, out: bytes) -> None:
    """One response: a status line; when more follows, dot-stuffed lines and a final dot."""
    test.assertTrue(out.endswith(b"\r\n"), (line, out[-200:]))
    lines = out[:-2].split(b"\r\n")
    test.assertTrue(lines[0][:3] == b"+OK" or lines[0][:4] == b"-ERR" or lines[0][:2] == b"+ ",
                    (line, out[:200]))
    if len(lines) > 1:
        test.assertEqual(lines[-1], b".", (line, out[-200:]))
        test.assertNotIn(b".", lines[1:-1], (line, out[:300]))
        test.assertEqual(lines[0][:3], b"+OK", (line, out[:200]))


class SessionFuzz(unittest.TestCase):
    @fuzz(st.booleans(), st.lists(commands, min_size=1, max_size=10), weight=1.5)
    def test_one_response_per_command(self, logged_in: bool, lines: list[bytes]) -> None:
        s = Session(logged_in)
        for line in lines:  # (before login the third bad command ends the session)
            if s.transport.disconnecting:
                break
            check_response(self, line, s.send([line + b"\r\n"]))
        if not s.transport.disconnecting:
            check_response(self, b"NOOP", s.send([b"NOOP\r\n"]))
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(st.booleans(), st.lists(commands, min_size=1, max_size=10), st.data(), weight=1.5)
    def test_reads_do_not_change_replies(self, logged_in: bool, lines: list[bytes],
                                         data: st.DataObject) -> None:
        """Pipelined in one stream cut anywhere: the same output, byte for byte, as one
        command at a time."""
        stream = b"".join(line + b"\r\n" for line in lines)
        s = Session(logged_in)
        expected = b"".join(s.send([line + b"\r\n"]) for line in lines)
        offsets = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=30))
        self.assertEqual(Session(logged_in).send(cut(stream, offsets)), expected)
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(st.booleans(), st.binary(max_size=300), st.data(), weight=1.5)
    def test_garbage_then_noop(self, logged_in: bool, garbage: bytes, data: st.DataObject
                               ) -> None:
        s = Session(logged_in)
        offsets = data.draw(st.lists(st.integers(1, 300), max_size=20))
        out = s.send(cut(garbage + b"\r\n*\r\nNOOP\r\n", offsets))
        if not s.transport.disconnecting:
            check_response(self, b"NOOP", out[out.rindex(b"\r\n", 0, -2) + 2:])
        self.assertEqual(self.flushLoggedErrors(), [])

    @fuzz(st.booleans(), st.integers(1, 4), st.integers(256, 65536), weight=0.5)
    def test_long_line_refused(self, logged_in: bool, times: int, chunk: int) -> None:
        """A line over LineReceiver's MAX_LENGTH: -ERR and the connection closed."""
        s = Session(logged_in)
        stream = b"USER " + b"x" * (times * s.proto.MAX_LENGTH) + b"\r\nNOOP\r\n"
        reads = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
        with peak_memory() as peak:
            out = s.send(reads)
        self.assertLess(peak(), 2 * s.proto.MAX_LENGTH + 3 * chunk + 256 * 1024)
        self.assertEqual(out, b"-ERR Input line too long.\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
