"""Dovecot's POP3 limits on StringTransport sessions: [pop3] process_limit shared by the factories
of 110 and 995, mail_max_userip_connections with -ERR [IN-USE], commands before login."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address

from mailsuite.limits import Limits
from mailsuite.pop3 import server as pop3
from mailsuite.pop3.login import LOGIN_MAX_COMMANDS
from tests.fakes import NoDelayTransport
from tests.test_pop3 import LOOPBACK, SERVER, Pop3TestCase

STRANGER = IPv4Address("TCP", "198.51.100.2", 40000)
IN_USE = (b"-ERR [IN-USE] Maximum number of connections from user+IP exceeded"
          b" (mail_max_userip_connections=2)\r\n")


class Pop3LimitTests(Pop3TestCase):
    def configure(self, **keys: Any) -> None:
        config = replace(self.config, pop3=replace(self.config.pop3, **keys),
                         auth=replace(self.config.auth, disable_plaintext_auth=False))
        limits = Limits(config.mail, self.maillog, self.clock)
        self.factories = [
            pop3.POP3Factory(config, self.portal, self.maillog, clock=self.clock,
                             implicit_tls=tls, limits=limits) for tls in (False, True)]

    def open(self, peer: Any = LOOPBACK, port: int = 0) -> tuple[Any, Any]:
        proto = self.factories[port].buildProtocol(peer)
        transport = NoDelayTransport(hostAddress=SERVER, peerAddress=peer)
        proto.makeConnection(transport)
        return proto, transport

    def login(self, session: tuple[Any, Any]) -> bytes:
        session[1].clear()
        return self.send(session, b"USER boss", b"PASS secret")

    def test_process_limit(self) -> None:
        """[pop3] process_limit counts 110 and 995 together; one more is refused and closed,
        logged once a minute in Dovecot's words; a closed session makes room."""
        self.configure(process_limit=2)
        a, _b = self.open(), self.open(port=1)
        proto, transport = c = self.open(STRANGER)
        self.assertEqual(transport.value(), b"-ERR [SYS/TEMP] Maximum number of connections"
                                            b" reached, try again later.\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.open()[0].connectionLost(None)
        lines = [line for line in self.maillog.lines if "process_limit" in line]
        self.assertEqual(len(lines), 1)
        self.assertIn("service(pop3): process_limit (2) reached", lines[0])
        del c
        a[0].connectionLost(None)
        self.assertEqual(self.open()[1].value(), b"+OK mailsuite ready.\r\n")

    def test_userip_limit(self) -> None:
        """mail_max_userip_connections: the login past it gets -ERR [IN-USE] and the connection
        ends, logged once; another address, and this one after a QUIT, log in."""
        self.deliver(b"Subject: x\n\nhi\n")
        self.configure(mail_max_userip_connections=2)
        first, second = self.open(), self.open(port=1)
        self.assertEqual(self.login(first), b"+OK\r\n+OK Logged in.\r\n")
        self.assertEqual(self.login(second), b"+OK\r\n+OK Logged in.\r\n")
        third = self.open()
        self.assertEqual(self.login(third), b"+OK\r\n" + IN_USE)
        self.assertTrue(third[1].disconnecting)
        self.assertIsNone(third[0].mbox)
        third[0].connectionLost(None)
        self.assertEqual(self.login(self.open()), b"+OK\r\n" + IN_USE)
        lines = [line for line in self.maillog.lines if "user+IP" in line]
        self.assertEqual(len(lines), 1)
        self.assertIn("dovecot: pop3-login: ", lines[0])
        self.assertTrue(lines[0].endswith("(mail_max_userip_connections=2): user=<boss>,"
                                          " method=PLAIN, rip=127.0.0.1, lip=127.0.0.1"))
        self.assertEqual(self.login(self.open(STRANGER)), b"+OK\r\n+OK Logged in.\r\n")
        self.assertTrue(self.send(first, b"STAT").startswith(b"+OK 1 "))  # the others go on
        self.send(first, b"QUIT")
        first[0].connectionLost(None)
        self.assertEqual(self.login(self.open()), b"+OK\r\n+OK Logged in.\r\n")

    def test_bad_commands_before_login(self) -> None:
        """Dovecot pop3-login: the third invalid command before login ends the connection;
        after login there is no such limit."""
        self.configure()
        session = self.open()
        session[1].clear()
        out = self.send(session, b"FOO", b"STAT", b"BAR", b"CAPA")
        self.assertEqual(out, b"-ERR Unknown command.\r\n-ERR Unknown command: not logged in.\r\n"
                              b"-ERR Too many bad commands.\r\n")
        self.assertTrue(session[1].disconnecting)
        other = self.open()
        self.send(other, b"FOO", b"BAR")
        self.login(other)
        self.assertEqual(self.send(other, b"FOO", b"BAR", b"BAZ"), b"-ERR Unknown command.\r\n" * 3)
        self.assertFalse(other[1].disconnecting)

    def test_commands_before_login(self) -> None:
        """At most LOGIN_MAX_COMMANDS commands before login."""
        self.configure()
        session = self.open()
        session[1].clear()
        out = self.send(session, *[b"USER boss"] * (LOGIN_MAX_COMMANDS + 1))
        self.assertEqual(out, b"+OK\r\n" * LOGIN_MAX_COMMANDS
                         + b"-ERR Too many commands before login.\r\n")
        self.assertTrue(session[1].disconnecting)

    def test_quit_releases_at_once(self) -> None:
        """QUIT ends the session's place in the counts before the connection is gone."""
        self.configure(mail_max_userip_connections=1, process_limit=1)
        first = self.open()
        self.login(first)
        self.send(first, b"QUIT")
        self.assertEqual(self.login(self.open()), b"+OK\r\n+OK Logged in.\r\n")

    def test_line_too_long(self) -> None:
        """A command line over 16 KB: -ERR and the connection ends (it was closed silently)."""
        self.configure()
        session = self.open()
        session[1].clear()
        self.assertEqual(self.send(session, b"USER " + b"x" * 20000, b"NOOP"),
                         b"-ERR Input line too long.\r\n")
        self.assertTrue(session[1].disconnecting)

    def test_login_finishing_after_the_connection_is_gone(self) -> None:
        """A login whose check answers after the client left is not counted (nothing would
        release it): the next login of the user from that address is served."""
        self.configure(mail_max_userip_connections=1)
        real, held = self.portal, []

        class SlowPortal:
            def login(self, *args: Any) -> defer.Deferred[Any]:
                d: defer.Deferred[Any] = defer.Deferred()
                held.append((args, d))
                return d

        proto, _transport = session = self.open()
        proto.portal = SlowPortal()
        self.send(session, b"USER boss", b"PASS secret")
        proto.connectionLost(None)
        ((args, d),) = held
        real.login(*args).chainDeferred(d)
        self.assertEqual(self.login(self.open()), b"+OK\r\n+OK Logged in.\r\n")
