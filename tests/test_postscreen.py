"""Port 25's front door (mailsuite.smtp.postscreen, issue 11 item 4): the pregreet test with
postscreen's teaser, greet wait, actions and log lines, and the per-IP allow cache. Clock-driven
sessions of the real SMTPServer over a StringTransport."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.smtp.postscreen import FrontDoor, escape
from tests.fakes import NoDelayTransport
from tests.test_smtp_server import build

TEASER = b"220-mail.example.com ESMTP mailsuite\r\n"
GREETING = b"220 mail.example.com ESMTP mailsuite\r\n"
STRANGER = "203.0.113.5"


class ScreenCase(unittest.TestCase):
    """Sessions of a port-25 factory with its front door (``configure``: under other keys)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.factory, self.store, self.maillog, _ = build(self, clock=self.clock)
        self.configure()

    def configure(self, **mail: Any) -> None:
        """A new port-25 factory state under these [mail] keys (the cache starts empty)."""
        config = self.factory.config
        self.factory.config = replace(config, mail=replace(config.mail, **mail))
        self.factory.front_door = FrontDoor(
            self.factory.config.mail, self.factory.hostname, self.maillog, self.clock)

    def connect(self, ip: str = STRANGER, port: int = 4321) -> tuple[Any, NoDelayTransport]:
        proto = self.factory.buildProtocol(None)
        transport = NoDelayTransport(peerAddress=IPv4Address("TCP", ip, port),
                                     hostAddress=IPv4Address("TCP", "192.0.2.25", 25))
        proto.makeConnection(transport)
        return proto, transport

    def take(self, transport: NoDelayTransport) -> bytes:
        value = transport.value()
        transport.clear()
        return value

    def screen_lines(self) -> list[str]:
        return [line.split("]: ", 1)[1] for line in self.maillog.lines if "/postscreen[" in line]


class FrontDoorTests(ScreenCase):

    def test_pass_new_then_pass_old(self) -> None:
        """A stranger gets the teaser, waits postscreen_greet_wait (6 s), then the greeting's
        last line (PASS NEW); its next connection is greeted at once (PASS OLD)."""
        proto, transport = self.connect()
        self.assertEqual(self.take(transport), TEASER)
        self.clock.advance(5.9)
        self.assertEqual(self.take(transport), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.take(transport), GREETING)
        proto.dataReceived(b"EHLO client.example\r\n")
        self.assertTrue(self.take(transport).startswith(b"250-mail.example.com\r\n"))
        _, again = self.connect(port=4322)
        self.assertEqual(self.take(again), GREETING)
        self.assertEqual(self.screen_lines(), [
            f"CONNECT from [{STRANGER}]:4321 to [192.0.2.25]:25",
            f"PASS NEW [{STRANGER}]:4321",
            f"PASS OLD [{STRANGER}]:4322"])

    def test_pregreet_is_dropped(self) -> None:
        """Talking before the greeting (default action drop): 521 and the connection closes,
        logged as postscreen does; nothing is cached, so the next connection is tested again."""
        proto, transport = self.connect()
        self.take(transport)
        self.clock.advance(0.23)
        proto.dataReceived(b"EHLO spam\r\n")
        self.assertEqual(self.take(transport), b"521 5.5.1 Protocol error\r\n")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(10)
        self.assertEqual(self.take(transport), b"")  # no greeting after it
        self.assertEqual(self.screen_lines()[1:], [
            f"PREGREET 11 after 0.23 from [{STRANGER}]:4321: EHLO spam\\r\\n",
            f"DISCONNECT [{STRANGER}]:4321"])
        _, again = self.connect(port=4322)
        self.assertEqual(self.take(again), TEASER)

    def test_pregreet_enforced(self) -> None:
        """postscreen_greet_action = enforce: the session goes on after the wait (what was sent
        early is answered) but every RCPT gets 550 5.5.1, logged NOQUEUE: reject."""
        self.configure(postscreen_greet_action="enforce")
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO spam\r\n")
        self.clock.advance(6)
        out = self.take(transport)
        self.assertTrue(out.startswith(TEASER + GREETING + b"250-mail.example.com"), out)
        proto.dataReceived(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<boss@mail.example.com>\r\n")
        self.assertEqual(self.take(transport),
                         b"250 2.1.0 Ok\r\n550 5.5.1 Protocol error\r\n")
        self.assertIn(f"NOQUEUE: reject: RCPT from [{STRANGER}]:4321: 550 5.5.1 Protocol error;"
                      " from=<a@b.example>, to=<boss@mail.example.com>, proto=ESMTP, helo=<spam>",
                      self.screen_lines())
        self.assertNotIn(f"PASS NEW [{STRANGER}]:4321", self.screen_lines())

    def test_pregreet_ignored(self) -> None:
        """ignore: logged, the session is served as usual, but not remembered."""
        self.configure(postscreen_greet_action="ignore")
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO early\r\n")
        self.clock.advance(6)
        proto.dataReceived(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<boss@mail.example.com>\r\n")
        self.assertTrue(self.take(transport).endswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"))
        self.assertTrue(self.screen_lines()[1].startswith("PREGREET 12 after 0.00 from"))
        _, again = self.connect(port=4322)
        self.assertEqual(self.take(again), TEASER)

    def test_mynetworks_and_loopback_pass_at_once(self) -> None:
        """postscreen_access_list = permit_mynetworks: a client of mynetworks is greeted at once
        (ALLOWLISTED); the host itself (loopback) too, without a log line. With an empty
        access list the mynetworks client is screened like any other."""
        self.configure(mynetworks=[ipaddress.ip_network("203.0.113.0/24")])
        _, transport = self.connect()
        self.assertEqual(self.take(transport), GREETING)
        _, local = self.connect("127.0.0.1")
        self.assertEqual(self.take(local), GREETING)
        self.assertEqual(self.screen_lines(), [f"ALLOWLISTED [{STRANGER}]:4321"])
        self.configure(postscreen_access_list=[])
        _, transport = self.connect()
        self.assertEqual(self.take(transport), TEASER)

    def test_cache_entries_expire(self) -> None:
        """A pass lasts postscreen_greet_ttl (1 d): then the client is tested again, and passing
        logs PASS OLD while its expired entry is kept (postscreen_cache_retention_time, 7 d);
        after that it is forgotten (PASS NEW)."""
        self.connect()
        self.clock.advance(6)
        self.clock.advance(86400)
        _, transport = self.connect(port=2)
        self.assertEqual(self.take(transport), TEASER)
        self.clock.advance(6)
        self.assertEqual(self.screen_lines()[-1], f"PASS OLD [{STRANGER}]:2")
        self.clock.advance(9 * 86400)
        self.connect("198.51.100.1")  # a pass by another client sweeps the cache
        self.clock.advance(6)
        self.connect(port=3)
        self.clock.advance(6)
        self.assertEqual(self.screen_lines()[-1], f"PASS NEW [{STRANGER}]:3")

    def test_hangup_while_waiting(self) -> None:
        """A client that leaves during the wait: HANGUP and DISCONNECT, no greeting, no pass."""
        proto, transport = self.connect()
        self.take(transport)
        self.clock.advance(1.5)
        proto.connectionLost(None)
        self.clock.advance(10)
        self.assertEqual(self.take(transport), b"")
        self.assertEqual(self.screen_lines()[1:], [
            f"HANGUP after 1.50 from [{STRANGER}]:4321 in tests before SMTP handshake",
            f"DISCONNECT [{STRANGER}]:4321"])

    def test_off(self) -> None:
        """postscreen_greet_wait = 0s turns the front door off; a factory without front_door
        (submission, smtps) never screens."""
        self.configure(postscreen_greet_wait=0.0)
        _, transport = self.connect()
        self.assertEqual(self.take(transport), GREETING)
        factory, *_ = build(self, clock=self.clock)
        self.assertIsNone(factory.front_door)

    def test_escape(self) -> None:
        """Logged bytes: printable ASCII kept, CR LF TAB and backslash escaped, others octal,
        at most 100 characters."""
        self.assertEqual(escape(b"EHLO a\r\n\t\\\x00\xff"), "EHLO a\\r\\n\\t\\\\\\000\\377")
        self.assertEqual(len(escape(b"x" * 500)), 100)
