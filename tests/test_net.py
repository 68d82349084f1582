"""Peer addresses as logs and network lists want them; the default host name."""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial import unittest

from mailsuite import net


class HostOfTests(unittest.TestCase):
    def test_mapped_ipv4_unmapped(self):
        """A dual-stack listener's ::ffff:a.b.c.d peer is reported as a.b.c.d (fail2ban, logs)."""
        self.assertEqual(net.host_of(IPv6Address("TCP", "::ffff:192.0.2.7", 4000)), "192.0.2.7")

    def test_plain_addresses_kept(self):
        """IPv4 and real IPv6 addresses are returned as they are."""
        self.assertEqual(net.host_of(IPv4Address("TCP", "127.0.0.1", 25)), "127.0.0.1")
        self.assertEqual(net.host_of(IPv6Address("TCP", "2001:db8::1", 25)), "2001:db8::1")

    def test_default_hostname_never_localhost_alias(self):
        """The default myhostname is the machine's name, not the 'localhost' a hosts file may
        map it to."""
        self.patch(net.socket, "gethostname", lambda: "vm")
        self.patch(net.socket, "getfqdn", lambda name=None: "localhost")
        self.assertEqual(net.default_hostname(), "vm")
        self.patch(net.socket, "getfqdn", lambda name=None: "vm.example.org")
        self.assertEqual(net.default_hostname(), "vm.example.org")
