"""mailsuite.smtp.clientname: the SMTP client's name, forward-confirmed as Postfix's smtpd
finds it, through twisted.names (no thread of the pool); the host itself is localhost."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import dns, error
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver
from mailsuite.smtp.clientname import REVERSE_TIMEOUT, reverse_lookup


class FakeResolver:
    """PTR and A answers from dicts; every query is recorded with its timeout."""

    def __init__(self, ptr: dict[bytes, bytes], a: dict[bytes, str]) -> None:
        self.ptr, self.a = ptr, a
        self.asked: list[tuple[str, bytes, Any]] = []

    def lookupPointer(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        self.asked.append(("PTR", name.encode(), timeout))
        if name.encode() not in self.ptr:
            return defer.fail(error.DomainError(name))
        rr = dns.RRHeader(name.encode(), dns.PTR, payload=dns.Record_PTR(self.ptr[name.encode()]))
        return defer.succeed(([rr], [], []))

    def lookupAddress(self, name: bytes, timeout: Any = None) -> defer.Deferred[Any]:
        self.asked.append(("A", name, timeout))
        if name not in self.a:
            return defer.fail(error.DomainError(name))
        rr = dns.RRHeader(name, dns.A, payload=dns.Record_A(self.a[name]))
        return defer.succeed(([rr], [], []))

    def lookupIPV6Address(self, name: bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return defer.fail(error.DomainError(name))


class ClientNameTests(unittest.TestCase):
    def setUp(self) -> None:
        self.resolver = FakeResolver(
            {b"7.113.0.203.in-addr.arpa": b"mx.example.net",
             b"8.113.0.203.in-addr.arpa": b"liar.example.net"},
            {b"mx.example.net": "203.0.113.7", b"liar.example.net": "198.51.100.1"})
        self.names = MXResolver(resolver=self.resolver)

    def name(self, ip: str) -> str:
        return self.successResultOf(reverse_lookup(ip, self.names))

    def test_forward_confirmed(self) -> None:
        """PTR, then A of that name back to the address: the name; the PTR look-up is bounded
        by REVERSE_TIMEOUT."""
        self.assertEqual(self.name("203.0.113.7"), "mx.example.net")
        self.assertEqual(self.resolver.asked[0],
                         ("PTR", b"7.113.0.203.in-addr.arpa", REVERSE_TIMEOUT))

    def test_unknown(self) -> None:
        """No PTR, or a name whose addresses do not include the client: ``unknown``."""
        self.assertEqual(self.name("203.0.113.9"), "unknown")
        self.assertEqual(self.name("203.0.113.8"), "unknown")

    def test_timeout_is_unknown(self) -> None:
        """A PTR look-up that times out names the client ``unknown`` (it does not fail)."""
        self.resolver.lookupPointer = lambda name, timeout=None: defer.fail(  # type: ignore
            error.DNSQueryTimeoutError(name))
        self.assertEqual(self.name("203.0.113.7"), "unknown")

    def test_loopback_is_localhost(self) -> None:
        """The host itself (any loopback address) is ``localhost``, with no look-up; a peer
        that is no IP address is ``unknown``."""
        self.assertEqual(self.name("127.0.0.1"), "localhost")
        self.assertEqual(self.name("127.0.0.5"), "localhost")
        self.assertEqual(self.name("::1"), "localhost")
        self.assertEqual(self.name("/run/sock"), "unknown")
        self.assertEqual(self.resolver.asked, [])
