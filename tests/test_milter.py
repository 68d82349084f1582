"""Tests for mailsuite.filter.milter: the codec, the modifications, and the Stage talking to a
scripted milter over a StringTransport (time on a Clock)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsuite.filter.milter import protocol as p
from mailsuite.filter.milter.edit import Editor, reply_parts
from mailsuite.filter.milter.session import MilterError, MilterProtocol, Settings
from mailsuite.filter.milter.stage import MilterStage
from mailsuite.maillog import MailLog
from mailsuite.milterconf import parse_milters
from mailsuite.mta.transaction import (
    PICKUP,
    SMTP,
    Client,
    Discard,
    Envelope,
    Hold,
    Message,
    Pipeline,
    Recipient,
    Verdict,
)
from tests.fakes import NoDelayTransport
from tests.test_smtp_server import HOST, build
from mailsuite.config import ConfigError, parse_config

DATA = (b"Received: from x\n\tby y\nSubject: hi\nX-A: 1\nX-A: 2\n\nline 1\nline 2\n")
ALL = p.MY_ACTIONS


def message(door: str = SMTP, data: bytes = DATA, rcpts: tuple[str, ...] = ("bob@ex.test",)
            ) -> Message:
    client = Client(door, "192.0.2.7", "client.example", "helo.example", protocol="ESMTP")
    return Message(Envelope("Q1", "joe@far.example", [Recipient(r) for r in rcpts], client),
                   data)


def optneg(actions: int = ALL, flags: int = 0, version: int = 6, extra: bytes = b"") -> bytes:
    return p.packet(p.SMFIC_OPTNEG, struct.pack("!III", version, actions, flags) + extra)


Handler = Callable[[bytes, bytes], "list[bytes] | None"]


class FakeMilter(StringTransport):
    """A milter on the far end of a StringTransport: each command (macros aside) is recorded
    in ``seen`` and answered by ``handler(code, data)`` (a list of reply packets, None: no
    reply), one reactor turn later."""

    def __init__(self, clock: Clock, handler: Handler, negotiated: bytes) -> None:
        super().__init__()
        self.clock = clock
        self.handler = handler
        self.negotiated = negotiated
        self.seen: list[tuple[bytes, bytes]] = []
        self.macros: list[bytes] = []
        self.decoder = p.Decoder()
        self.wire: MilterProtocol | None = None

    def write(self, data: bytes) -> None:
        for code, body in self.decoder.feed(data):
            if code == p.SMFIC_MACRO:
                self.macros.append(body)
                continue
            self.seen.append((code, body))
            if code == p.SMFIC_QUIT:
                continue
            replies = [self.negotiated] if code == p.SMFIC_OPTNEG else \
                self.handler(code, body)
            if replies:
                self.clock.callLater(0, self._answer, b"".join(replies))

    def _answer(self, data: bytes) -> None:
        if self.wire is not None:  # not closed meanwhile
            self.wire.dataReceived(data)

    def loseConnection(self) -> None:
        self.abortConnection()

    def abortConnection(self) -> None:
        if self.wire is not None and self.wire.lost is None:
            wire, self.wire = self.wire, None
            wire.connectionLost(Failure(error.ConnectionDone()))

    def commands(self) -> list[bytes]:
        return [c for c, _ in self.seen]


def cont(code: bytes, data: bytes) -> list[bytes]:
    return [p.packet(p.SMFIR_CONTINUE)]


def at_eom(*replies: bytes) -> Handler:
    def handler(code: bytes, data: bytes) -> list[bytes]:
        return list(replies) if code == p.SMFIC_BODYEOB else cont(code, data)
    return handler


def edit(code: bytes, *parts: str, index: int | None = None) -> bytes:
    head = b"" if index is None else struct.pack("!I", index)
    return p.packet(code, head + p.strings(*parts))


class StageCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.maillog = MailLog(None, "mail.example.com", now=self.clock.seconds)
        self.milters: list[FakeMilter] = []

    def stage(self, *handlers: tuple[Handler, bytes], spec: str = "",
              default_action: str = "tempfail", refused: bool = False) -> MilterStage:
        names = spec or ", ".join(f"inet:127.0.0.1:{11332 + i}" for i in range(len(handlers)))
        endpoints = parse_milters(names)
        stage = MilterStage(endpoints, endpoints, Settings(), default_action, self.clock,
                            self.maillog, "mail.example.com")
        scripted = iter(handlers)

        def connect(reactor: Any, target: Any, settings: Any) -> defer.Deferred[Any]:
            if refused:
                return defer.fail(MilterError(
                    f"connect to Milter service {target.name}: Connection refused"))
            handler, negotiated = next(scripted)
            fake = FakeMilter(self.clock, handler, negotiated)
            wire = MilterProtocol(self.clock)
            wire.makeConnection(fake)
            fake.wire = wire
            self.milters.append(fake)
            return defer.succeed(wire)

        stage.open = connect
        return stage

    def run_stage(self, stage: MilterStage, msg: Message, most: float = 1000.0) -> Any:
        d = stage(msg)
        assert d is not None
        for _ in range(10000):
            if d.called:
                break
            calls = self.clock.getDelayedCalls()
            if not calls or self.clock.seconds() > most:
                break
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))
        return self.successResultOf(d)

    def log(self) -> str:
        """The maillog as ``program: text`` lines."""
        return "\n".join(f"{line.split('postfix/')[1].split('[')[0]}: {line.split(']: ', 1)[1]}"
                         for line in self.maillog.lines)


class CodecTests(unittest.TestCase):
    def test_packets_split_across_reads(self) -> None:
        wire = p.packet(p.SMFIR_ADDHEADER, p.strings("X-A", "1")) + p.packet(p.SMFIR_CONTINUE)
        decoder = p.Decoder()
        got = list(decoder.feed(wire[:3])) + list(decoder.feed(wire[3:9]))
        got += list(decoder.feed(wire[9:]))
        self.assertEqual(got, [(b"h", b"X-A\x001\x00"), (b"c", b"")])

    def test_bad_length_refused(self) -> None:
        with self.assertRaises(p.ProtocolError):
            list(p.Decoder().feed(b"\0\0\0\0c"))
        with self.assertRaisesRegex(p.ProtocolError, "unreasonable"):
            list(p.Decoder().feed(b"\x7f\0\0\0c"))

    def test_negotiation_reply_with_macro_lists(self) -> None:
        extra = struct.pack("!I", 2) + b"i {mail_addr}\0" + struct.pack("!I", 5) + b"i\0"
        got = p.parse_optneg(optneg(flags=p.SMFIP_NOHELO, extra=extra)[5:], 6)
        self.assertEqual(got.flags, p.SMFIP_NOHELO)
        self.assertEqual(got.macros, {p.SMFIC_MAIL: "i {mail_addr}", p.SMFIC_BODYEOB: "i"})
        with self.assertRaisesRegex(p.ProtocolError, "request mask 0x400 conflict"):
            p.parse_optneg(optneg(actions=0x400)[5:], 6)
        with self.assertRaisesRegex(p.ProtocolError, "protocol version 7 conflict"):
            p.parse_optneg(optneg(version=7)[5:], 6)

    def test_replycode(self) -> None:
        text = p.check_replycode("550-5.7.1 first 100%% sure\r\n550 5.7.1 second\r\n")
        self.assertEqual(reply_parts(text), (550, "5.7.1", "first 100% sure\n5.7.1 second"))
        for bad in ("250 ok", "550 4.7.1 mixed", "55 x"):
            with self.assertRaises(p.ProtocolError):
                p.check_replycode(bad)

    def test_milter_names(self) -> None:
        got = parse_milters("inet:127.0.0.1:11332, unix:/run/c.sock"
                            " { inet:[::1]:9999, default_action=accept }")
        self.assertEqual([(m.host, m.port, m.path, m.default_action) for m in got],
                         [("127.0.0.1", 11332, "", None), ("", 0, "/run/c.sock", None),
                          ("::1", 9999, "", "accept")])
        for bad in ("127.0.0.1:11332", "tcp:x:1", "inet:host:0", "{ inet:h:1, x=y }", "{"):
            with self.assertRaises(ValueError):
                parse_milters(bad)

    def test_config_keys_and_postfix_defaults(self) -> None:
        text = ("[mail]\nsmtpd_milters = inet:127.0.0.1:11332\n"
                "milter_default_action = accept\nmilter_command_timeout = 5s\n")
        cfg = parse_config(text, "mail.ini", hostname=lambda: "mail.example.com")
        m = cfg.mail
        self.assertEqual([x.name for x in m.smtpd_milters], ["inet:127.0.0.1:11332"])
        self.assertEqual((m.milter_default_action, m.milter_command_timeout,
                          m.milter_content_timeout, m.milter_protocol), ("accept", 5, 300, 6))
        self.assertEqual(m.milter_rcpt_macros, "i {rcpt_addr} {rcpt_host} {rcpt_mailer}")
        self.assertEqual(m.non_smtpd_milters, [])
        with self.assertRaisesRegex(ConfigError, "milter_default_action"):
            parse_config("[mail]\nmilter_default_action = maybe\n", "mail.ini",
                         hostname=lambda: "mail.example.com")


class EditTests(unittest.TestCase):
    def edited(self, *edits: bytes, data: bytes = DATA) -> Message:
        msg = message(data=data)
        decoded = [next(p.Decoder().feed(e)) for e in edits]
        Editor(msg, leading_space=False).apply(decoded)
        return msg

    def test_change_header_by_occurrence_and_delete(self) -> None:
        msg = self.edited(edit(p.SMFIR_CHGHEADER, "x-a", "two", index=2),
                          edit(p.SMFIR_CHGHEADER, "Subject", "", index=1))
        self.assertEqual(msg.data, b"Received: from x\n\tby y\nX-A: 1\nx-a: two\n\n"
                                   b"line 1\nline 2\n")

    def test_change_of_a_missing_header_adds_it(self) -> None:
        msg = self.edited(edit(p.SMFIR_CHGHEADER, "X-Spam", "Yes", index=1),
                          edit(p.SMFIR_CHGHEADER, "X-Gone", "", index=1))
        self.assertIn(b"X-A: 2\nX-Spam: Yes\n\nline 1", msg.data)
        self.assertNotIn(b"X-Gone", msg.data)

    def test_add_insert_and_replace_body(self) -> None:
        msg = self.edited(edit(p.SMFIR_ADDHEADER, "X-Last", "z"),
                          edit(p.SMFIR_INSHEADER, "X-Top", "t", index=0),
                          edit(p.SMFIR_INSHEADER, "X-Third", "3", index=2),
                          p.packet(p.SMFIR_REPLBODY, b"new\r\nbo"), p.packet(b"b", b"dy\r\n"))
        self.assertEqual(msg.data, b"X-Top: t\nReceived: from x\n\tby y\nX-Third: 3\n"
                                   b"Subject: hi\nX-A: 1\nX-A: 2\nX-Last: z\n\nnew\nbody\n")

    def test_envelope_changes(self) -> None:
        msg = message(rcpts=("bob@ex.test", "Ann@ex.test"))
        edits = [edit(p.SMFIR_CHGFROM, "<new@ex.test>", "SIZE=10"),
                 edit(p.SMFIR_ADDRCPT, "<cc@ex.test>"),
                 edit(p.SMFIR_ADDRCPT_PAR, "<dd@ex.test>", "NOTIFY=NEVER"),
                 edit(p.SMFIR_DELRCPT, "<ann@ex.test>")]
        Editor(msg, False).apply([next(p.Decoder().feed(e)) for e in edits])
        self.assertEqual(msg.envelope.sender, "new@ex.test")
        self.assertEqual([r.address for r in msg.envelope.recipients],
                         ["bob@ex.test", "cc@ex.test", "dd@ex.test"])


class StageTests(StageCase):
    def test_events_in_order_with_macros(self) -> None:
        stage = self.stage((at_eom(edit(p.SMFIR_ADDHEADER, "X-Seen", "yes"),
                                   p.packet(p.SMFIR_ACCEPT)), optneg()))
        msg = message()
        self.assertIsNone(self.run_stage(stage, msg))
        fake = self.milters[0]
        self.assertEqual(fake.commands(), [b"O", b"C", b"H", b"M", b"R", b"T", b"L", b"L", b"L",
                                           b"L", b"N", b"B", b"E", b"Q"])
        self.assertEqual(fake.seen[1][1], b"client.example\x004" + b"\0\0" + b"192.0.2.7\0")
        self.assertEqual(fake.seen[3][1], b"<joe@far.example>\0")
        self.assertEqual(fake.seen[6][1], b"Received\0from x\n\tby y\0")
        self.assertEqual(fake.seen[11][1], b"line 1\r\nline 2\r\n")
        self.assertIn(b"{rcpt_addr}\0bob@ex.test\0{rcpt_host}\0ex.test\0"
                      b"{rcpt_mailer}\0local\0", fake.macros[2])
        self.assertEqual(fake.macros[0][:20], b"Cj\0mail.example.com\0")
        self.assertEqual(fake.macros[1][:6], b"Mi\0Q1\0")
        self.assertIn(b"X-A: 2\nX-Seen: yes\n\n", msg.data)

    def test_no_events_and_no_replies_as_negotiated(self) -> None:
        """SMFIP_NOHELO: no HELO; SMFIP_NOBODY: no body; SMFIP_NR_HDR: headers not answered
        (a reply to them would be out of order); protocol 2 milter: no DATA event."""
        def handler(code: bytes, data: bytes) -> list[bytes] | None:
            if code == p.SMFIC_HEADER:
                return None
            return [p.packet(p.SMFIR_CONTINUE)]
        flags = p.SMFIP_NOHELO | p.SMFIP_NOBODY | p.SMFIP_NR_HDR
        stage = self.stage((handler, optneg(flags=flags, version=2)))
        self.assertIsNone(self.run_stage(stage, message()))
        self.assertEqual(self.milters[0].commands(),
                         [b"O", b"C", b"M", b"R", b"L", b"L", b"L", b"L", b"N", b"E", b"Q"])

    def test_multiline_reject_at_end_of_message(self) -> None:
        reply = edit(p.SMFIR_REPLYCODE, "554-5.7.1 Spam message rejected\r\n554 5.7.1 see x")
        stage = self.stage((at_eom(reply), optneg()))
        got = self.run_stage(stage, message())
        self.assertEqual(got, Verdict(554, "5.7.1", "Spam message rejected\n5.7.1 see x"))
        self.assertIn("smtpd: Q1: milter-reject: END-OF-MESSAGE from client.example"
                      "[192.0.2.7]: 554 5.7.1 Spam message rejected; from=<joe@far.example>"
                      " to=<bob@ex.test> proto=ESMTP helo=<helo.example>", self.log())

    def test_reject_tempfail_discard_quarantine(self) -> None:
        cases: list[tuple[bytes, Any]] = [
            (p.packet(p.SMFIR_REJECT), Verdict(550, "5.7.1", "Command rejected")),
            (p.packet(p.SMFIR_TEMPFAIL),
             Verdict(451, "4.7.1", "Service unavailable - try again later")),
            (p.packet(p.SMFIR_DISCARD), Discard("milter")),
        ]
        for reply, want in cases:
            self.assertEqual(self.run_stage(self.stage((at_eom(reply), optneg())), message()),
                             want)
        stage = self.stage((at_eom(edit(p.SMFIR_QUARANTINE, "virus"),
                                   p.packet(p.SMFIR_CONTINUE)), optneg()))
        self.assertEqual(self.run_stage(stage, message(PICKUP)), Hold("virus"))
        self.assertIn("cleanup: Q1: milter-hold: END-OF-MESSAGE", self.log())

    def test_rcpt_reject_drops_that_recipient(self) -> None:
        def handler(code: bytes, data: bytes) -> list[bytes]:
            if code == p.SMFIC_RCPT and data.startswith(b"<no@"):
                return [edit(p.SMFIR_REPLYCODE, "550 5.1.1 no such user")]
            return cont(code, data)
        msg = message(rcpts=("no@ex.test", "bob@ex.test"))
        self.assertIsNone(self.run_stage(self.stage((handler, optneg())), msg))
        self.assertEqual([r.address for r in msg.envelope.recipients], ["bob@ex.test"])
        self.assertIn("milter-reject: RCPT from", self.log())

    def test_accept_at_connect_ends_the_conversation(self) -> None:
        stage = self.stage((lambda c, d: [p.packet(p.SMFIR_ACCEPT)], optneg()))
        msg = message()
        self.assertIsNone(self.run_stage(stage, msg))
        self.assertEqual(self.milters[0].commands(), [b"O", b"C", b"Q"])
        self.assertEqual(msg.data, DATA)

    def test_skip_stops_the_body(self) -> None:
        big = b"Subject: x\n\n" + b"y" * (p.CHUNK * 2 + 10)

        def handler(code: bytes, data: bytes) -> list[bytes]:
            return [p.packet(p.SMFIR_SKIP)] if code == p.SMFIC_BODY else cont(code, data)
        self.assertIsNone(self.run_stage(self.stage((handler, optneg(flags=p.SMFIP_SKIP))),
                                         message(data=big)))
        self.assertEqual(self.milters[0].commands().count(b"B"), 1)

    def test_action_not_negotiated_is_refused(self) -> None:
        stage = self.stage((at_eom(edit(p.SMFIR_ADDHEADER, "X", "y"),
                                   p.packet(p.SMFIR_CONTINUE)), optneg(actions=p.SMFIF_CHGHDRS)))
        msg = message()
        self.assertEqual(self.run_stage(stage, msg),
                         Verdict(451, "4.7.1", "Service unavailable - try again later"))
        self.assertEqual(msg.data, DATA)
        self.assertIn("warning: milter inet:127.0.0.1:11332: SMFIR_ADDHEADER was not"
                      " negotiated", self.log())

    def test_chain_each_sees_the_last_ones_changes(self) -> None:
        def second(code: bytes, data: bytes) -> list[bytes]:
            if code == p.SMFIC_HEADER and data.startswith(b"X-First\0"):
                return [p.packet(p.SMFIR_REJECT)]
            return cont(code, data)
        stage = self.stage((at_eom(edit(p.SMFIR_ADDHEADER, "X-First", "1"),
                                   p.packet(p.SMFIR_CONTINUE)), optneg()), (second, optneg()))
        self.assertEqual(self.run_stage(stage, message()),
                         Verdict(550, "5.7.1", "Command rejected"))


class FailureTests(StageCase):
    def test_slow_milter_times_out_to_default_action(self) -> None:
        def handler(code: bytes, data: bytes) -> list[bytes] | None:
            return None if code == p.SMFIC_BODYEOB else cont(code, data)
        msg = message()
        got = self.run_stage(self.stage((handler, optneg())), msg)
        self.assertEqual(got, Verdict(451, "4.7.1", "Service unavailable - try again later"))
        self.assertEqual(self.clock.seconds(), 300)  # milter_content_timeout
        self.assertIn("smtpd: warning: milter inet:127.0.0.1:11332: can't read SMFIC_BODYEOB"
                      " reply packet header: Connection timed out", self.log())

    def test_progress_restarts_the_timeout(self) -> None:
        def handler(code: bytes, data: bytes) -> list[bytes] | None:
            if code != p.SMFIC_BODYEOB:
                return cont(code, data)
            for t in (200, 400):
                self.clock.callLater(t, self.milters[0]._answer, p.packet(p.SMFIR_PROGRESS))
            self.clock.callLater(600, self.milters[0]._answer, p.packet(p.SMFIR_ACCEPT))
            return None
        self.assertIsNone(self.run_stage(self.stage((handler, optneg())), message()))
        self.assertEqual(self.clock.seconds(), 600)
        self.assertNotIn("warning", self.log())

    def test_dead_milter_gets_the_default_action(self) -> None:
        for action, want in (("accept", None),
                             ("reject", Verdict(550, "5.5.0", "Service unavailable"))):
            stage = self.stage(default_action=action, refused=True,
                               spec="inet:127.0.0.1:11332")
            self.assertEqual(self.run_stage(stage, message()), want)
        self.assertIn("smtpd: warning: connect to Milter service inet:127.0.0.1:11332:"
                      " Connection refused", self.log())
        own = self.stage(refused=True, spec="{ inet:127.0.0.1:1, default_action=accept }")
        self.assertIsNone(self.run_stage(own, message()))
        held = self.stage(refused=True, spec="inet:127.0.0.1:1", default_action="quarantine")
        self.assertEqual(self.run_stage(held, message()), Hold("milter default action"))

    def test_milter_that_closes_gets_the_default_action(self) -> None:
        def handler(code: bytes, data: bytes) -> list[bytes] | None:
            if code == p.SMFIC_MAIL:
                self.clock.callLater(0, self.milters[0].abortConnection)
                return None
            return cont(code, data)
        got = self.run_stage(self.stage((handler, optneg())), message())
        self.assertEqual(got, Verdict(451, "4.7.1", "Service unavailable - try again later"))
        self.assertIn("can't read SMFIC_MAIL reply packet header: Success", self.log())


class SmtpDoorTests(StageCase):
    """The SMTP server's own conversation: each command answered after the milters'."""

    def server(self, handler: Handler, **options: Any) -> tuple[Any, Any]:
        factory, _, maillog, _ = build(self, clock=self.clock)
        self.maillog = maillog
        stage = self.stage((handler, optneg()), **options)
        stage.maillog = maillog
        factory.pipeline = Pipeline(factory.delivery, maillog, HOST, self.clock.seconds, [stage])
        factory.milters = stage.smtp_conversation()
        proto = factory.buildProtocol(None)
        transport = NoDelayTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        proto.makeConnection(transport)
        self.pump()
        return proto, transport

    def pump(self) -> None:
        for _ in range(1000):
            if not [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]:
                return
            self.clock.advance(0)

    def test_pipelined_commands_wait_for_the_milter(self) -> None:
        def handler(code: bytes, data: bytes) -> list[bytes]:
            if code == p.SMFIC_RCPT and data.startswith(b"<alice@"):
                return [edit(p.SMFIR_REPLYCODE, "550 5.7.1 not alice")]
            if code == p.SMFIC_BODYEOB:
                return [edit(p.SMFIR_ADDHEADER, "X-Milter", "on"), p.packet(p.SMFIR_ACCEPT)]
            return cont(code, data)
        proto, transport = self.server(handler)
        self.assertEqual(transport.value(), b"220 mail.example.com ESMTP mailsuite\r\n")
        transport.clear()
        proto.dataReceived(b"HELO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                           b"RCPT TO:<alice@mail.example.com>\r\n"
                           b"RCPT TO:<boss@mail.example.com>\r\nDATA\r\n")
        self.pump()
        self.assertEqual(transport.value().decode().split("\r\n")[:-1], [
            "250 2.0.0 mail.example.com", "250 2.1.0 Ok", "550 5.7.1 not alice", "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"])
        transport.clear()
        proto.dataReceived(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.pump()
        self.assertTrue(transport.value().startswith(b"250 2.0.0 Ok: queued as"))
        self.assertEqual([c for c, _ in self.milters[0].seen],
                         [b"O", b"C", b"H", b"M", b"R", b"R", b"T", b"L", b"L", b"N", b"B", b"E"])
        self.assertIn("milter-reject: RCPT from client.example[192.0.2.7]: 550 5.7.1 not alice;"
                      " from=<a@b.example> to=<alice@mail.example.com>", self.log())
        proto.connectionLost()
        self.assertEqual(self.milters[0].wire, None)  # QUIT, closed with the session

    def test_discard_at_mail_takes_the_message(self) -> None:
        def handler(code: bytes, data: bytes) -> list[bytes]:
            return [p.packet(p.SMFIR_DISCARD)] if code == p.SMFIC_MAIL else cont(code, data)
        proto, transport = self.server(handler)
        proto.dataReceived(b"HELO c.example\r\nMAIL FROM:<a@b.example>\r\n"
                           b"RCPT TO:<boss@mail.example.com>\r\nDATA\r\n")
        self.pump()
        transport.clear()
        proto.dataReceived(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.pump()
        self.assertTrue(transport.value().startswith(b"250 2.0.0 Ok: queued as"))
        self.assertIn("milter triggers DISCARD action", self.log())
        self.assertNotIn(b"E", [c for c, _ in self.milters[0].seen])  # no EOM sent

    def test_dead_milter_quarantine_lets_the_session_go_on(self) -> None:
        """milter_default_action = quarantine: the commands are answered, the message is
        held (the decision is the conversation's for every message)."""
        proto, transport = self.server(cont, refused=True, spec="inet:127.0.0.1:1",
                                       default_action="quarantine")
        transport.clear()
        proto.dataReceived(b"HELO c.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.pump()
        self.assertEqual(transport.value().decode().split("\r\n")[:-1],
                         ["250 2.0.0 mail.example.com", "250 2.1.0 Ok"])
        self.assertEqual(proto._milters.always, Hold("milter default action"))
