"""DNS queries of any type through the one twisted.names resolver of ``[mail] dns_resolver``,
and a bridge for libraries that ask for DNS from a worker thread (pyspf, dkimpy).

:class:`DNSQuery` asks the resolver (an IResolver: the ``client.Resolver`` of
mailsuite.mta.dns.MXResolver, or a fake in tests) and gives the answer records as plain
values, each query bounded by its own timeout on the reactor's clock:

- ``[]`` for NXDOMAIN and for a name without records of the type (a "void" answer);
- :class:`TemporaryDNSError` for a timeout, SERVFAIL, REFUSED or an unknown error.

:class:`FromThread` is what a blocking library gets as its lookup function: it runs in a
thread of mailsuite.threads and waits for :meth:`DNSQuery.lookup` on the reactor thread
(``twisted.internet.threads.blockingCallFromThread``), so the library's DNS goes through our
resolver and nothing blocks the reactor.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.names import dns, error

from mailsuite.mta.dns import _TEMPORARY

#: the record types asked by name (pyspf's and dkimpy's spelling)
TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT,
         "CNAME": dns.CNAME, "SPF": dns.SPF}
_NAMES = {v: k for k, v in TYPES.items()}
_METHODS = {dns.A: "lookupAddress", dns.AAAA: "lookupIPV6Address", dns.MX: "lookupMailExchange",
            dns.PTR: "lookupPointer", dns.TXT: "lookupText", dns.CNAME: "lookupCanonicalName",
            dns.SPF: "lookupSenderPolicy"}

#: one answer record: (owner name, type name, value): A/AAAA the address text, MX
#: (preference, exchange), PTR/CNAME the target name, TXT/SPF the list of its strings (bytes)
Record = tuple[str, str, Any]


class TemporaryDNSError(Exception):
    """The question got no answer now (timeout, SERVFAIL...): ask again later."""


def _value(record: dns.RRHeader) -> Any:
    p: Any = record.payload
    if record.type == dns.A:
        return p.dottedQuad()
    if record.type == dns.AAAA:
        return str(ipaddress.ip_address(p.address))
    if record.type == dns.MX:
        return (p.preference, str(p.name).rstrip("."))
    if record.type in (dns.PTR, dns.CNAME):
        return str(p.name).rstrip(".")
    return list(p.data)  # TXT, SPF


#: the longest a negative answer is kept (seconds), whatever its SOA says
NEGATIVE_TTL_MAX = 300
#: answers kept at most with ``cache`` (full: the expired ones go, else new ones are not kept)
CACHE_ENTRIES = 10000


def _wire(name: str) -> bytes | None:
    """``name`` as DNS carries it (IDNA), None if it cannot (a label empty or over 63)."""
    try:
        wire = name.rstrip(".").encode("idna") if not name.isascii() \
            else name.rstrip(".").encode("ascii")
    except UnicodeError:
        return None
    if not wire or any(not 0 < len(label) < 64 for label in wire.split(b".")):
        return None
    return wire


def _negative_ttl(authority: Any) -> float | None:
    """RFC 2308 5: how long "no such name / no such record" may be kept: the smaller of the
    SOA record's TTL and its MINIMUM (at most NEGATIVE_TTL_MAX); None without an SOA (then it
    is not kept)."""
    for r in authority or []:
        if getattr(r, "type", None) == dns.SOA:
            return float(min(r.ttl, r.payload.minimum, NEGATIVE_TTL_MAX))
    return None


class DNSQuery:
    """Queries through ``resolver`` (an IResolver) on ``reactor`` (its clock bounds each one).
    ``cache``: answers are kept for their smallest TTL (no records and NXDOMAIN for their SOA's
    negative TTL), as a local caching resolver would, so that a busy MX does not ask for one
    sender's records again (not twisted.names' CacheResolver: it answers an entry past its TTL
    as NXDOMAIN and keeps no negative answers)."""

    def __init__(self, resolver: Any, reactor: Any, cache: bool = False) -> None:
        self.resolver = resolver
        self.reactor = reactor
        self.cache: dict[tuple[bytes, int], tuple[float, list[Record]]] | None = \
            {} if cache else None

    def lookup(self, name: str, qtype: str, timeout: float = 10.0) -> defer.Deferred[list[Record]]:
        """The records of ``name`` (any of TYPES) with the CNAMEs on the way; see the module doc."""
        code = TYPES[qtype.upper()]
        wire = _wire(name)
        if wire is None:
            return defer.succeed([])  # not a name DNS can carry: nothing there
        kept = self.cached(name, qtype)
        if kept is not None:
            return defer.succeed(kept)
        tries = (1, 3, max(timeout - 4, 1)) if timeout > 5 else (timeout,)
        d = getattr(self.resolver, _METHODS[code])(wire, timeout=tries)
        d.addTimeout(timeout, self.reactor)
        if self.cache is not None:
            d.addCallbacks(self._keep, self._keep_nxdomain, callbackArgs=((wire.lower(), code),),
                           errbackArgs=((wire.lower(), code),))
        return d.addCallbacks(self._answers, self._failed)

    def cached(self, name: str, qtype: str) -> list[Record] | None:
        """The kept answer, None if there is none (or no cache). Only reads: a worker thread
        may ask (FromThread), without a round trip to the reactor."""
        wire = _wire(name) if self.cache is not None else None
        if self.cache is None or wire is None:
            return None
        kept = self.cache.get((wire.lower(), TYPES[qtype.upper()]))
        if kept is not None and kept[0] > self.reactor.seconds():
            return list(kept[1])
        return None

    def _keep(self, result: Any, key: tuple[bytes, int]) -> Any:
        answers = result[0]
        ttl = min(r.ttl for r in answers) if answers else _negative_ttl(result[1])
        if ttl is not None:
            self._put(key, ttl, self._answers(result))
        return result

    def _keep_nxdomain(self, failure: Any, key: tuple[bytes, int]) -> Any:
        """NXDOMAIN is kept as "no records" for its SOA's negative TTL (RFC 2308 5)."""
        if not failure.check(*_TEMPORARY) and failure.check(error.DomainError):
            message = failure.value.args[0] if failure.value.args else None
            ttl = _negative_ttl(getattr(message, "authority", []))
            if ttl is not None:
                self._put(key, ttl, [])
        return failure

    def _put(self, key: tuple[bytes, int], ttl: float, records: list[Record]) -> None:
        assert self.cache is not None
        now = self.reactor.seconds()
        if len(self.cache) >= CACHE_ENTRIES:
            for k in [k for k, (expires, _) in self.cache.items() if expires <= now]:
                del self.cache[k]
        if len(self.cache) < CACHE_ENTRIES and ttl > 0:
            self.cache[key] = (now + ttl, records)

    @staticmethod
    def _answers(result: Any) -> list[Record]:
        answers = result[0]
        return [(str(r.name).rstrip(".").lower(), _NAMES[r.type], _value(r))
                for r in answers if r.type in _NAMES]

    @staticmethod
    def _failed(failure: Any) -> list[Record]:
        if failure.check(*_TEMPORARY):  # first: SERVFAIL and REFUSED are DomainError's kind
            raise TemporaryDNSError(f"{type(failure.value).__name__}")
        if failure.check(error.DomainError, error.AuthoritativeDomainError):
            return []  # NXDOMAIN
        if failure.check(defer.CancelledError):
            raise TemporaryDNSError("timeout")
        return failure.raiseException()  # type: ignore[no-any-return]

    def txt(self, name: str, timeout: float = 10.0) -> defer.Deferred[list[bytes]]:
        """The TXT records of ``name`` itself (not of a CNAME on the way), each one's strings
        joined (RFC 7208 3.3, RFC 6376 3.6.2.2, RFC 7489 6.6.3)."""
        return self.lookup(name, "TXT", timeout).addCallback(lambda r: _joined(name, r))


def _joined(name: str, records: list[Record]) -> list[bytes]:
    """The TXT records of ``name`` (or of its CNAME targets), each one's strings joined."""
    wanted = {name.rstrip(".").lower()} | {v for _, t, v in records if t == "CNAME"}
    return [b"".join(v) for n, t, v in records if t == "TXT" and n in wanted]


class FromThread:
    """``lookup(name, qtype, timeout) -> [Record]`` for a library in a worker thread: it asks
    ``query`` on the reactor thread and waits. ``call`` runs a Deferred-returning function on
    the reactor and waits for it (``blockingCallFromThread``; tests give one that runs it at
    once). Raises TemporaryDNSError as :meth:`DNSQuery.lookup` fails."""

    def __init__(self, query: DNSQuery, call: Callable[..., Any] | None = None) -> None:
        self.query = query
        self.call = call or functools.partial(threads.blockingCallFromThread, query.reactor)

    def __call__(self, name: str, qtype: str, timeout: float = 10.0) -> list[Record]:
        kept = self.query.cached(name, qtype)
        if kept is not None:  # no round trip through the reactor for a kept answer
            return kept
        return self.call(self.query.lookup, name, qtype, timeout)  # type: ignore[no-any-return]

    def txt(self, name: str, timeout: float = 10.0) -> list[bytes]:
        kept = self.query.cached(name, "TXT")
        if kept is not None:
            return _joined(name, kept)
        return self.call(self.query.txt, name, timeout)  # type: ignore[no-any-return]
