"""Peer addresses as logs and network lists want them; the default host name."""

import ipaddress
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial import unittest

from mailsuite import net


class ParseIpTests(unittest.TestCase):
    def test_mapped_is_ipv4(self):
        self.assertEqual(net.parse_ip("::ffff:192.0.2.7"), ipaddress.IPv4Address("192.0.2.7"))

    def test_zone_dropped(self):
        self.assertEqual(net.parse_ip("fe80::1%eth0"), ipaddress.IPv6Address("fe80::1"))

    def test_not_an_ip(self):
        for text in ("", "localhost", "192.0.2.300", "unix:/x"):
            self.assertIsNone(net.parse_ip(text))


class InNetworksTests(unittest.TestCase):
    nets = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))

    def test_match(self):
        self.assertTrue(net.in_networks("192.0.2.9", self.nets))
        self.assertTrue(net.in_networks("::ffff:192.0.2.9", self.nets))
        self.assertTrue(net.in_networks("2001:db8::5%eth0", self.nets))
        self.assertFalse(net.in_networks("198.51.100.1", self.nets))
        self.assertFalse(net.in_networks("not an ip", self.nets))

    def test_loopback_only_when_asked(self):
        for ip in ("127.0.0.2", "::1", "::ffff:127.0.0.1"):
            self.assertFalse(net.in_networks(ip, self.nets))
            self.assertTrue(net.in_networks(ip, self.nets, loopback=True))
        self.assertFalse(net.in_networks("junk", [], loopback=True))


class HostOfTests(unittest.TestCase):
    def test_mapped_ipv4_unmapped(self):
        """A dual-stack listener's ::ffff:a.b.c.d peer is reported as a.b.c.d (fail2ban, logs)."""
        self.assertEqual(net.host_of(IPv6Address("TCP", "::ffff:192.0.2.7", 4000)), "192.0.2.7")

    def test_plain_addresses_kept(self):
        """IPv4 and real IPv6 addresses are returned as they are."""
        self.assertEqual(net.host_of(IPv4Address("TCP", "127.0.0.1", 25)), "127.0.0.1")
        self.assertEqual(net.host_of(IPv6Address("TCP", "2001:db8::1", 25)), "2001:db8::1")
        self.assertEqual(net.host_of(IPv6Address("TCP", "fe80::1%eth0", 25)), "fe80::1%eth0")
        self.assertEqual(net.host_of(IPv4Address("TCP", "", 25)), "")

    def test_default_hostname_never_localhost_alias(self):
        """The default myhostname is the machine's name, not the 'localhost' a hosts file may
        map it to."""
        self.patch(net.socket, "gethostname", lambda: "vm")
        self.patch(net.socket, "getfqdn", lambda name=None: "localhost")
        self.assertEqual(net.default_hostname(), "vm")
        self.patch(net.socket, "getfqdn", lambda name=None: "vm.example.org")
        self.assertEqual(net.default_hostname(), "vm.example.org")


class WriteNowTests(unittest.TestCase):
    """``write_now``: straight to the socket of an idle plain connection, in order otherwise."""

    def setUp(self):
        from twisted.internet import protocol, tcp
        from twisted.internet.testing import MemoryReactor

        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.settimeout(1)
        self.reactor = MemoryReactor()
        self.t = tcp.Connection(ours, protocol.Protocol(), self.reactor)
        self.t.connected = True  # as tcp.Server and tcp.Client set it
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)

    def received(self):
        self.peer.setblocking(False)
        try:
            return self.peer.recv(65536)
        except BlockingIOError:
            return b""

    def test_idle_connection_sends_at_once(self):
        net.write_now(self.t, b"* OK\r\n")
        self.assertEqual(self.received(), b"* OK\r\n")
        self.assertFalse(self.reactor.writers)  # no reactor turn waited for

    def test_queued_bytes_keep_their_order(self):
        self.t.write(b"first ")
        net.write_now(self.t, b"second")
        self.assertEqual(self.received(), b"")  # both wait for the reactor, in order
        self.t.doWrite()
        self.t.doWrite()
        self.assertEqual(self.received(), b"first second")

    def test_producer_only_when_allowed(self):
        class Producer:
            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        self.t.registerProducer(Producer(), True)
        net.write_now(self.t, b"held")
        self.assertEqual(self.received(), b"")
        self.t.doWrite()
        self.assertEqual(self.received(), b"held")
        net.write_now(self.t, b"spliced", producer_ok=True)
        self.assertEqual(self.received(), b"spliced")

    def test_other_transports_write(self):
        from twisted.internet.testing import StringTransport

        t = StringTransport()
        net.write_now(t, b"x", producer_ok=True)
        self.assertEqual(t.value(), b"x")
