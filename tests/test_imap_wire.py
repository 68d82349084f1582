"""The IMAP command reader under pipelining and hostile input (issue 9): every command of a
session is answered once and in order however its bytes are cut into reads (IMAP 1); a command
cannot grow without bound, literals included (S5); nothing follows ``* BYE`` but the tagged OK
(IMAP 4); deep nesting is BAD, never a traceback (IMAP 5)."""

from __future__ import annotations

import base64
import functools
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.config import ConfigError, ImapConfig, parse_config
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.memory import MemoryStore
from tests.fakes import TLSTransport
from tests.test_imap_server import MESSAGE, WHEN, ImapTestCase, Session, make_config


# -- a store and a login that answer on a later reactor turn, as the mbox store and PAM do -------
def _later(clock: Clock, result: Any) -> Any:
    """``result``, or when it is a Deferred, one that fires on the clock's next turn."""
    if not isinstance(result, defer.Deferred):
        return result
    later: defer.Deferred[Any] = defer.Deferred()

    def fire(value: Any) -> None:
        call = later.errback if isinstance(value, Failure) else later.callback
        clock.callLater(0, call, value)

    result.addBoth(fire)
    return later


class _Slow:
    """Every method of ``target`` that returns a Deferred answers a reactor turn later; a
    mailbox that ``open`` gives is wrapped the same way."""

    def __init__(self, target: Any, clock: Clock) -> None:
        self._target, self._clock = target, clock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if name == "open" and isinstance(result, defer.Deferred):
                result.addCallback(_Slow, self._clock)
            return _later(self._clock, result)

        return call


class _SlowRealm:
    def __init__(self, store: Any) -> None:
        self.store = store

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        avatar = ImapAccount(self.store, Account(avatar_id.decode(), 1000, 1000, "/home/x"))
        return IImapAccount, avatar, avatar.logout


PLAIN_OK = base64.b64encode(b"\0boss\0secret")
BIG = b"Subject: big\n\n" + b"".join(b"line %06d of a message FETCH streams\n" % i
                                    for i in range(9000))
PLAIN_BAD = base64.b64encode(b"\0boss\0wrong")

#: A recorded session: the client's writes, one command (or literal, or continuation) each.
#: Segments end where a real client must wait: after STARTTLS (what follows in the same read
#: is dropped: no injection). Every kind of input the reader handles is in it: literals,
#: LITERAL+, AUTHENTICATE continuations, IDLE/DONE, STARTTLS, updates owed to the client.
SESSION: list[list[bytes]] = [
    [
        b"c1 CAPABILITY\r\n",
        b'i1 ID ("name" {4+}\r\n', b"test)\r\n",
        b"n1 NOOP\r\n",
        b"t1 STARTTLS\r\n",
    ],
    [
        b"a1 AUTHENTICATE PLAIN\r\n", PLAIN_BAD + b"\r\n",
        b"a2 AUTHENTICATE PLAIN\r\n", b"*\r\n",
        b"l1 LOGIN {4+}\r\n", b"boss {6}\r\n", b"secret\r\n",
        b"s1 SELECT INBOX\r\n",
        b"p1 APPEND INBOX (\\Seen) {12+}\r\n", b"Subject: a\r\n\r\n",
        b"p2 APPEND {5}\r\n", b"INBOX {12}\r\n", b"Subject: b\r\n\r\n",
        b"n2 NOOP\r\n",
        b"f1 FETCH 1:* (UID FLAGS)\r\n",
        b"fb FETCH 2 BODY.PEEK[]\r\n",
        b"x1 IDLE\r\n", b"DONE\r\n",
        b"st UID STORE 1:3 +FLAGS (\\Deleted $Work)\r\n",
        b"se UID SEARCH OR SUBJECT {1+}\r\n", b"b DELETED\r\n",
        b"e1 EXPUNGE\r\n",
        b"x2 IDLE\r\n", b"DONE\r\n",
        b"c2 CHECK\r\n",
        b"lo LOGOUT\r\n",
    ],
]
TAGS = [b"c1", b"i1", b"n1", b"t1", b"a1", b"a2", b"l1", b"s1", b"p1", b"p2", b"n2", b"f1", b"fb",
        b"x1", b"st", b"se", b"e1", b"x2", b"c2", b"lo"]


class _Run:
    """One connection, new store and clock, fed chosen reads; ``output`` is all it answered."""

    def __init__(self) -> None:
        self.clock = Clock()
        store = MemoryStore(now=lambda: WHEN)
        account = Account("boss", 1000, 1000, "/home/boss")
        store.deliver(account, MESSAGE, "bob@example.org")
        store.deliver(account, BIG, "bob@example.org")
        portal = Portal(_SlowRealm(_Slow(store, self.clock)),
                        [InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")])
        real_login = portal.login
        portal.login = lambda *a: _later(self.clock, real_login(*a))  # type: ignore[method-assign]
        maillog = MailLog(None, "mail.example.com", now=lambda: 0.0)
        factory = IMAPFactory(make_config(), portal, maillog,
                              clock=self.clock, server_tls=object())
        self.proto = factory.buildProtocol(None)
        self.transport = TLSTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 143),
                                      peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.proto.makeConnection(self.transport)

    def settle(self) -> None:
        """Let every pending store call and login answer, and the connection take what a FETCH
        streams (bounded: the session is short)."""
        for _ in range(1000):
            if self.transport.producer is not None:
                self.transport.producer.resumeProducing()
            elif any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                self.clock.advance(0)
            else:
                return

    def feed(self, data: bytes, settle: bool) -> None:
        self.proto.dataReceived(data)
        if settle:
            self.settle()

    @property
    def output(self) -> bytes:
        return self.transport.value()


@functools.cache
def one_write_per_command() -> bytes:
    """The replies when the client writes each piece and waits for the answers."""
    run = _Run()
    for segment in SESSION:
        for piece in segment:
            run.feed(piece, settle=True)
    return run.output


def cut(data: bytes, offsets: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(o for o in offsets if 0 < o < len(data))), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class PipelineSplitTests(unittest.TestCase):
    """However the session's bytes are cut into reads, and whether or not the store answers
    between them, the server answers exactly as to one command per write (IMAP 1)."""

    def setUp(self) -> None:
        self.expected = one_write_per_command()

    def replay(self, reads: list[list[bytes]], settle_after: list[bool] | None = None) -> bytes:
        run = _Run()
        n = 0
        for segment in reads:
            for data in segment:
                run.feed(data, settle=settle_after[n] if settle_after else False)
                n += 1
            run.settle()  # a client waits for the STARTTLS answer before the handshake
        run.settle()
        return run.output

    def test_baseline_answers_every_command_once_in_order(self) -> None:
        """The reference itself: each tag gets one tagged reply, in the order sent; nothing
        after BYE but LOGOUT's OK."""
        lines = self.expected.split(b"\r\n")
        tagged = [line.split(b" ")[0] for line in lines if line[:1] not in (b"*", b"+", b"")
                  and b" " in line and line.split(b" ")[1] in (b"OK", b"NO", b"BAD")]
        self.assertEqual(tagged, TAGS, self.expected)
        self.assertTrue(self.expected.endswith(b"* BYE Logging out\r\nlo OK Logout completed.\r\n"))
        self.assertIn(b"l1 OK [CAPABILITY", self.expected)
        self.assertIn(b"* SEARCH 1 2 3 4\r\nse OK", self.expected)
        size = len(BIG.replace(b"\n", b"\r\n"))
        self.assertIn(b"* 2 FETCH (BODY[] {%d}\r\n" % size, self.expected)

    def test_the_reported_write(self) -> None:
        """The issue's example: NOOP, APPEND with LITERAL+, NOOP in one write: three answers."""
        run = _Run()
        run.feed(b"l LOGIN boss secret\r\n", settle=True)
        run.transport.clear()
        run.feed(b"a NOOP\r\nb APPEND INBOX {5+}\r\nhello\r\nc NOOP\r\n", settle=True)
        tags = [line.split(b" ")[0] for line in run.output.split(b"\r\n")
                if line[:1] not in (b"*", b"")]
        self.assertEqual(tags, [b"a", b"b", b"c"], run.output)

    def test_every_byte_offset(self) -> None:
        """The session in one read per segment, and cut in two at every byte offset."""
        self.assertEqual(self.replay([[b"".join(seg)] for seg in SESSION]), self.expected)
        for index, segment in enumerate(SESSION):
            data = b"".join(segment)
            for offset in range(1, len(data)):
                reads = [[b"".join(seg)] for seg in SESSION]
                reads[index] = cut(data, [offset])
                out = self.replay(reads)
                self.assertEqual(out, self.expected,
                                 f"segment {index} cut at {offset}: {data[:offset]!r}")

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(st.data())
    def test_random_reads(self, data: st.DataObject) -> None:
        """Random cuts, the store answering between some reads and not others."""
        reads = []
        for segment in SESSION:
            joined = b"".join(segment)
            offsets = data.draw(st.lists(st.integers(1, len(joined) - 1), max_size=40))
            reads.append(cut(joined, offsets))
        settle = data.draw(st.lists(st.booleans(), min_size=sum(map(len, reads)),
                                    max_size=sum(map(len, reads))))
        self.assertEqual(self.replay(reads, settle), self.expected)

    def test_one_byte_per_read(self) -> None:
        reads = [[bytes([b]) for b in b"".join(seg)] for seg in SESSION]
        self.assertEqual(self.replay(reads), self.expected)


class CommandLimitTests(ImapTestCase):
    """S5: a command, literals included, is at most 8 KB before login and imap_max_line_length
    (64k) after it, plus the message of an APPEND; an oversized LITERAL+ is BAD [TOOBIG] and
    the connection is closed (RFC 7888 4: the data follows anyway), a synchronizing one NO."""

    def assertClosedWith(self, s: Session, tag: bytes, out: bytes) -> None:
        self.assertEqual(out, tag + b" BAD [TOOBIG] Literal too big.\r\n* BYE Literal too big.\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.proto._parts, [])

    def test_literals_before_login_cannot_grow_one_command(self) -> None:
        """The report's LOGIN {N+} chain: each literal is small, the command is not."""
        s = self.session()
        out = s.send(b"a LOGIN {3000+}\r\n" + b"u" * 3000 + b" {3000+}\r\n" + b"p" * 3000)
        self.assertEqual(out, b"")
        self.assertLess(sum(map(len, s.proto._parts)), 8192)
        self.assertClosedWith(s, b"a", s.send(b" {3000+}\r\n" + b"x" * 3000))

    def test_big_literal_before_login_refused_at_once(self) -> None:
        s = self.session()
        self.assertClosedWith(s, b"a", s.send(b"a LOGIN {1048576+}\r\n" + b"x" * 65536))

    def test_append_gets_no_allowance_before_login(self) -> None:
        s = self.session()
        self.assertClosedWith(s, b"a", s.send(b"a APPEND INBOX {100000+}\r\n"))

    def test_long_line_before_login(self) -> None:
        """A line alone over 8 KB before login ends the session (it was 64 KB)."""
        s = self.session()
        out = s.send(b"a LOGIN " + b"x" * 9000)
        self.assertEqual(out, b"* BYE Command line too long.\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_whole_command_capped_after_login(self) -> None:
        s = self.session()
        s.select()
        part = b"x" * 30000
        search = b"a SEARCH OR SUBJECT {30000+}\r\n" + part + b" SUBJECT {30000+}\r\n" + part
        self.assertEqual(s.send(search), b"")
        self.assertClosedWith(s, b"a", s.send(b" BODY {30000+}\r\n"))

    def test_append_message_may_pass_the_line_limit(self) -> None:
        """The message of an APPEND may be bigger than imap_max_line_length; its other
        literals (the mailbox name here) count against it."""
        s = self.session()
        s.login()
        message = b"Subject: big\r\n\r\n" + b"x" * 200000
        out = s.send(b"a APPEND {5+}\r\nINBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        self.assertIn(b"a OK [APPENDUID", out)
        self.assertEqual(len(self.box().messages), 1)

    def test_synchronizing_literal_too_big_is_no(self) -> None:
        """No continuation, so no data: NO [TOOBIG], the session goes on."""
        s = self.session()
        self.assertEqual(s.cmd(b"a LOGIN {9000}"), b"a NO [TOOBIG] Literal too big.\r\n")
        self.assertIn(b"b OK", s.cmd(b"b LOGIN boss secret"))
        self.assertEqual(s.cmd(b"c SEARCH SUBJECT {70000}"), b"c NO [TOOBIG] Literal too big.\r\n")
        self.assertFalse(s.transport.disconnecting)

    def test_imap_max_line_length_is_configurable(self) -> None:
        config = make_config(imap_max_line_length=1024 * 1024)
        self.factory = IMAPFactory(config, self.portal, self.maillog, clock=self.clock)
        s = self.session()
        s.select()
        out = s.send(b"a SEARCH SUBJECT {200000+}\r\n" + b"x" * 200000 + b"\r\n")
        self.assertIn(b"* SEARCH\r\na OK", out)
        parsed = parse_config("[imap]\nimap_max_line_length = 1M\n", "mail.ini",
                              hostname=lambda: "mx.example.com")
        self.assertEqual(parsed.imap.imap_max_line_length, 1024 * 1024)
        self.assertEqual(parse_config("", "mail.ini", hostname=lambda: "mx.example.com").imap,
                         ImapConfig(65536))
        with self.assertRaises(ConfigError) as e:
            parse_config("[imap]\nimap_max_line_length = 100\n", "mail.ini",
                         hostname=lambda: "mx.example.com")
        self.assertIn("[imap] imap_max_line_length: '100' is too small: at least 1k",
                      str(e.exception))


class LogoutTests(ImapTestCase):
    def test_nothing_but_the_tagged_ok_after_bye(self) -> None:
        """Updates owed to a session (another session's STORE, new mail) are not sent after
        * BYE (IMAP 4): LOGOUT answers exactly BYE and OK."""
        self.deliver()
        one, two = self.session(), self.session()
        one.select()
        two.select()
        two.cmd(b"s STORE 1 +FLAGS (\\Flagged)")
        self.deliver()
        self.assertEqual(one.cmd(b"L LOGOUT"), b"* BYE Logging out\r\nL OK Logout completed.\r\n")
        self.assertTrue(one.transport.disconnecting)


DEEP = 3000


class NestingTests(ImapTestCase):
    """IMAP 5: nesting past MAX_NESTING is BAD, with no traceback in the log; nesting that
    clients use still works."""

    def assertBad(self, out: bytes, tag: bytes = b"a") -> None:
        self.assertTrue(out.startswith(tag + b" BAD "), out[:200])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_id_before_login(self) -> None:
        s = self.session()
        self.assertBad(s.cmd(b"a ID " + b"(" * DEEP + b")" * DEEP))
        self.assertIn(b"b OK", s.cmd(b"b ID ((\"a\" \"b\"))"))

    def test_search(self) -> None:
        self.deliver()
        s = self.session()
        s.select()
        self.assertBad(s.cmd(b"a SEARCH " + b"NOT " * DEEP + b"ALL"))
        self.assertBad(s.cmd(b"a SEARCH " + b"(" * DEEP + b"ALL" + b")" * DEEP))
        self.assertBad(s.cmd(b"a SEARCH " + b"OR ALL " * DEEP + b"ALL"))
        self.assertBad(s.cmd(b"a UID SEARCH " + b"OR " * DEEP + b"ALL " * (DEEP + 1)))
        self.assertIn(b"* SEARCH 1\r\nb OK", s.cmd(b"b SEARCH " + b"NOT NOT " * 40 + b"ALL"))
        self.assertIn(b"* SEARCH 1\r\nc OK", s.cmd(b"c SEARCH " + b"(" * 90 + b"ALL" + b")" * 90))

    def test_parenthesised_arguments(self) -> None:
        """SELECT parameters, STORE and APPEND flags, STATUS items, LIST options."""
        self.deliver()
        s = self.session()
        s.select()
        deep = b"(" * DEEP + b")" * DEEP
        self.assertBad(s.cmd(b"a SELECT INBOX " + deep))
        s.cmd(b"s SELECT INBOX")
        self.assertBad(s.cmd(b"a STORE 1 FLAGS " + deep))
        self.assertBad(s.send(b"a APPEND INBOX " + deep + b" {5+}\r\nhello\r\n"))
        self.assertBad(s.cmd(b"a STATUS INBOX " + deep))
        self.assertBad(s.cmd(b"a LIST " + deep + b' "" *'))
        self.assertBad(s.cmd(b"a FETCH 1 " + deep))
        self.assertBad(s.cmd(b"a FETCH 1 (BODY[HEADER.FIELDS " + deep + b"])"))
        self.assertIn(b"b OK", s.cmd(b"b STATUS INBOX (MESSAGES)"))

    def test_message_nested_deep(self) -> None:
        """Anyone can mail a message with MIME parts nested thousands deep: SEARCH BODY/TEXT
        (the email package's walk recursed per level), BODYSTRUCTURE and sections answer."""
        body = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1)
                        for i in range(DEEP))
        self.deliver(b"Subject: deep\nContent-Type: multipart/mixed; boundary=b0\n\n" + body
                     + b"--b%d\n\nhello\n" % DEEP)
        self.deliver(b"Subject: q\nContent-Type: multipart/mixed; boundary=x\n\n--x\n"
                     b"Content-Type: message/rfc822\n\nSubject: in\nContent-Type: text/plain; "
                     b"charset=utf-8\nContent-Transfer-Encoding: base64\n\nQ2Fmw6kK\n--x--\n")
        s = self.session()
        s.select()
        self.assertIn(b"* SEARCH 1\r\na OK", s.cmd(b"a SEARCH BODY hello"))
        self.assertIn(b"* SEARCH 1\r\nb OK", s.cmd(b"b SEARCH TEXT hello"))
        self.assertIn(b"* SEARCH 2\r\nq OK",
                      s.cmd(b"q SEARCH CHARSET UTF-8 BODY {5+}\r\nCaf\xc3\xa9"))
        deep = b".".join([b"1"] * 500)
        self.assertIn(b"c OK", s.cmd(b"c FETCH 1 (BODYSTRUCTURE BODY[" + deep + b"])"))
        self.assertEqual(self.flushLoggedErrors(), [])


_WORDS = [
    b"INBOX", b"Sent", b"a/b", b"&Jjo-", b"&", b"~x", b"/etc", b"..", b"1", b"2", b"*", b"1:*",
    b"2:4,7", b"0", b"4294967296", b"NIL", b"ALL", b"FAST", b"FULL", b"FLAGS", b"UID", b"BODY[]",
    b"BODY.PEEK[HEADER.FIELDS (From To)]", b"BODY[1.2.MIME]<0.10>", b"BODY[TEXT]<5.0>",
    b"BODY[HEADER.FIELDS.NOT ({4}\r\nFrom)]", b"RFC822", b"RFC822.PEEK", b"ENVELOPE",
    b"BODYSTRUCTURE", b"INTERNALDATE", b"\\Seen", b"\\Deleted", b"\\Recent", b"\\Bogus", b"$Label",
    b"+FLAGS", b"-FLAGS.SILENT", b"FLAGS.SILENT", b"OR", b"NOT", b"SUBJECT", b"HEADER", b"BODY",
    b"TEXT", b"FROM", b"BEFORE", b"SINCE", b"1-Jan-2020", b"31-Feb-2020", b"LARGER", b"KEYWORD",
    b"CHARSET", b"UTF-8", b"KOI8-R", b"MESSAGES", b"UIDNEXT", b"UNSEEN", b"RECENT", b"(", b")",
    b"((", b"))", b'""', b"%", b"*%", b'"14-Sep-2026 19:07:10 +0200"',
    b'"99-Xyz-2026 99:99:99 +9999"',
    b"RETURN", b"(SUBSCRIBED)", b"(SPECIAL-USE)", b"(CHILDREN)", b"UIDONLY", b"\x00", b"\xff\xfe",
    b"{0}", b"{99999999999}",
]
_COMMANDS = [
    b"CAPABILITY", b"NOOP", b"ID", b"ENABLE", b"NAMESPACE", b"SELECT", b"EXAMINE", b"CREATE",
    b"DELETE", b"RENAME", b"SUBSCRIBE", b"UNSUBSCRIBE", b"LIST", b"LSUB", b"XLIST", b"STATUS",
    b"APPEND", b"CHECK", b"UNSELECT", b"EXPUNGE", b"SEARCH", b"FETCH", b"STORE", b"COPY", b"MOVE",
    b"UID FETCH", b"UID STORE", b"UID SEARCH", b"UID COPY", b"UID MOVE", b"UID EXPUNGE", b"UID",
    b"BOGUS", b"LOGIN",
]
_LOGIN_COMMANDS = [b"AUTHENTICATE", b"AUTHENTICATE PLAIN", b"AUTHENTICATE LOGIN", b"STARTTLS"]
_quoted = st.binary(max_size=12).map(
    lambda b: b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    .replace(b"\r", b"").replace(b"\n", b"") + b'"')
_literal = st.binary(max_size=20).map(lambda b: b"{%d+}\r\n" % len(b) + b)
_junk = st.binary(min_size=1, max_size=6).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"") or b"x")
_token = st.one_of(st.sampled_from(_WORDS), _quoted, _literal, _junk)
_arguments = st.lists(st.tuples(_token, st.sampled_from([b" ", b" ", b""])), max_size=8).map(
    lambda pairs: b"".join(sep + token for token, sep in pairs))


class NoTracebackTests(ImapTestCase):
    """IMAP 5: no input produces a traceback in the log, and every command gets exactly one
    tagged reply; random commands from the grammar's pieces, before login and after it."""

    def run_commands(self, commands: list[tuple[bytes, bytes]], select: bool) -> None:
        self.setUp()  # a new store and session for each example
        self.deliver()
        s = self.session()
        if select:
            s.select()
        for n, (name, arguments) in enumerate(commands):
            tag = b"T%d" % n
            out = s.send(tag + b" " + name + arguments + b"\r\n")
            if out.endswith(b"+ Ready for literal data\r\n"):  # it ended in {0}
                out += s.send(b"\r\n")
            if out.endswith((b"\r\n+ \r\n", b"\r\n+ VXNlcm5hbWU6\r\n", b"\r\n+ UGFzc3dvcmQ6\r\n")) \
                    or out.startswith(b"+ "):  # an AUTHENTICATE challenge
                out += s.send(b"*\r\n")
            if s.transport.disconnecting:  # an oversized literal closes: nothing more to say
                return
            replies = [line for line in out.split(b"\r\n") if line.startswith(tag + b" ")]
            self.assertEqual(len(replies), 1, out)
            self.assertNotIn(b"[SERVERBUG]", out)
            self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    @given(st.lists(st.tuples(st.sampled_from(_COMMANDS), _arguments), min_size=1, max_size=6))
    def test_random_commands_selected(self, commands: list[tuple[bytes, bytes]]) -> None:
        self.run_commands(commands, select=True)

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(st.lists(st.tuples(st.sampled_from(_COMMANDS + _LOGIN_COMMANDS), _arguments),
                    min_size=1, max_size=6))
    def test_random_commands_before_login(self, commands: list[tuple[bytes, bytes]]) -> None:
        self.run_commands(commands, select=False)
