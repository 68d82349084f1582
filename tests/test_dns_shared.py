"""One resolver per server (mailsuite.mta.dns.shared): every part that asks DNS asks the same
twisted.names client, with one set of timeouts."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver, shared


class SharedResolverTests(unittest.TestCase):
    def test_one_per_reactor_and_setting(self) -> None:
        """Two parts with the same dns_resolver on one reactor get the same client; another
        setting or reactor gets its own; an injected resolver (tests) is kept."""
        clock, other = Clock(), Clock()
        a = MXResolver("127.0.0.1:5353", reactor=clock)
        b = MXResolver("127.0.0.1:5353", reactor=clock)
        self.assertIs(a.resolver, b.resolver)
        self.assertIs(a.resolver, shared("127.0.0.1:5353", clock))
        self.assertIsNot(a.resolver, MXResolver("127.0.0.1:5354", reactor=clock).resolver)
        self.assertIsNot(a.resolver, MXResolver("127.0.0.1:5353", reactor=other).resolver)
        given = object()
        self.assertIs(MXResolver("127.0.0.1:5353", reactor=clock, resolver=given).resolver, given)
        self.assertEqual(a.resolver.servers, [("127.0.0.1", 5353)])
