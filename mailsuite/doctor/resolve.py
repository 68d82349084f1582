"""The look-ups of ``mailsuite doctor``, through ``[mail] dns_resolver`` (twisted.names), each
bounded in time: an answer (possibly empty: NXDOMAIN and "no data" are both "nothing
published"), or :class:`LookupFailed` naming the name, the type and why (a timeout, SERVFAIL),
so that a check says "no answer" instead of "missing".

:func:`spf_lookup` is the DNS function pyspf calls (``spf.DNSLookup``'s shape), for pyspf
running in a thread: each query is made on the reactor by :class:`Lookups`."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, threads
from twisted.names import client, dns, error

from mailsuite.mta.dns import parse_resolver
from mailsuite.mta.dnsquery import TemporaryDNSError

#: seconds a look-up may take, retries included
LOOKUP_TIMEOUT = 8.0


class LookupFailed(Exception):
    """No answer (timeout, SERVFAIL, REFUSED): the record may or may not exist."""


def make_resolver(dns_resolver: str, reactor: Any) -> Any:
    """The twisted.names resolver of ``[mail] dns_resolver`` (empty: /etc/resolv.conf)."""
    server = parse_resolver(dns_resolver)
    if server is not None:
        return client.Resolver(servers=[server], reactor=reactor, timeout=(1, 2, 4))
    return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor, timeout=(1, 2, 4))


def _name(text: str) -> bytes:
    text = text.rstrip(".")
    return text.encode("idna") if not text.isascii() else text.encode()


def reverse_name(address: str) -> str:
    """``4.3.2.1.in-addr.arpa`` of 1.2.3.4 (ip6.arpa for IPv6)."""
    return ipaddress.ip_address(address).reverse_pointer


class Lookups:
    """Queries of one type, answers as Python values; ``resolver`` is an IResolver (tests give
    a tests.fakemx.ZoneResolver)."""

    def __init__(self, resolver: Any, reactor: Any, timeout: float = LOOKUP_TIMEOUT) -> None:
        self.resolver, self.reactor, self.timeout = resolver, reactor, timeout

    @defer.inlineCallbacks
    def records(self, name: str, kind: int) -> Any:
        """Deferred list of RRHeaders of ``kind`` (CNAMEs on the way too) for ``name``."""
        lookup = {dns.A: self.resolver.lookupAddress, dns.AAAA: self.resolver.lookupIPV6Address,
                  dns.MX: self.resolver.lookupMailExchange, dns.TXT: self.resolver.lookupText,
                  dns.PTR: self.resolver.lookupPointer}[kind]
        what = f"{name.rstrip('.')} {dns.QUERY_TYPES.get(kind, kind)}"
        d = lookup(_name(name))
        d.addTimeout(self.timeout, self.reactor)
        try:
            answers, _, _ = yield d
        except (defer.TimeoutError, error.DNSQueryTimeoutError):
            raise LookupFailed(f"{what}: no answer from the resolver (timeout)") from None
        except (error.DNSServerError, error.DNSQueryRefusedError, error.DNSUnknownError,
                error.ResolverError) as e:
            raise LookupFailed(f"{what}: the resolver failed ({type(e).__name__})") from None
        except error.DomainError:  # NXDOMAIN
            return []
        return [a for a in answers if a.type in (kind, dns.CNAME)]

    @defer.inlineCallbacks
    def txt(self, name: str) -> Any:
        """Deferred list of the TXT records of ``name``, each record's strings joined."""
        answers = yield self.records(name, dns.TXT)
        return [b"".join(a.payload.data).decode("utf-8", "replace")
                for a in answers if a.type == dns.TXT]

    @defer.inlineCallbacks
    def addresses(self, name: str) -> Any:
        """Deferred list of the A then AAAA addresses of ``name``."""
        found = []
        for kind in (dns.A, dns.AAAA):
            answers = yield self.records(name, kind)
            for a in answers:
                if a.type == dns.A:
                    found.append(a.payload.dottedQuad())
                elif a.type == dns.AAAA:
                    found.append(str(ipaddress.ip_address(a.payload.address)))
        return list(dict.fromkeys(found))

    @defer.inlineCallbacks
    def mx(self, name: str) -> Any:
        """Deferred list of (preference, host) of ``name``'s MX records, best first."""
        answers = yield self.records(name, dns.MX)
        return sorted((a.payload.preference, str(a.payload.name).rstrip(".").lower())
                      for a in answers if a.type == dns.MX)

    @defer.inlineCallbacks
    def ptr(self, address: str) -> Any:
        """Deferred list of the names the PTR records of ``address`` give."""
        answers = yield self.records(reverse_name(address), dns.PTR)
        return [str(a.payload.name).rstrip(".").lower() for a in answers if a.type == dns.PTR]


_SPF_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "TXT": dns.TXT, "PTR": dns.PTR}


@defer.inlineCallbacks
def spf_answers(lookups: Lookups, name: str, qtype: str) -> Any:
    """pyspf's answer shape for one query: [((name, TYPE), value), ...] (A/AAAA: the address
    text; MX: (preference, host); TXT: the record's strings as bytes; PTR: the name;
    CNAME: the target, which pyspf follows)."""
    kind = _SPF_TYPES.get(qtype)
    if kind is None:  # SPF (type 99): obsolete (RFC 7208 3.1), never published here
        return []
    answers = yield lookups.records(name, kind)
    out: list[tuple[tuple[str, str], Any]] = []
    for a in answers:
        owner = str(a.name).rstrip(".")
        if a.type == dns.CNAME:
            out.append(((owner, "CNAME"), str(a.payload.name).rstrip(".")))
        elif a.type == dns.A:
            out.append(((owner, qtype), a.payload.dottedQuad()))
        elif a.type == dns.AAAA:
            out.append(((owner, qtype), str(ipaddress.ip_address(a.payload.address))))
        elif a.type == dns.MX:
            out.append(((owner, qtype), (a.payload.preference, str(a.payload.name))))
        elif a.type == dns.TXT:
            out.append(((owner, qtype), tuple(a.payload.data)))
        elif a.type == dns.PTR:
            out.append(((owner, qtype), str(a.payload.name)))
    return out


def spf_lookup(lookups: Lookups) -> Any:
    """The DNS of an SPF check in a thread (mailsuite.filter.spfcheck's Lookup: name, type,
    timeout -> (owner, type, value) triples): the query runs on the reactor; no answer is a
    temporary DNS error (pyspf's TempError)."""

    def lookup(name: str, qtype: str, timeout: float) -> list[tuple[str, str, Any]]:
        try:
            answers: list[Any] = threads.blockingCallFromThread(
                lookups.reactor, spf_answers, lookups, name, qtype)
        except LookupFailed as e:
            raise TemporaryDNSError(str(e)) from None
        return [(owner, kind, value) for (owner, kind), value in answers]
    return lookup
