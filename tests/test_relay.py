"""Tests for mailsuite.mta.relay (SMTP client) and mailsuite.mta.dns (MX look-ups) against an
in-memory zone (tests/fakemx.py); over real sockets: tests/integration/test_relay_network.py."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver, PermanentDNSError
from mailsuite.mta.relay import to_wire
from tests import fakemx


class WireTests(unittest.TestCase):
    def test_dot_stuffing_and_crlf(self) -> None:
        """Every line starting with '.' gets one more; LF -> CRLF; ends with CRLF.CRLF."""
        self.assertEqual(
            to_wire(b"a\n.b\n..c\n.\nd\n"), b"a\r\n..b\r\n...c\r\n..\r\nd\r\n.\r\n")

    def test_first_line_and_no_final_newline(self) -> None:
        """A dot on the very first line is stuffed; a missing final newline is added."""
        self.assertEqual(to_wire(b".x"), b"..x\r\n.\r\n")

    def test_chunk_boundary(self) -> None:
        """A dot line right after 16/64 KiB of data is stuffed too (Twisted's client misses it)."""
        for size in (16384, 65536):
            data = b"x" * (size - 1) + b"\n.\n"
            self.assertTrue(to_wire(data).endswith(b"\r\n..\r\n.\r\n"))


class FakeResolver:
    """An IResolver answering from a dict, or failing with a given exception."""

    def __init__(self, records: dict[tuple[str, int], list[Any]], fail: Exception | None = None):
        self.zone = fakemx.ZoneResolver(records)
        self.fail = fail

    def lookupMailExchange(self, name: bytes) -> Any:
        if self.fail:
            return defer.fail(self.fail)
        return self.zone.lookupMailExchange(name)

    def lookupAddress(self, name: bytes) -> Any:
        return self.zone.lookupAddress(name)

    def lookupIPV6Address(self, name: bytes) -> Any:
        return self.zone.lookupIPV6Address(name)


class MXTests(unittest.TestCase):
    def resolver(
        self, mx: dict[str, Any], a: dict[str, str], fail: Exception | None = None
    ) -> MXResolver:
        r = MXResolver(resolver=FakeResolver(fakemx.zone(mx, a), fail))
        r.shuffle = lambda names: None
        return r

    def test_preference_order(self) -> None:
        """MX hosts come lowest preference first, each with its addresses."""
        r = self.resolver({"x.test": [(20, "b.x.test"), (10, "a.x.test")]},
                          {"a.x.test": "127.0.0.2", "b.x.test": "127.0.0.3"})
        hosts = self.successResultOf(r.hosts("x.test"))
        self.assertEqual([(h.name, h.addresses) for h in hosts],
                         [("a.x.test", ("127.0.0.2",)), ("b.x.test", ("127.0.0.3",))])

    def test_null_mx(self) -> None:
        """MX 0 . (RFC 7505): permanent, 5.1.10."""
        r = self.resolver({"x.test": [(0, ".")]}, {})
        f = self.failureResultOf(r.hosts("x.test"), PermanentDNSError)
        self.assertEqual(f.value.dsn, "5.1.10")

    def test_a_fallback(self) -> None:
        """No MX records: the domain's own A record."""
        r = self.resolver({}, {"x.test": "127.0.0.4"})
        hosts = self.successResultOf(r.hosts("x.test"))
        self.assertEqual(hosts[0].addresses, ("127.0.0.4",))

    def test_nxdomain_is_permanent(self) -> None:
        """A domain that does not exist: 5.1.2 (bounce)."""
        r = self.resolver({}, {})
        self.assertEqual(self.failureResultOf(r.hosts("nope.test")).value.dsn, "5.1.2")

    def test_timeout_is_temporary(self) -> None:
        """A DNS timeout: 4.4.3 (defer)."""
        from twisted.names import error
        r = self.resolver({}, {}, fail=error.DNSQueryTimeoutError("x"))
        self.assertEqual(self.failureResultOf(r.hosts("x.test")).value.dsn, "4.4.3")

    def test_servfail_and_refused_are_temporary(self) -> None:
        """SERVFAIL and REFUSED (twisted.names makes them subclasses of its NXDOMAIN error):
        4.4.3, deferred and tried again, never a bounce."""
        from twisted.names import error
        for failure in (error.DNSServerError("x"), error.DNSQueryRefusedError("x"),
                        error.DNSUnknownError("x")):
            r = self.resolver({}, {}, fail=failure)
            self.assertEqual(self.failureResultOf(r.hosts("x.test")).value.dsn, "4.4.3",
                             type(failure).__name__)

    def test_address_literal(self) -> None:
        """[127.0.0.9] needs no look-up."""
        r = self.resolver({}, {})
        self.assertEqual(self.successResultOf(r.hosts("[127.0.0.9]"))[0].addresses, ("127.0.0.9",))

