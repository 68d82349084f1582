"""Postfix smtpd's limits (smtp/limits.py) on SMTPServer sessions driven by StringTransport and a
Clock: connection count, rate and total per service, message, recipient and TLS rates,
recipients per message, errors (soft sleep, hard limit, junk commands), command line length;
the exemption of smtpd_client_event_limit_exceptions; the once-a-minute warnings."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_network
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite.limits import Limits
from mailsuite.maillog import MailLog
from mailsuite.smtp.lmtp import LMTPFactory
from tests.configs import real_config
from tests.fakes import FakeDelivery, TLSTransport
from tests.test_smtp_server import build

STRANGER, OTHER, LOCAL = "198.51.100.2", "198.51.100.3", "127.0.0.1"


class Session:
    def __init__(self, factory: Any, ip: str) -> None:
        self.proto = factory.buildProtocol(None)
        self.transport = TLSTransport(peerAddress=IPv4Address("TCP", ip, 4321))
        self.proto.makeConnection(self.transport)

    def replies(self) -> list[str]:
        return self.transport.value().decode().split("\r\n")[:-1]

    def send(self, data: bytes) -> list[str]:
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.replies()

    def close(self) -> None:
        self.proto.connectionLost()

    @property
    def refused(self) -> bool:
        return self.transport.disconnecting


class SmtpLimitCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.factory, self.store, self.maillog, _ = build(self, clock=self.clock)

    def configure(self, **mail: Any) -> None:
        """Replace [mail] keys (mynetworks / exceptions: loopback, the default)."""
        config = self.factory.config
        self.factory.config = replace(config, mail=replace(config.mail, **mail))
        self.factory.limits = Limits(self.factory.config.mail, self.maillog, self.clock)

    def connect(self, ip: str = STRANGER) -> Session:
        return Session(self.factory, ip)

    def warnings(self, text: str) -> list[str]:
        return [line for line in self.maillog.lines if text in line]


class ConnectionTests(SmtpLimitCase):
    def test_count_limit(self) -> None:
        """smtpd_client_connection_count_limit: the connection past it gets Postfix's 421 4.7.0
        instead of the greeting and is closed; the warning is logged once a minute; other
        clients, and this one once a connection closed, are served."""
        self.configure(smtpd_client_connection_count_limit=2)
        first, second = self.connect(), self.connect()
        self.assertEqual(first.replies()[0][:4], "220 ")
        self.assertEqual(second.replies()[0][:4], "220 ")
        third = self.connect()
        self.assertEqual(third.replies(), ["421 4.7.0 mail.example.com Error: too many"
                                           " connections from 198.51.100.2"])
        self.assertTrue(third.refused)
        third.close()
        fourth = self.connect()
        self.assertTrue(fourth.refused)
        fourth.close()
        lines = self.warnings("limit exceeded")
        self.assertEqual(len(lines), 1, self.maillog.lines)
        self.assertIn("postfix/smtpd[", lines[0])
        self.assertTrue(lines[0].endswith("warning: Connection concurrency limit exceeded: 3"
                                          " from unknown[198.51.100.2] for service smtp"))
        self.assertEqual(self.connect(OTHER).replies()[0][:4], "220 ")
        first.close()
        self.assertFalse(self.connect().refused)
        self.clock.advance(60)
        self.connect().close()  # refused again, logged again a minute later
        self.assertEqual(len(self.warnings("concurrency limit exceeded")), 2)

    def test_quit_releases_at_once(self) -> None:
        """QUIT ends the connection's place in the counts before the connection is gone."""
        self.configure(smtpd_client_connection_count_limit=1, default_process_limit=1)
        s = self.connect()
        s.send(b"QUIT\r\n")
        self.assertFalse(self.connect().refused)
        s.close()
        self.assertEqual(self.factory.limits.sessions["smtp"], 1)

    def test_mynetworks_exempt(self) -> None:
        """Clients in smtpd_client_event_limit_exceptions ($mynetworks: loopback by default)
        have no count limit; with the exceptions empty, loopback is limited too."""
        self.configure(smtpd_client_connection_count_limit=2)
        sessions = [self.connect(LOCAL) for _ in range(5)]
        self.assertFalse(any(s.refused for s in sessions))
        self.configure(smtpd_client_connection_count_limit=2,
                       smtpd_client_event_limit_exceptions=[])
        sessions = [self.connect(LOCAL) for _ in range(3)]
        self.assertEqual([s.refused for s in sessions], [False, False, True])

    def test_exceptions_other_than_mynetworks(self) -> None:
        """smtpd_client_event_limit_exceptions set to another network exempts that one."""
        self.configure(smtpd_client_connection_count_limit=1,
                       smtpd_client_event_limit_exceptions=[ip_network("198.51.100.0/24")])
        self.assertFalse(any(self.connect().refused for _ in range(3)))

    def test_rate_limit(self) -> None:
        """smtpd_client_connection_rate_limit: connections per anvil_rate_time_unit, closed
        ones included; the next time unit starts again."""
        self.configure(smtpd_client_connection_rate_limit=3, anvil_rate_time_unit=60.0)
        for _ in range(3):
            s = self.connect()
            self.assertFalse(s.refused)
            s.close()
        s = self.connect()
        self.assertEqual(s.replies(), ["421 4.7.0 mail.example.com Error: too many"
                                       " connections from 198.51.100.2"])
        self.assertEqual(len(self.warnings("warning: Connection rate limit exceeded: 4 from"
                                           " unknown[198.51.100.2] for service smtp")), 1)
        self.assertFalse(self.connect(OTHER).refused)
        self.clock.advance(60)
        self.assertFalse(self.connect().refused)

    def test_default_rate_is_unlimited(self) -> None:
        """Postfix's default smtpd_client_connection_rate_limit is 0: no rate limit."""
        for _ in range(200):
            s = self.connect()
            self.assertFalse(s.refused)
            s.close()

    def test_process_limit(self) -> None:
        """default_process_limit: sessions of the service at once, loopback too; postscreen's
        421 4.3.2 and master's warning; a closed session makes room."""
        self.configure(default_process_limit=2)
        a, b = self.connect(LOCAL), self.connect(OTHER)
        c = self.connect(LOCAL)
        self.assertEqual(c.replies(), ["421 4.3.2 All server ports are busy"])
        c.close()
        self.assertEqual(len(self.warnings('postfix/master[')), 1)
        self.assertIn('warning: service "smtp" has reached its process limit "2": new clients'
                      " may experience noticeable delays", self.maillog.lines[-1])
        a.close()
        self.assertFalse(self.connect(LOCAL).refused)
        b.close()


class TransactionTests(SmtpLimitCase):
    def mail(self, s: Session) -> str:
        s.send(b"EHLO client.example\r\n")
        return s.send(b"MAIL FROM:<a@b.example>\r\n")[0]

    def test_message_rate(self) -> None:
        """smtpd_client_message_rate_limit: MAIL past it gets 450 4.7.1; exempt clients
        and other addresses are not counted."""
        self.configure(smtpd_client_message_rate_limit=2)
        s = self.connect()
        self.assertEqual(self.mail(s), "250 2.1.0 Ok")
        s.send(b"RSET\r\n")
        self.assertEqual(s.send(b"MAIL FROM:<a@b.example>\r\nRSET\r\n")[0], "250 2.1.0 Ok")
        self.assertEqual(s.send(b"MAIL FROM:<a@b.example>\r\n"),
                         ["450 4.7.1 Error: too much mail from 198.51.100.2"])
        self.assertEqual(len(self.warnings("warning: Message delivery request rate limit"
                                           " exceeded: 3 from client.example[198.51.100.2]")), 1)
        self.assertEqual(self.mail(self.connect(OTHER)), "250 2.1.0 Ok")
        local = self.connect(LOCAL)
        for _ in range(5):
            self.assertEqual(self.mail(local), "250 2.1.0 Ok")
            local.send(b"RSET\r\n")
        self.clock.advance(60)
        self.assertEqual(self.mail(self.connect()), "250 2.1.0 Ok")

    def test_recipient_rate(self) -> None:
        """smtpd_client_recipient_rate_limit: RCPT past it gets 450 4.7.1."""
        self.configure(smtpd_client_recipient_rate_limit=2)
        s = self.connect()
        self.mail(s)
        rcpt = b"RCPT TO:<boss@mail.example.com>\r\n"
        self.assertEqual(s.send(rcpt * 3), ["250 2.1.5 Ok", "250 2.1.5 Ok",
                                            "450 4.7.1 Error: too many recipients from"
                                            " 198.51.100.2"])
        self.assertEqual(len(self.warnings("Recipient address rate limit exceeded: 3")), 1)

    def test_recipient_limit(self) -> None:
        """smtpd_recipient_limit (the key, not a constant): 452 4.5.3 past it, for every
        client, loopback included."""
        self.configure(smtpd_recipient_limit=2)
        s = self.connect(LOCAL)
        self.mail(s)
        rcpt = b"RCPT TO:<boss@mail.example.com>\r\n"
        self.assertEqual(s.send(rcpt * 3)[-1], "452 4.5.3 Error: too many recipients")

    def test_new_tls_sessions(self) -> None:
        """smtpd_client_new_tls_session_rate_limit: STARTTLS past it gets 454 4.7.0 and the
        session stays in clear; on port 465 the connection gets 421 4.7.0."""
        self.configure(smtpd_client_new_tls_session_rate_limit=1)
        self.factory.server_tls = object()
        s = self.connect()
        s.send(b"EHLO client.example\r\n")
        self.assertEqual(s.send(b"STARTTLS\r\n"), ["220 2.0.0 Ready to start TLS"])
        t = self.connect()
        t.send(b"EHLO client.example\r\n")
        self.assertEqual(t.send(b"STARTTLS\r\n"),
                         ["454 4.7.0 Error: too many new TLS sessions from 198.51.100.2"])
        self.assertIsNone(t.transport.tls_context)
        self.factory.implicit_tls = True
        u = self.connect()
        self.assertEqual(u.replies(), ["421 4.7.0 mail.example.com Error: too many new TLS"
                                       " sessions from 198.51.100.2"])
        self.assertEqual(len(self.warnings("New TLS session rate limit exceeded")), 1)


class ErrorTests(SmtpLimitCase):
    def test_hard_limit_key(self) -> None:
        """smtpd_hard_error_limit is the key's value."""
        self.configure(smtpd_hard_error_limit=3, smtpd_soft_error_limit=10)
        s = self.connect(LOCAL)
        replies = s.send(b"FOO\r\n" * 5)
        self.assertEqual(replies[-1], "421 4.7.0 mail.example.com Error: too many errors")
        self.assertEqual(len(replies), 4)  # 3 errors, then 421

    def test_soft_limit_sleeps_on_the_clock(self) -> None:
        """After smtpd_soft_error_limit errors each reply waits smtpd_error_sleep_time on the
        reactor's clock; another session is answered at once meanwhile."""
        self.configure(smtpd_soft_error_limit=2, smtpd_error_sleep_time=5.0)
        s = self.connect()
        self.assertEqual(len(s.send(b"FOO\r\n" * 4)), 2)
        other = self.connect(OTHER)
        self.assertEqual(other.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])
        self.clock.advance(4.9)
        self.assertEqual(len(s.replies()), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(s.replies()), 3)
        self.clock.advance(5)
        self.assertEqual(len(s.replies()), 4)

    def test_delivery_resets_errors(self) -> None:
        """A delivered message starts the error count again (errors "without delivering
        mail")."""
        self.configure(smtpd_soft_error_limit=100, smtpd_hard_error_limit=4)
        s = self.connect(LOCAL)
        s.send(b"EHLO client.example\r\nFOO\r\nFOO\r\nFOO\r\n")
        replies = s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<boss@mail.example.com>\r\n"
                         b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        self.assertTrue(replies[-1].startswith("250 2.0.0 Ok: queued as"), replies)
        self.assertFalse(s.refused)
        s.send(b"FOO\r\nFOO\r\nFOO\r\n")
        self.assertFalse(s.refused)
        self.assertEqual(s.send(b"FOO\r\n")[-1][:9], "421 4.7.0")

    def test_junk_commands(self) -> None:
        """Past smtpd_junk_command_limit, NOOP, RSET and VRFY count as errors (still 250)."""
        self.configure(smtpd_junk_command_limit=3, smtpd_hard_error_limit=2,
                       smtpd_soft_error_limit=100)
        s = self.connect(LOCAL)
        replies = s.send(b"NOOP\r\nRSET\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
        self.assertEqual(replies[:5], ["250 2.0.0 Ok"] * 5)
        self.assertEqual(replies[5], "421 4.7.0 mail.example.com Error: too many errors")
        self.assertTrue(s.refused)

    def test_line_length_limit(self) -> None:
        """line_length_limit (the key) bounds a command line: 500 5.5.0 past it."""
        self.configure(line_length_limit=600)
        s = self.connect(LOCAL)
        self.assertEqual(s.send(b"X" * 590 + b"\r\n"), ["502 5.5.2 Error: command not recognized"])
        self.assertEqual(s.send(b"X" * 700 + b"\r\n"), ["500 5.5.0 Error: line too long"])
        self.assertEqual(s.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])


class LmtpTests(unittest.TestCase):
    def test_process_limit(self) -> None:
        """LMTP: default_process_limit sessions at once (421 4.3.2 past it); closing one makes
        room."""
        clock = Clock()
        config = real_config("mail.example.test", mail={"default_process_limit": 1})
        maillog = MailLog(None, "mail.example.test", now=clock.seconds)
        factory = LMTPFactory(config, FakeDelivery(), maillog,
                              limits=Limits(config.mail, maillog, clock))
        sessions = []
        for _ in range(2):
            proto, transport = factory.buildProtocol(None), StringTransport()
            proto.makeConnection(transport)
            sessions.append((proto, transport))
        self.assertEqual(sessions[1][1].value(), b"421 4.3.2 All server ports are busy\r\n")
        self.assertTrue(sessions[1][1].disconnecting)
        sessions[1][0].connectionLost()
        sessions[0][0].connectionLost()
        proto, transport = factory.buildProtocol(None), StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"220 "))
