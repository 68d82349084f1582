"""Where mail for a domain goes: MX records through twisted.names, as Postfix's smtp(8) asks.

:meth:`MXResolver.hosts` gives the hosts to try, in order, each with its addresses:

- MX records sorted by preference (hosts of equal preference shuffled, as Postfix does);
- a null MX (``MX 0 .``, RFC 7505) means the domain takes no mail: :class:`PermanentDNSError`
  with DSN 5.1.10;
- no MX records: the domain's own A/AAAA records (RFC 5321 5.1 implicit MX);
- NXDOMAIN is permanent (5.1.2, the message bounces); a timeout or SERVFAIL is temporary
  (4.4.3, the message is deferred and retried);
- ``[host]`` / ``[1.2.3.4]`` (relayhost syntax) skip the MX look-up.

Twisted's ``MXCalculator`` is not used: it skips MX for bytes domains, ignores null MX and tries
only one host (TWISTED.md). The resolver is ``dns_resolver = host:port`` when set (tests run a
twisted.names server on 127.0.0.1), else ``/etc/resolv.conf``.
"""

from __future__ import annotations

import ipaddress
import random
import weakref
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.names import client, dns, error

#: Postfix's smtp_mx_address_limit: at most this many addresses are tried per delivery.
MX_ADDRESS_LIMIT = 5
#: answers that say "ask again later" (twisted.names makes SERVFAIL, REFUSED and the unknown
#: ones subclasses of DomainError, its NXDOMAIN: they must be told apart before it)
_TEMPORARY = (error.DNSServerError, error.DNSQueryTimeoutError, defer.TimeoutError,
              error.DNSUnknownError, error.DNSQueryRefusedError, error.ResolverError)


class DNSLookupError(Exception):
    """A look-up that gives no host to try: ``dsn`` and ``text`` say why, as Postfix logs it."""

    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text


class PermanentDNSError(DNSLookupError):
    """The message cannot be delivered (bounce)."""


class TemporaryDNSError(DNSLookupError):
    """Try again later (defer)."""


@dataclass(frozen=True)
class MailHost:
    """One host to connect to: its name (for logs and TLS) and its addresses in order."""

    name: str
    addresses: tuple[str, ...]
    preference: int = 0


def parse_resolver(text: str) -> tuple[str, int] | None:
    """``127.0.0.1:5353`` / ``[::1]:53`` -> (host, port); empty -> None."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def literal(destination: str) -> str | None:
    """The address inside ``[1.2.3.4]`` / ``[ipv6:::1]``, else None."""
    if destination.startswith("[") and destination.endswith("]"):
        inner = destination[1:-1]
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        try:
            return str(ipaddress.ip_address(inner))
        except ValueError:
            return None
    return None


#: the one twisted.names resolver of each reactor and dns_resolver setting (``shared``)
_SHARED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def shared(dns_resolver: str, reactor: Any) -> Any:
    """The twisted.names resolver every part of one server asks (MX and address look-ups, the
    inbound checks, MTA-STS, TLS-RPT, client names): one set of timeouts and one place to
    ask, as Postfix's processes all ask the host's resolver. Made at the first look-up (a
    resolv.conf resolver starts a re-read timer)."""
    per_reactor = _SHARED.setdefault(reactor, {})
    found = per_reactor.get(dns_resolver)
    if found is None:
        server = parse_resolver(dns_resolver)
        if server is not None:
            found = client.Resolver(servers=[server], reactor=reactor, timeout=(1, 3, 11))
        else:
            found = client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
        per_reactor[dns_resolver] = found
    return found


class MXResolver:
    """MX and address look-ups. ``resolver`` (an IResolver) may be given directly in tests;
    else the server's one resolver (``shared``)."""

    def __init__(self, dns_resolver: str = "", reactor: Any = None, resolver: Any = None) -> None:
        parse_resolver(dns_resolver)  # (a bad setting is refused now, not at the first look-up)
        self._setting = dns_resolver
        self._reactor = reactor
        self._resolver = resolver
        self.shuffle = random.shuffle

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor as global_reactor
            self._reactor = global_reactor
        return self._reactor

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            self._resolver = shared(self._setting, self.reactor)
        return self._resolver

    @defer.inlineCallbacks
    def hosts(self, domain: str) -> Any:
        """Deferred list of MailHost to try for ``domain``, best first; errbacks DNSLookupError."""
        address = literal(domain)
        if address is not None:
            return [MailHost(domain, (address,))]
        name = (
            domain.rstrip(".").encode("idna")
            if not domain.isascii()
            else domain.rstrip(".").encode()
        )
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(name)
        except _TEMPORARY as e:  # first: SERVFAIL and REFUSED are DomainError's subclasses
            raise TemporaryDNSError(
                "4.4.3", f"Host or domain name not found. Name service error for name={domain}"
                f" type=MX: Host not found, try again ({type(e).__name__})"
            ) from None
        except error.DomainError:  # NXDOMAIN (authorities raise its base class, DomainError)
            raise PermanentDNSError(
                "5.1.2", f"Host or domain name not found. Name service error for name={domain}"
                " type=MX: Host not found"
            ) from None
        records = [a.payload for a in answers if a.type == dns.MX]
        if any(str(r.name) in ("", ".") for r in records):
            raise PermanentDNSError(
                "5.1.10", f"Domain {domain} does not accept mail (nullMX)")
        if not records:
            addresses = yield self.addresses(domain)
            if not addresses:
                raise PermanentDNSError(
                    "5.4.4", f"Host or domain name not found. Name service error for"
                    f" name={domain} type=AAAA: Host not found")
            return [MailHost(domain, tuple(addresses))]
        by_pref: dict[int, list[str]] = {}
        for r in records:
            by_pref.setdefault(r.preference, []).append(str(r.name).rstrip("."))
        ordered: list[tuple[int, str]] = []
        for pref in sorted(by_pref):
            names = list(dict.fromkeys(by_pref[pref]))
            self.shuffle(names)
            ordered.extend((pref, n) for n in names)
        lookups = yield defer.DeferredList(
            [self.addresses(n) for _, n in ordered], consumeErrors=True)
        hosts = []
        temporary = False
        for (pref, n), (ok, result) in zip(ordered, lookups, strict=True):
            if ok and result:
                hosts.append(MailHost(n, tuple(result), pref))
            elif not ok:
                temporary = True
        if not hosts:
            if temporary:
                raise TemporaryDNSError("4.4.3", f"MX host lookups for {domain} failed, try again")
            raise PermanentDNSError(
                "5.4.4", f"all MX hosts for {domain} have no address (A/AAAA)")
        return hosts

    @defer.inlineCallbacks
    def addresses(self, host: str) -> Any:
        """IPv4 then IPv6 addresses of ``host`` (a name error gives []; a timeout errbacks)."""
        address = literal(f"[{host}]")
        if address is not None:
            return [address]
        name = host.encode("idna") if not host.isascii() else host.encode()
        results = yield defer.DeferredList(
            [self.resolver.lookupAddress(name), self.resolver.lookupIPV6Address(name)],
            consumeErrors=True)
        found: list[str] = []
        failures = []
        for ok, result in results:
            if not ok:
                if result.check(*_TEMPORARY) or not result.check(error.DomainError):
                    failures.append(result)  # a name error alone means no address
                continue
            for record in result[0]:
                if record.type in (dns.A, dns.AAAA):
                    found.append(record.payload.dottedQuad() if record.type == dns.A
                                 else str(ipaddress.ip_address(record.payload.address)))
        if not found and failures:
            failures[0].raiseException()
        return list(dict.fromkeys(found))
