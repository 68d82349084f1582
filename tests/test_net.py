"""Peer addresses as logs and network lists want them; the default host name."""

import ipaddress

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
