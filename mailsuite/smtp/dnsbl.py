"""DNS blocklists: look-ups through our resolver (mailsuite.mta.dns, twisted.names), for
``reject_rbl_client`` / ``reject_rhsbl_sender`` (smtp/restrictions.py) and postscreen's
weighted ``postscreen_dnsbl_sites`` (smtp/postscreen.py).

A site is ``domain``, ``domain=filter`` or (postscreen) either with ``*weight``: the filter
matches the A record of a listing, octet by octet, each a number or ``[list]`` of numbers and
ranges ``a..b`` separated by ``;`` (``127.0.0.[2..11]``, ``127.0.0.[2;4;10..11]``). Without a
filter any A record lists the client. A look-up that fails (timeout, SERVFAIL, an unreachable
server) lists nobody: an unreachable DNSBL never rejects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error
from twisted.python.failure import Failure

from mailsuite.net import parse_ip

#: seconds per try of a DNSBL look-up (Postfix's postscreen_dnsbl_timeout is 10s in all)
DNSBL_TIMEOUT = (2, 3, 5)
_OCTET = re.compile(r"^(\d{1,3}|\[[\d.;]+\])$")


@dataclass(frozen=True)
class Site:
    domain: str
    filter: tuple[frozenset[int] | None, ...] | None = None  # per octet; None: any
    weight: int = 1

    def matches(self, addresses: list[str]) -> bool:
        if self.filter is None:
            return bool(addresses)
        for address in addresses:
            octets = address.split(".")
            if len(octets) == 4 and all(
                    f is None or int(o) in f for f, o in zip(self.filter, octets, strict=True)):
                return True
        return False


def _octet(text: str) -> frozenset[int]:
    if not _OCTET.match(text):
        raise ValueError(f"bad octet {text!r}")
    values: set[int] = set()
    for item in text.strip("[]").split(";"):
        low, dots, high = item.partition("..")
        if not low.isdigit() or (dots and not high.isdigit()):
            raise ValueError(f"bad octet {text!r}")
        values.update(range(int(low), int(high if dots else low) + 1))
    if max(values) > 255:
        raise ValueError(f"bad octet {text!r}")
    return frozenset(values)


def parse_site(text: str, weighted: bool = False) -> Site:
    """``zen.example``, ``b.example=127.0.0.[2..11]``, with ``*3`` when ``weighted``."""
    weight = 1
    if weighted and "*" in text:
        text, _, number = text.rpartition("*")
        if not re.fullmatch(r"-?\d+", number):
            raise ValueError(f"{number!r} is not a weight (an integer)")
        weight = int(number)
    domain, eq, pattern = text.partition("=")
    domain = domain.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", domain) or "." not in domain:
        raise ValueError(f"{domain!r} is not a DNSBL domain")
    filt = None
    if eq:
        octets = pattern.strip().split(".") if "[" not in pattern else _split_octets(pattern)
        if len(octets) != 4:
            raise ValueError(f"{pattern!r} is not an address pattern (like 127.0.0.[2..11])")
        try:
            filt = tuple(_octet(o) for o in octets)
        except ValueError as e:
            raise ValueError(f"{pattern!r}: {e}") from None
    return Site(domain, filt, weight)


def _split_octets(pattern: str) -> list[str]:
    """``127.0.0.[2..11]`` split at the dots outside brackets."""
    out, depth, current = [], 0, ""
    for char in pattern.strip():
        depth += char == "["
        depth -= char == "]"
        if char == "." and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    return [*out, current]


def parse_sites(value: str) -> list[Site]:
    """postscreen_dnsbl_sites: weighted sites separated by commas or white space."""
    return [parse_site(word, weighted=True) for word in value.replace(",", " ").split()]


def reversed_name(ip: str, domain: str) -> str | None:
    """``4.3.2.1.zen.example`` for 1.2.3.4 (IPv6: nibbles); None when ``ip`` is no address."""
    address = parse_ip(ip)
    if address is None:
        return None
    if address.version == 4:
        return ".".join(reversed(str(address).split("."))) + "." + domain
    return ".".join(reversed(address.exploded.replace(":", ""))) + "." + domain


@dataclass(frozen=True)
class Listing:
    addresses: list[str]
    reason: str = ""


class Blocklists:
    """Look-ups of names in DNSBLs. ``resolver`` is an IResolver (the MXResolver's);
    ``warn(text)`` logs a failed look-up (once per domain and minute at most)."""

    def __init__(self, resolver: Callable[[], Any], clock: Any,
                 warn: Callable[[str], None]) -> None:
        self._resolver = resolver
        self.clock = clock
        self.warn = warn
        self._warned: dict[str, float] = {}

    def listed(self, name: str, domain: str, reason: bool = False) -> defer.Deferred[Listing]:
        """The A records of ``name`` (empty: not listed) and, when ``reason`` and listed, its
        TXT record's text. Never errbacks."""
        resolver = self._resolver()
        d = resolver.lookupAddress(name.encode("idna"), timeout=DNSBL_TIMEOUT)
        d.addCallbacks(lambda r: [a.payload.dottedQuad() for a in r[0] if a.type == dns.A],
                       lambda f: self._failed(f, domain))
        if reason:
            d.addCallback(self._with_reason, name, resolver)
        else:
            d.addCallback(Listing)
        return d

    def _with_reason(self, addresses: list[str], name: str, resolver: Any) -> Any:
        if not addresses:
            return Listing([])
        d = resolver.lookupText(name.encode("idna"), timeout=DNSBL_TIMEOUT)
        d.addCallback(lambda r: " ".join(
            b"".join(a.payload.data).decode("utf-8", "replace") for a in r[0]
            if a.type == dns.TXT))
        d.addErrback(lambda _: "")
        return d.addCallback(lambda text: Listing(addresses, text))

    def _failed(self, failure: Failure, domain: str) -> list[str]:
        # NXDOMAIN (DomainError itself from a resolver in this process) is "not listed";
        # SERVFAIL and REFUSED are DomainError's subclasses too, but failures
        if not (failure.check(error.DNSNameError, error.AuthoritativeDomainError)
                or failure.type is error.DomainError):
            now = self.clock.seconds()
            if now - self._warned.get(domain, -3600.0) >= 60:
                self._warned[domain] = now
                self.warn(f"warning: dnsblog_query: lookup error for DNS query {domain}:"
                          f" {failure.type.__name__}")
        return []


def score(found: dict[str, list[str]], sites: list[Site]) -> tuple[int, str]:
    """postscreen's combined score over weighted ``sites`` of the listings ``found`` so far
    ({domain: A records}), and the domain of the heaviest listing that counted."""
    total, best, top = 0, "", None
    for site in sites:
        if site.matches(found.get(site.domain, [])):
            total += site.weight
            if top is None or site.weight > top:
                best, top = site.domain, site.weight
    return total, best
