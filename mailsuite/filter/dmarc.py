"""DMARC (RFC 7489): the From: domain's policy, identifier alignment and what to do.

- Policy discovery (6.6.3): the TXT records of ``_dmarc.FROMDOMAIN`` that start with
  ``v=DMARC1``; none there: those of ``_dmarc.ORGDOMAIN``. More than one record (or none) at
  the place found: no DMARC (``none``). A timeout or SERVFAIL: ``temperror``. A record that
  does not parse (no ``p=``, a bad tag value): ``permerror``.
- The organizational domain (3.2) is the Public Suffix List's "private suffix" of a name
  (publicsuffixlist ships the list; nothing is downloaded at run time).
- Alignment (3.1): strict is the same name; relaxed is the same organizational domain. DKIM
  aligns with a passing signature's d=, SPF with the MAIL FROM domain when SPF passed (the
  HELO name for the null sender, as RFC 7489 3.1.2 and 7208 2.4).
- The policy (6.3, 6.6.4): ``sp=`` for a subdomain whose own record was not found (``p=``
  otherwise); a message not selected by ``pct=`` gets the next milder policy (reject ->
  quarantine -> none). ``random`` (0 <= x < 1) is injected so that tests choose.

The record is parsed by the ``dmarc`` package (its ``Policy.parse_record``); alignment and
policy are done here because its ``get_result`` aligns by name prefix, not by organizational
domain (``d=com`` would align with ``example.com``), and ignores ``pct=``.
"""

from __future__ import annotations

import contextlib
import email.utils
import random as _random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dmarc as pydmarc
from publicsuffixlist import PublicSuffixList
from twisted.internet import defer

from mailsuite.mta.dnsquery import DNSQuery, TemporaryDNSError

_psl: PublicSuffixList | None = None
_VERSION = re.compile(rb"^v[ \t]*=[ \t]*DMARC1[ \t]*$")
_RUA = re.compile(r"(?:^|;)\s*rua\s*=\s*mailto:[^\s;@]+@[^\s;]+", re.IGNORECASE)
_FROM_FIELD = re.compile(r"^From[ \t]*:(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_AT_DOMAIN = re.compile(r"@([^\s<>@,;:\"()\[\]]+)")
_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9])?)+")
#: at most this many author domains of one message are evaluated (each costs DNS queries)
MAX_AUTHOR_DOMAINS = 5


def organizational_domain(name: str) -> str:
    """RFC 7489 3.2: the registered domain of ``name`` under the Public Suffix List (a public
    suffix itself is its own organizational domain)."""
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()  # the list the package ships (no download)
    name = name.lower().rstrip(".")
    return _psl.privatesuffix(name) or name  # type: ignore[no-any-return]


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment of ``a`` and ``b`` (``s`` strict, ``r`` relaxed)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def from_domains(data: bytes) -> list[str]:
    """The domains of the addresses of the From: fields of ``data`` (header only). A field
    that does not parse as addresses still names its domains (every ``@domain`` in it): a
    malformed From: (``ceo@bank.example; x``) that a mail reader shows must not escape DMARC."""
    end = data.find(b"\n\n")
    head = data[:len(data) if end < 0 else end + 1].decode("utf-8", "replace")
    fields = [re.sub(r"\r?\n[ \t]", " ", v) for v in _FROM_FIELD.findall(head)]
    found = [address.rpartition("@")[2] for _, address in email.utils.getaddresses(fields)
             if "@" in address]
    if not any(found) and fields:
        found = _AT_DOMAIN.findall(" ".join(fields))
    domains = []
    for d in found:
        d = d.strip().rstrip(".>").lower()
        with contextlib.suppress(UnicodeError):
            d = d.encode("idna").decode("ascii") if not d.isascii() else d
        if _DOMAIN.fullmatch(d):
            domains.append(d)
    return list(dict.fromkeys(domains))[:MAX_AUTHOR_DOMAINS]


@dataclass(frozen=True)
class Policy:
    """A parsed record: where it was found (``domain``), p=, sp=, adkim=, aspf=, pct=."""

    domain: str
    p: str
    sp: str
    adkim: str
    aspf: str
    pct: int


def parse_record(text: str, domain: str) -> Policy:
    """A record's policy; ValueError when it does not parse (RFC 7489 6.3). A record without
    a valid ``p=`` but with a ``rua=`` URI counts as ``p=none`` (6.6.3 step 6)."""
    try:
        parsed = pydmarc.Policy("DMARC1", domain)
        parsed.parse_record(text, strict=True)
    except pydmarc.Error as e:
        if _RUA.search(text):
            return Policy(domain, "none", "none", "r", "r", 100)
        raise ValueError(str(e) or "bad record") from None
    if not 0 <= parsed.pct <= 100:
        raise ValueError(f"pct={parsed.pct} out of 0-100")
    p = parsed.p.value
    sp = parsed.sp.value or p
    return Policy(domain, p, sp, parsed.adkim.value, parsed.aspf.value, parsed.pct)


@dataclass(frozen=True)
class DMARCResult:
    """``result`` (pass fail none temperror permerror) for ``domain`` (the From: domain),
    ``policy`` the published one that applies (p= or sp=; '' without a record) and
    ``disposition`` what we should do (none quarantine reject) after ``pct=``."""

    result: str
    domain: str
    policy: str = ""
    disposition: str = "none"
    reason: str = ""


#: which of several author domains' results the message gets (RFC 7489 6.6.1: the strictest)
_RANK = {("fail", "reject"): 6, ("fail", "quarantine"): 5, ("fail", "none"): 4,
         ("temperror", "none"): 3, ("permerror", "none"): 2, ("pass", "none"): 1}


def strictest(results: list[DMARCResult]) -> DMARCResult:
    """The result that decides for a message with several author domains."""
    return max(results, key=lambda r: _RANK.get((r.result, r.disposition), 0))


class DMARCCheck:
    """Policy discovery through ``query`` and evaluation; ``random`` for ``pct=``."""

    def __init__(self, query: DNSQuery, timeout: float = 10.0,
                 random: Callable[[], float] = _random.random) -> None:
        self.query = query
        self.timeout = timeout
        self.random = random

    @defer.inlineCallbacks
    def discover(self, domain: str) -> Any:
        """Deferred (Policy | None): the record of ``domain`` or of its organizational domain;
        errbacks TemporaryDNSError, or ValueError for a bad record."""
        org = organizational_domain(domain)
        for place in dict.fromkeys([domain, org]):
            records = yield self.query.txt(f"_dmarc.{place}", self.timeout)
            found = [r.decode("utf-8", "replace") for r in records
                     if _VERSION.match(r.split(b";")[0].strip())]
            if len(found) > 1:
                return None  # 6.6.3: more than one record: no DMARC
            if found:
                return parse_record(found[0], place)
        return None

    @defer.inlineCallbacks
    def evaluate(self, domain: str, dkim_passed: list[str], spf_domain: str | None) -> Any:
        """Deferred DMARCResult for From: ``domain``, given the d= of the DKIM signatures that
        passed and the SPF domain (MAIL FROM, or HELO for <>) when SPF passed."""
        try:
            policy = yield self.discover(domain)
        except TemporaryDNSError as e:
            return DMARCResult("temperror", domain, reason=f"DNS: {e}")
        except ValueError as e:
            return DMARCResult("permerror", domain, reason=str(e))
        if policy is None:
            return DMARCResult("none", domain)
        applies = policy.p if policy.domain == domain else policy.sp
        if any(aligned(domain, d, policy.adkim) for d in dkim_passed) or (
                spf_domain is not None and aligned(domain, spf_domain, policy.aspf)):
            return DMARCResult("pass", domain, applies)
        disposition = applies
        if policy.pct < 100 and self.random() * 100 >= policy.pct:
            disposition = {"reject": "quarantine", "quarantine": "none"}.get(applies, "none")
        return DMARCResult("fail", domain, applies, disposition,
                           reason="" if disposition == applies else f"pct={policy.pct}")
