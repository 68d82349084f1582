"""Tests for mailsuite.smtp.server: the port-25 ESMTP session, driven through StringTransport."""

from __future__ import annotations

import random
import re
from typing import Any

from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.smtp import reader as reader_module
from mailsuite.smtp.reader import DATA_CHUNK
from mailsuite.smtp.server import SMTPFactory, message_id
from mailsuite.store.memory import MemoryStore
from tests.fakes import FakeAccounts, NoDelayTransport, SmtpRealm
from tests.test_delivery import ALIASES, ALICE, BOSS, HeldStore, inbox, make_config

HOST = "mail.example.com"


def build(case: unittest.TestCase, size_limit: int = 10240000, clock: Any = None,
          blocking: Any = threads.inline) -> Any:
    """(factory, store, maillog) wired like tap.py, with fakes; blocking work runs at once."""
    clock = clock or Clock()
    store = MemoryStore()
    maillog = MailLog(None, HOST, now=clock.seconds)
    path = case.mktemp()
    with open(path, "w") as f:
        f.write(ALIASES)
    config = make_config(path, size_limit)
    delivery = LocalDelivery(config, FakeAccounts(BOSS, ALICE), store, maillog, blocking,
                             now=clock.seconds)
    realm = SmtpRealm(delivery)
    the_portal = portal.Portal(realm, [checkers.AllowAnonymousAccess()])
    factory = SMTPFactory(
        config,
        the_portal,
        delivery,
        maillog,
        clock=clock,
        reverse_lookup=lambda ip: defer.succeed("client.example"),
    )
    return factory, store, maillog, realm


def _reference_data(wire: bytes) -> tuple[bytes, bytes]:
    """RFC 5321 DATA read one line at a time (the test oracle): (the stored body, the bytes
    after the terminating CRLF . CRLF)."""
    out = []
    prev_crlf = True
    pos = 0
    while True:
        end = wire.find(b"\n", pos)
        if end < 0:
            raise ValueError("no terminator")
        line, pos = wire[pos : end + 1], end + 1
        if line == b".\r\n" and prev_crlf:
            return b"".join(out), wire[pos:]
        prev_crlf = line.endswith(b"\r\n")
        if prev_crlf:
            line = line[:-2] + b"\n"
        if line.startswith(b".") and line != b".\n":
            line = line[1:]
        out.append(line)


class SessionCase(unittest.TestCase):
    size_limit = 10240000

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.factory, self.store, self.maillog, self.realm = build(
            self, self.size_limit, self.clock
        )
        self.delivery = self.factory.delivery
        self.proto = self.factory.buildProtocol(None)
        self.transport = NoDelayTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> list[str]:
        """Feed data in one dataReceived; return the reply lines it produced."""
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value().decode().split("\r\n")[:-1]

    def codes(self, data: bytes) -> list[str]:
        return [line[:3] for line in self.send(data)]

    def log_text(self) -> list[str]:
        return [line.split("]: ", 1)[1] for line in self.maillog.lines]

    def transaction(self, rcpt: bytes = b"boss@mail.example.com") -> None:
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<" + rcpt + b">\r\n"), ["250 2.1.5 Ok"])
        self.assertEqual(self.codes(b"DATA\r\n"), ["354"])


class CommandTests(SessionCase):
    def test_greeting_and_nodelay(self) -> None:
        """220 myhostname ESMTP mailsuite, TCP_NODELAY set, `connect from` logged."""
        self.assertEqual(self.transport.value(), b"220 mail.example.com ESMTP mailsuite\r\n")
        self.assertTrue(self.transport.no_delay)
        self.assertEqual(self.log_text(), ["connect from client.example[192.0.2.7]"])

    def test_ehlo_lists_what_we_honour(self) -> None:
        """EHLO: hostname, PIPELINING, SIZE limit, VRFY, ENHANCEDSTATUSCODES, 8BITMIME, DSN,
        SMTPUTF8; no AUTH."""
        self.assertEqual(
            self.send(b"EHLO client.example\r\n"),
            [
                "250-mail.example.com",
                "250-PIPELINING",
                "250-SIZE 10240000",
                "250-VRFY",
                "250-ENHANCEDSTATUSCODES",
                "250-8BITMIME",
                "250-DSN",
                "250 SMTPUTF8",
            ],
        )

    def test_helo(self) -> None:
        """HELO answers 250 with our name; without an argument 501."""
        self.assertEqual(self.send(b"HELO x\r\n"), ["250 2.0.0 mail.example.com"])
        self.assertEqual(self.send(b"HELO\r\n"), ["501 5.5.4 Syntax: HELO hostname"])

    def test_simple_commands(self) -> None:
        """NOOP, RSET, VRFY (252, no user probing), HELP, in any case."""
        self.assertEqual(self.send(b"noop\r\n"), ["250 2.0.0 Ok"])
        self.assertEqual(self.send(b"RSET\r\n"), ["250 2.0.0 Ok"])
        self.assertEqual(self.codes(b"VRFY boss\r\n"), ["252"])
        self.assertTrue(self.send(b"VRFY boss\r\n")[0].startswith("252 2.0.0 "))
        self.assertEqual(self.codes(b"VRFY\r\n"), ["501"])
        self.assertTrue(self.send(b"HELP\r\n")[0].startswith("214 2.0.0 "))

    def test_bad_commands_keep_session(self) -> None:
        """Unknown command 502, empty line 500, over-long line 500: the session goes on."""
        self.assertEqual(self.send(b"FOO bar\r\n"), ["502 5.5.2 Error: command not recognized"])
        self.assertEqual(self.send(b"\r\n"), ["500 5.5.2 Error: bad syntax"])
        self.assertEqual(self.codes(b"X" * 5000 + b"\r\nNOOP\r\n"), ["500", "250"])
        self.assertFalse(self.transport.disconnecting)

    def test_bare_auth(self) -> None:
        """Bare AUTH (and AUTH PLAIN ...) gets 503 5.5.1, no crash, the session goes on."""
        self.assertEqual(self.send(b"AUTH\r\n"), ["503 5.5.1 Error: authentication not enabled"])
        self.assertEqual(self.codes(b"AUTH PLAIN AGJvc3MAc2VjcmV0\r\nNOOP\r\n"), ["503", "250"])
        self.assertFalse(self.transport.disconnecting)

    def test_quit(self) -> None:
        """QUIT: 221 2.0.0, connection closed, `disconnect from` with command counts."""
        self.send(b"EHLO x\r\nFOO\r\n")
        self.assertEqual(self.send(b"QUIT\r\n"), ["221 2.0.0 Bye"])
        self.assertTrue(self.transport.disconnecting)
        self.proto.connectionLost(None)
        self.assertEqual(
            self.log_text()[-1],
            "disconnect from client.example[192.0.2.7] ehlo=1 unknown=0/1 quit=1 commands=2/3",
        )
        self.assertEqual(self.realm.logouts, 0)

    def test_sequence_errors(self) -> None:
        """RCPT before MAIL, nested MAIL, DATA before RCPT: 503 5.5.1."""
        self.assertEqual(
            self.send(b"RCPT TO:<boss@localhost>\r\n"), ["503 5.5.1 Error: need MAIL command"]
        )
        self.send(b"MAIL FROM:<>\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<>\r\n"), ["503 5.5.1 Error: nested MAIL command"])
        self.assertEqual(self.send(b"DATA\r\n"), ["503 5.5.1 Error: need RCPT command"])
        self.assertEqual(self.realm.logouts, 0)
        self.proto.connectionLost(None)
        self.assertEqual(self.realm.logouts, 1)

    def test_mail_parameters(self) -> None:
        """MAIL: SIZE, BODY, SMTPUTF8 and DSN's RET/ENVID accepted; unknown parameters
        555 5.5.4, bad syntax 501."""
        self.assertEqual(
            self.send(b"MAIL FROM: <a@b.example> SIZE=1234 BODY=8BITMIME\r\n"), ["250 2.1.0 Ok"]
        )
        self.send(b"RSET\r\n")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@b.example> RET=HDRS ENVID=x+2By SMTPUTF8\r\n"),
            ["250 2.1.0 Ok"],
        )
        self.assertEqual(self.proto._mail_params.envid, "x+y")
        self.assertEqual(self.proto._mail_params.ret, "HDRS")
        self.send(b"RSET\r\n")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@b.example> XYZZY=1\r\n"),
            ["555 5.5.4 Unsupported option: XYZZY=1"],
        )
        self.assertEqual(self.codes(b"MAIL FROM:<a@b.example> RET=ALL\r\n"), ["555"])
        self.assertEqual(self.codes(b"MAIL FROM:<a@b.example> SIZE=abc\r\n"), ["501"])
        self.assertEqual(self.codes(b"MAIL TO:<a@b.example>\r\n"), ["501"])

    def test_size_at_mail(self) -> None:
        """SIZE= above message_size_limit: 552 5.3.4."""
        self.assertEqual(
            self.send(b"MAIL FROM:<a@b.example> SIZE=10240001\r\n"),
            ["552 5.3.4 Message size exceeds fixed limit"],
        )

    def test_cached_recipient_needs_no_lookup(self) -> None:
        """A recipient looked up a moment ago is accepted from the cache: no resolve() call
        (no thread hop, no Deferred), same 250 and the same delivery."""
        self.transaction()
        self.send(b"hi\r\n.\r\n")

        def no_lookup(address: str) -> Any:
            raise AssertionError(f"looked up {address} again")

        self.patch(self.delivery, "resolve", no_lookup)
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<boss@mail.example.com>\r\n"), ["250 2.1.5 Ok"])
        self.assertEqual(self.codes(b"DATA\r\nagain\r\n.\r\n"), ["354", "250"])
        self.assertEqual(len(inbox(self.store, BOSS)), 2)

    def test_unknown_user(self) -> None:
        """Unknown local user: 550 5.1.1 (Postfix text) and a NOQUEUE reject log line."""
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(
            self.send(b"RCPT TO:<nobody@mail.example.com>\r\n"),
            [
                (
                    "550 5.1.1 <nobody@mail.example.com>: Recipient address rejected: "
                    "User unknown in local recipient table"
                )
            ],
        )
        self.assertIn(
            "NOQUEUE: reject: RCPT from client.example[192.0.2.7]: 550 5.1.1", self.log_text()[-1]
        )
        self.assertEqual(self.send(b"DATA\r\n"), ["554 5.5.1 Error: no valid recipients"])

    def test_other_domain(self) -> None:
        """Other domains: 554 5.7.1 Relay access denied."""
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(
            self.send(b"RCPT TO:<x@elsewhere.example>\r\n"),
            ["554 5.7.1 <x@elsewhere.example>: Relay access denied"],
        )

    def test_alias_loop(self) -> None:
        """An alias loop is refused with 554 5.4.6."""
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.codes(b"RCPT TO:<loop1@localhost>\r\n"), ["554"])

    def test_idle_timeout(self) -> None:
        """300 s of silence: 421 4.4.2 and the connection closes (Clock-driven)."""
        self.send(b"EHLO x\r\n")
        self.clock.advance(299)
        self.assertFalse(self.transport.disconnecting)
        self.transport.clear()
        self.clock.advance(1)
        self.assertEqual(
            self.transport.value(), b"421 4.4.2 mail.example.com Error: timeout exceeded\r\n"
        )
        self.assertTrue(self.transport.disconnecting)

    def test_idle_timeout_around_delivery(self) -> None:
        """Commands answered at once (MAIL, RCPT from the cache) keep the idle timer running;
        while the store writes there is none (400 s pass); after the 250 it is 300 s again."""
        held = HeldStore()
        self.delivery.store = held
        self.transaction()
        self.send(b"hi\r\n.\r\n")
        self.clock.advance(400)
        self.assertFalse(self.transport.disconnecting)
        held.pending[0][2].callback(None)
        self.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<boss@mail.example.com>\r\n")
        self.clock.advance(299)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_too_many_errors(self) -> None:
        """20 errors: 421 4.7.0 and disconnect (smtpd_hard_error_limit); from the 10th on
        (smtpd_soft_error_limit) each reply waits smtpd_error_sleep_time (1s) on the clock."""
        replies = self.send(b"FOO\r\n" * 25)
        self.assertEqual(len(replies), 10)
        for _ in range(10):
            self.clock.advance(1)
        replies = self.transport.value().decode().split("\r\n")[:-1]
        self.assertEqual(len(replies), 21)
        self.assertTrue(replies[-1].startswith("421 4.7.0"))
        self.assertTrue(self.transport.disconnecting)


class DataTests(SessionCase):
    def test_delivery_and_headers(self) -> None:
        """A message lands with Return-Path, Delivered-To and a well-formed Received: on top;
        CRLF becomes LF, dots are unstuffed; 250 names the queue id logged at client=."""
        self.transaction()
        replies = self.send(
            b"Subject: hi\r\nMessage-ID: <m1@b.example>\r\n\r\n..dot\r\nend\r\n.\r\n"
        )
        (reply,) = replies
        queue_id = re.fullmatch(r"250 2\.0\.0 Ok: queued as ([0-9A-F]{10})", reply).group(1)
        (stored,) = inbox(self.store, BOSS)
        lines = stored.split(b"\n")
        self.assertEqual(
            lines[:3],
            [
                b"Return-Path: <a@b.example>",
                b"X-Original-To: boss@mail.example.com",
                b"Delivered-To: boss@mail.example.com",
            ],
        )
        self.assertEqual(lines[3], b"Received: from client.example (client.example [192.0.2.7])")
        self.assertEqual(
            lines[4], b"\tby mail.example.com (mailsuite) with ESMTP id " + queue_id.encode()
        )
        self.assertRegex(lines[5], rb"^\tfor <boss@mail.example.com>; \w{3}, \d\d \w{3} 2023 ")
        self.assertTrue(stored.endswith(b"\n\n.dot\nend\n"))
        self.assertNotIn(b"\r", stored)
        log = self.log_text()
        self.assertIn(f"{queue_id}: client=client.example[192.0.2.7]", log)
        self.assertIn(f"{queue_id}: message-id=<m1@b.example>", log)
        self.assertTrue(
            any(
                line.startswith(f"{queue_id}: to=<boss@mail.example.com>, relay=local")
                and "status=sent (delivered to mailbox)" in line
                for line in log
            )
        )

    def test_pipelining_in_one_packet(self) -> None:
        """MAIL+RCPT+RCPT+DATA in one packet with slow (async) look-ups: answered in order."""
        held: list[defer.Deferred[Any]] = []
        real_resolve = self.delivery.resolve

        def slow_resolve(address: str) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            held.append(d)
            d.addCallback(lambda _: real_resolve(address))
            return d

        self.delivery.resolve = slow_resolve
        self.send(b"EHLO x\r\n")
        replies = self.send(
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@localhost>\r\n"
            b"RCPT TO:<boss@localhost>\r\nDATA\r\n"
        )
        self.assertEqual(replies, ["250 2.1.0 Ok"])
        self.transport.clear()
        held[0].callback(None)
        self.assertEqual(self.transport.value()[:3], b"550")
        held[1].callback(None)
        self.assertEqual(
            self.transport.value().decode().split("\r\n")[1:3],
            ["250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"],
        )
        self.assertEqual(self.codes(b"x\r\n.\r\nQUIT\r\n"), ["250", "221"])

    def test_long_line_in_data(self) -> None:
        """An over-long line in DATA is kept and the body is never run as commands."""
        self.transaction()
        long_line = b"A" * (3 * DATA_CHUNK + 17)
        replies = self.send(b"Subject: x\r\n\r\n" + long_line + b"\r\nQUIT\r\nRSET\r\n.\r\n")
        self.assertEqual([r[:3] for r in replies], ["250"])
        self.assertFalse(self.transport.disconnecting)
        (stored,) = inbox(self.store, BOSS)
        self.assertTrue(stored.endswith(b"\n\n" + long_line + b"\nQUIT\nRSET\n"))

    def test_long_line_split_across_packets(self) -> None:
        """A long line arriving in pieces, with a leading dot and CR/LF split, is kept whole."""
        self.transaction()
        for piece in (b"." + b"B" * DATA_CHUNK, b"C" * DATA_CHUNK + b"\r", b"\n.\r", b"\n"):
            self.proto.dataReceived(piece)
        (stored,) = inbox(self.store, BOSS)
        self.assertTrue(stored.endswith(b"\n" + b"B" * DATA_CHUNK + b"C" * DATA_CHUNK + b"\n"))

    def test_bare_lf_dot_does_not_end_data(self) -> None:
        """Only CRLF.CRLF ends DATA (no SMTP smuggling); a bare-LF line end becomes LF."""
        self.transaction()
        self.assertEqual(self.send(b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil>\r\n"), [])
        self.assertEqual(self.codes(b".\r\n"), ["250"])
        (stored,) = inbox(self.store, BOSS)
        self.assertTrue(stored.endswith(b"\n\nhello\n.\nMAIL FROM:<evil>\n"))

    def test_size_limit_in_data(self) -> None:
        """A message over message_size_limit: counted, not kept, 552 5.3.4 after the dot."""
        self.delivery.store = self.store
        self.proto.size_limit = 1000
        self.transaction()
        for _ in range(20):
            self.proto.dataReceived(b"x" * 500 + b"\r\n")
        self.assertEqual(self.proto.reader._parts, [])
        self.assertEqual(self.send(b".\r\n"), ["552 5.3.4 Error: message file too big"])
        self.assertEqual(inbox(self.store, BOSS), [])
        self.assertEqual(self.codes(b"MAIL FROM:<>\r\n"), ["250"])

    def test_alias_fan_out(self) -> None:
        """An alias of two users: one copy each, two maillog lines with orig_to."""
        self.transaction(b"team@mail.example.com")
        self.assertEqual(self.codes(b"Subject: x\r\n\r\nhi\r\n.\r\n"), ["250"])
        self.assertEqual(len(inbox(self.store, BOSS)), 1)
        self.assertEqual(len(inbox(self.store, ALICE)), 1)
        sent = [line for line in self.log_text() if "status=sent" in line]
        self.assertEqual(len(sent), 2)
        self.assertIn("to=<alice@example.com>, orig_to=<team@mail.example.com>", sent[1])

    def test_case_insensitive(self) -> None:
        """Commands, FROM:/TO: and addresses are case-insensitive."""
        self.send(b"ehlo x\r\nmail from:<a@b.example>\r\n")
        self.assertEqual(self.send(b"rcpt to:<BOSS@MAIL.Example.COM>\r\n"), ["250 2.1.5 Ok"])
        self.assertEqual(self.codes(b"data\r\nhi\r\n.\r\n"), ["354", "250"])
        self.assertEqual(len(inbox(self.store, BOSS)), 1)

    def test_250_only_after_fsync(self) -> None:
        """No 250 until the store's Deferred fired; then 250 queued as."""
        held = HeldStore()
        self.delivery.store = held
        self.transaction()
        self.assertEqual(self.send(b"hi\r\n.\r\nNOOP\r\n"), [])
        self.transport.clear()
        held.pending[0][2].callback(None)
        self.assertEqual(
            [r[:3] for r in self.transport.value().decode().split("\r\n")[:-1]], ["250", "250"]
        )

    def test_store_failure_451(self) -> None:
        """A failed store write: 451 4.3.0, nothing acknowledged; the session goes on."""
        held = HeldStore()
        self.delivery.store = held
        self.transaction()
        self.send(b"hi\r\n.\r\n")
        self.transport.clear()
        held.pending[0][2].errback(OSError(28, "No space left on device"))
        self.assertEqual(self.transport.value(), b"451 4.3.0 Error: queue file write error\r\n")
        self.assertEqual(self.codes(b"MAIL FROM:<>\r\n"), ["250"])
        self.flushLoggedErrors()

    def test_message_without_headers(self) -> None:
        """A body with no header block gets a blank line after our Received: header."""
        self.transaction()
        self.send(b"just text\r\n.\r\n")
        (stored,) = inbox(self.store, BOSS)
        self.assertIn(b"\n\njust text\n", stored)
        self.assertTrue(any(line.endswith(": message-id=<>") for line in self.log_text()))

    def test_data_conversion_fuzz(self) -> None:
        """DATA read in random packet sizes (and with a small DATA_CHUNK, so that long lines
        come in pieces) stores exactly what a line-by-line reading of RFC 5321 gives: CRLF ->
        LF, a bare LF kept as a line end, one leading dot removed from each line except a line
        that is only ".", data ended only by CRLF . CRLF; a body without a header line gets a
        blank line under our Received:. Pins the bytes-level fast paths of smtp/reader.py."""
        self.patch(reader_module, "DATA_CHUNK", 16)
        rng = random.Random(20261128)
        atoms = [b"a", b"bc", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\n.\n",
                 b"\n.", b"x: y", b"Subject: s", b"d" * 40, b"\x00", b"\xff", b" "]
        captured: list[bytes] = []

        def deliver(data: bytes, queue_id: str) -> Any:
            captured.append(data)
            return defer.succeed(None)

        self.proto._deliver = deliver
        checked = 0
        for _ in range(1500):
            body = b"".join(rng.choice(atoms) for _ in range(rng.randrange(0, 40)))
            expected, rest = _reference_data(body + b"\r\n.\r\n")
            if rest:  # the random body holds a terminator of its own
                continue
            self.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<boss@mail.example.com>\r\nDATA\r\n")
            wire = body + b"\r\n.\r\n"
            captured.clear()
            self.transport.clear()
            i = 0
            while i < len(wire):
                n = rng.choice((1, 2, 3, 5, 17, 64, 1000))
                self.proto.dataReceived(wire[i : i + n])
                i += n
            self.assertEqual(self.transport.value()[:4], b"250 ", body)
            (data,) = captured
            received, stored = data.split(b"\n", 3)[:3], data.split(b"\n", 3)[3]
            self.assertTrue(received[0].startswith(b"Received: "))
            first = expected.split(b"\n", 1)[0]
            if first and not re.match(rb"^[!-9;-~]+:", first):
                expected = b"\n" + expected
            self.assertEqual(stored, expected, body)
            checked += 1
        self.assertGreater(checked, 500)

    def test_message_id_helper(self) -> None:
        """message_id finds a folded Message-ID in the header block only."""
        self.assertEqual(message_id(b"A: b\nMessage-Id:\n <x@y>\n\nMessage-ID: <no>\n"), "x@y")
        self.assertEqual(message_id(b"A: b\n\nMessage-ID: <no>\n"), "")
