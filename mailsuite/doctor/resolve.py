"""The look-ups of ``mailsuite doctor``, through ``[mail] dns_resolver`` (twisted.names), each
bounded in time: an answer (possibly empty: NXDOMAIN and "no data" are both "nothing
published"), or :class:`LookupFailed` naming the name, the type and why (a timeout, SERVFAIL),
so that a check says "no answer" instead of "missing".

:func:`spf_lookup` is the DNS of the SPF evaluation (pyspf in a thread, as the inbound checks
run it). The resolver is the server's own (mailsuite.mta.dns.shared)."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error

from mailsuite.mta.dnsquery import DNSQuery, FromThread

#: seconds a look-up may take, retries included
LOOKUP_TIMEOUT = 8.0


class LookupFailed(Exception):
    """No answer (timeout, SERVFAIL, REFUSED): the record may or may not exist."""


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


def spf_lookup(lookups: Lookups) -> Any:
    """The DNS of an SPF check in a thread (mailsuite.filter.spfcheck's Lookup), as the
    inbound checks make it: dnsquery's bridge to the reactor over the doctor's resolver."""
    return FromThread(DNSQuery(lookups.resolver, lookups.reactor))
