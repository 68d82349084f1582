"""Fakes for the inbound authentication checks' unit tests: a zone of TXT/A records on a fake
IResolver (tests/fakemx's ZoneResolver, no sockets), resolvers that fail as SERVFAIL or a
timeout, a synchronous stand-in for ``blockingCallFromThread``, and DKIM keys and signing."""

from __future__ import annotations

import base64
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer
from twisted.names import dns, error
from twisted.python.failure import Failure

from mailsuite.mta.dnsquery import DNSQuery, FromThread
from tests.fakemx import ZoneResolver

Zone = dict[tuple[str, int], list[Any]]


def txt(*strings: str | bytes) -> Any:
    return dns.Record_TXT(*(s.encode() if isinstance(s, str) else s for s in strings))


def a(ip: str) -> Any:
    return dns.Record_A(ip)


def add(records: Zone, name: str, *payloads: Any) -> Zone:
    """Add ``payloads`` (TXT or A records) at ``name``."""
    for p in payloads:
        kind = dns.TXT if isinstance(p, dns.Record_TXT) else dns.A
        records.setdefault((name, kind), []).append(p)
    return records


def now(f: Any, *args: Any) -> Any:
    """``blockingCallFromThread`` for tests: the fakes answer at once, so the Deferred has
    fired; its result, or its exception raised."""
    got: list[Any] = []
    f(*args).addBoth(got.append)
    assert got, "the fake DNS did not answer at once"
    if isinstance(got[0], Failure):
        got[0].raiseException()
    return got[0]


class FailingResolver(ZoneResolver):
    """Answers names in ``failing`` with ``exc`` (SERVFAIL: DNSServerError; a timeout:
    DNSQueryTimeoutError), the rest from the zone."""

    def __init__(self, records: Zone, failing: set[str], exc: type[Exception]) -> None:
        super().__init__(records)
        self.failing, self.exc = failing, exc

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        if name.decode().lower() in self.failing:
            self.queries.append((name.decode().lower(), type))
            return defer.fail(self.exc(name))
        return super()._lookup(name, cls, type, timeout)


SERVFAIL = error.DNSServerError
TIMEOUT = error.DNSQueryTimeoutError


def lookups(resolver: Any) -> tuple[DNSQuery, FromThread]:
    """The DNSQuery over ``resolver`` and its bridge as a thread would use it."""
    from twisted.internet.task import Clock
    query = DNSQuery(resolver, Clock())
    return query, FromThread(query, call=now)


class Key:
    """An RSA key for ``domain``/``selector``: its DNS record and a signer."""

    def __init__(self, domain: str, selector: str = "sel", bits: int = 1024) -> None:
        self.domain, self.selector = domain, selector
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.pem = private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public = base64.b64encode(der).decode()

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def record(self) -> Any:
        text = f"v=DKIM1; k=rsa; p={self.public}"
        return txt(*(text[i:i + 200] for i in range(0, len(text), 200)))

    def publish(self, records: Zone) -> Zone:
        return add(records, self.name, self.record())

    def sign(self, message: bytes, linesep: bytes = b"\n") -> bytes:
        """``message`` (``linesep`` line ends) with a DKIM-Signature on top (relaxed)."""
        sig = dkim.sign(message, self.selector.encode(), self.domain.encode(), self.pem,
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=[b"from", b"to", b"subject", b"date"], linesep=linesep)
        return sig + message

    def arc_seal(self, message: bytes, srv_id: str) -> bytes:
        """``message`` with one more ARC set (its A-R for ``srv_id`` must be on top)."""
        headers = dkim.arc_sign(message, self.selector.encode(), self.domain.encode(),
                                self.pem, srv_id.encode(), linesep=b"\n")
        return b"".join(headers) + message
