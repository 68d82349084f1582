"""Slow and idle clients (issue 11 item 3): time limits that trickled bytes do not push back.

SMTP: ``smtpd_timeout`` is a deadline for a whole command line, restarted only when a complete
line has been read (``smtpd_per_request_deadline = yes``), and for DATA a deadline that grows by
the bytes received at ``smtpd_min_data_rate``, never beyond ``smtpd_timeout`` from now (Postfix
3.7). IMAP and POP3 before login: ``login_idle_timeout`` without a complete command, and
``login_timeout`` for the whole login however busy the client keeps it. All driven by a Clock.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address

from tests.fakes import NoDelayTransport
from tests.test_delivery import BOSS, inbox
from tests.test_imap_server import ImapTestCase
from tests.test_pop3 import Pop3TestCase
from tests.test_smtp_server import SessionCase

TIMEOUT_421 = b"421 4.4.2 mail.example.com Error: timeout exceeded\r\n"


class SmtpDeadlineTests(SessionCase):
    def reconnect(self, **mail: Any) -> None:
        """A new session under these [mail] keys."""
        config = self.factory.config
        self.factory.config = replace(config, mail=replace(config.mail, **mail))
        self.proto = self.factory.buildProtocol(None)
        self.transport = NoDelayTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4321))
        self.proto.makeConnection(self.transport)

    def trickle(self, data: bytes, every: float) -> float:
        """Send ``data`` one byte every ``every`` seconds until the server closes (at most
        len(data) bytes); the seconds it took."""
        spent = 0.0
        for byte in data:
            if self.transport.disconnecting:
                break
            self.proto.dataReceived(bytes([byte]))
            self.clock.advance(every)
            spent += every
        return spent

    def test_trickled_command_line_meets_its_deadline(self) -> None:
        """One byte every 10 s never completes a line: 421 at 300 s after the last complete
        command, although bytes kept coming (the per-read timer of Postfix's default restarted
        at every byte and held the session forever)."""
        self.send(b"EHLO x\r\n")
        self.transport.clear()
        spent = self.trickle(b"N" * 100, 10)
        self.assertEqual(spent, 300)
        self.assertEqual(self.transport.value(), TIMEOUT_421)
        self.assertIn("timeout after EHLO from client.example[192.0.2.7]", self.log_text())

    def test_complete_lines_restart_the_deadline(self) -> None:
        """A complete command every 200 s keeps the session: each line gets 300 s of its own."""
        for _ in range(5):
            self.assertEqual(self.codes(b"NOOP\r\n"), ["250"])
            self.clock.advance(200)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(100)
        self.assertTrue(self.transport.disconnecting)

    def test_trickled_data_meets_its_deadline(self) -> None:
        """DATA at one byte every 10 s (0.1 B/s, far below smtpd_min_data_rate = 500): closed
        300 s after DATA (+ 1/500 s per byte: seen at the next 10 s step), nothing delivered."""
        self.transaction()
        self.transport.clear()
        spent = self.trickle(b"x" * 100, 10)
        self.assertEqual(spent, 310)
        self.assertEqual(self.transport.value(), TIMEOUT_421)
        self.assertIn("timeout after DATA from client.example[192.0.2.7]", self.log_text())
        self.assertFalse([x for x in self.log_text() if x.startswith("lost connection")])
        self.assertEqual(inbox(self.store, BOSS), [])

    def test_data_at_the_minimum_rate_goes_on(self) -> None:
        """With smtpd_timeout = 10s: DATA at 1,000 B/s (above the 500 B/s minimum) runs for a
        minute; at 100 B/s the deadline comes closer by 0.8 s each second (12.5 s); silence
        after a fast start ends it 10 s later (never more than smtpd_timeout ahead)."""
        self.reconnect(smtpd_timeout=10.0)
        self.transaction()
        for _ in range(60):
            self.proto.dataReceived(b"y" * 999 + b"\n")
            self.clock.advance(1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(8.9)  # 10 s after the last piece
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)

        self.reconnect(smtpd_timeout=10.0)
        self.transaction()
        seconds = 0
        while not self.transport.disconnecting and seconds < 100:
            self.proto.dataReceived(b"z" * 99 + b"\n")
            self.clock.advance(1)
            seconds += 1
        self.assertEqual(seconds, 13)  # 10 + 0.2 * 12.5: after 12.5 s, seen at the 13th

    def test_data_within_the_deadline_is_delivered(self) -> None:
        """A message that arrives in time is delivered as before."""
        self.reconnect(smtpd_timeout=10.0)
        self.transaction()
        self.proto.dataReceived(b"Subject: a\r\n\r\nbody\r\n")
        self.clock.advance(9)
        self.assertEqual(self.codes(b".\r\n"), ["250"])
        self.assertEqual(len(inbox(self.store, BOSS)), 1)

    def test_per_read_timer_when_deadlines_are_off(self) -> None:
        """smtpd_per_request_deadline = no: Postfix's per-read time limit, every byte starts
        it again (the trickle is served as long as it lasts)."""
        self.reconnect(smtpd_per_request_deadline=False)
        self.send(b"EHLO x\r\n")
        self.trickle(b"N" * 100, 10)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(300)
        self.assertTrue(self.transport.disconnecting)


class ImapLoginDeadlineTests(ImapTestCase):
    def test_trickled_bytes_before_login(self) -> None:
        """Before login, bytes that never make a complete command: BYE after
        login_idle_timeout (60 s), logged as Dovecot's imap-login does."""
        s = self.session("192.0.2.9")
        for _ in range(5):
            s.send(b"a")
            self.clock.advance(10)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(10)
        self.assertEqual(s.take(), b"* BYE Disconnected for inactivity.\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertIn("dovecot: imap-login: ", self.maillog.lines[-1])
        self.assertIn(": Disconnected: Inactivity (no auth attempts in 60 secs): "
                      "user=<>, rip=192.0.2.9, lip=127.0.0.1", self.maillog.lines[-1])

    def test_busy_but_never_logged_in(self) -> None:
        """A complete command every 50 s keeps the idle timer away, but the whole login has
        login_timeout (3 minutes, Dovecot's CLIENT_LOGIN_TIMEOUT)."""
        s = self.session()
        for _ in range(3):
            self.assertIn(b"a OK", s.cmd(b"a NOOP"))
            self.clock.advance(50)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(30)
        self.assertEqual(s.take(), b"* BYE Disconnected for inactivity.\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_login_ends_the_login_deadlines(self) -> None:
        """After LOGIN only the 30-minute autologout applies."""
        s = self.session()
        self.clock.advance(50)
        self.assertIn(b"L1 OK", s.login())
        for _ in range(3):
            self.clock.advance(25 * 60)
            self.assertIn(b"a OK", s.cmd(b"a NOOP"))
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(30 * 60)
        self.assertTrue(s.transport.disconnecting)


class Pop3LoginDeadlineTests(Pop3TestCase):
    def test_trickled_bytes_before_login(self) -> None:
        """Bytes without a complete command: -ERR after 60 s, logged as Dovecot's pop3-login."""
        proto, transport = self.connect()
        for _ in range(5):
            proto.dataReceived(b"U")
            self.clock.advance(10)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertIn("Disconnected: Inactivity (no auth attempts in 60 secs): user=<>",
                      self.maillog.lines[-1])

    def test_busy_but_never_logged_in(self) -> None:
        """CAPA every 50 s: still closed at login_timeout (180 s)."""
        session = self.connect()
        for _ in range(3):
            self.assertTrue(self.send(session, b"CAPA").startswith(b"+OK"))
            self.clock.advance(50)
        self.assertFalse(session[1].disconnecting)
        self.clock.advance(30)
        self.assertTrue(session[1].disconnecting)
        self.assertEqual(session[1].value(), b"-ERR Disconnected for inactivity.\r\n")
        self.clock.advance(60)  # the idle limit, still running, is gone with the other
        self.assertEqual(session[1].value(), b"-ERR Disconnected for inactivity.\r\n")

    def test_login_ends_the_login_deadlines(self) -> None:
        """After login, Dovecot's 10 minutes of inactivity only."""
        session = self.connect()
        self.clock.advance(50)
        self.assertEqual(self.send(session, b"USER boss", b"PASS secret"),
                         b"+OK\r\n+OK Logged in.\r\n")
        for _ in range(3):
            self.clock.advance(500)
            self.assertEqual(self.send(session, b"NOOP"), b"+OK\r\n")
        self.assertFalse(session[1].disconnecting)
