"""SPF (RFC 7208) of the MAIL FROM and HELO identities, by pyspf, its DNS through our resolver.

pyspf (the ``spf`` module, policyd-spf's library) evaluates the record: mechanisms, macros,
the limits of RFC 7208 4.6.4 (10 DNS-querying terms, 10 MX/PTR names, 2 void look-ups) and
the overall time limit (``querytime``; 4.6.4 says at least 20 s). It has no per-query DNS
hook, only the module function ``spf.DNSLookup(name, qtype, strict, timeout)`` that every
query calls: :func:`_install` replaces it once with one that asks the lookup function of the
calling thread (a :class:`mailsuite.mta.dnsquery.FromThread` while a check runs there), so
pyspf keeps all its logic and none of its own DNS. A thread without a lookup function set
gets a TempError, never a blocking query of its own.

A check blocks (it waits for each answer), so :func:`check` runs in a thread of
mailsuite.threads; its DNS goes back to the reactor thread, which never waits. (The stage
first tries it on the reactor with a lookup that answers from kept answers only and gives up
at the first one missing: authcheck._CachedOnly.)

The overall limit is ours, not pyspf's ``querytime``: that one stops counting once the
budget is spent to exactly 0 s, and then gives each further query its full timeout. Here each
query gets at most what is left of ``querytime`` and none is asked once it is spent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spf

from mailsuite.mta.dnsquery import TemporaryDNSError
from mailsuite.net import parse_ip

#: RFC 7208 4.6.4: "at least 20 seconds" for the whole evaluation
DEFAULT_QUERYTIME = 20.0

_current = threading.local()
_install_lock = threading.Lock()

Lookup = Callable[[str, str, float], list[tuple[str, str, Any]]]


@dataclass(frozen=True)
class SPFResult:
    """One identity's result (pass fail softfail neutral none temperror permerror), the
    identity checked (the MAIL FROM address, or postmaster@HELO) and pyspf's explanation."""

    result: str
    identity: str
    explanation: str = ""


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    """pyspf's DNSLookup: ``[((name, qtype), value), ...]`` from this thread's lookup."""
    lookup: Lookup | None = getattr(_current, "lookup", None)
    if lookup is None:
        raise spf.TempError("DNS: no resolver for this thread")
    left = _current.deadline - _current.clock()
    if left <= 0:
        raise spf.TempError(f"DNS: the SPF time limit of {_current.querytime:g} s is spent")
    try:
        records = lookup(name, qtype, min(float(timeout), left))
    except TemporaryDNSError as e:
        raise spf.TempError(f"DNS {e}") from None
    return [((owner, kind), value) for owner, kind, value in records]


def _install() -> None:
    with _install_lock:
        if spf.DNSLookup is not _lookup:
            spf.DNSLookup = _lookup


def check(lookup: Lookup, ip: str, sender: str, helo: str, receiver: str,
          querytime: float = DEFAULT_QUERYTIME,
          clock: Callable[[], float] = time.monotonic) -> SPFResult:
    """The SPF result for ``sender`` (MAIL FROM; '' = the null sender: postmaster@``helo``,
    RFC 7208 2.4) from ``ip``, its DNS within ``querytime`` seconds of ``clock``; blocking
    (a worker thread)."""
    _install()
    _current.lookup, _current.clock, _current.querytime = lookup, clock, querytime
    _current.deadline = clock() + querytime
    try:
        q = spf.query(i=ip, s=sender, h=helo, receiver=receiver, timeout=querytime)
        result, _, explanation = q.check()
    finally:
        _current.lookup = None
    return SPFResult(result, q.s, explanation)


def check_helo(lookup: Lookup, ip: str, helo: str, receiver: str,
               querytime: float = DEFAULT_QUERYTIME) -> SPFResult | None:
    """The SPF result of the HELO identity (RFC 7208 2.3), None when the HELO name is not a
    domain (an address literal, a single label: nothing to check)."""
    if not helo or helo.startswith("[") or "." not in helo.strip(".") \
            or parse_ip(helo) is not None:
        return None
    return check(lookup, ip, "", helo, receiver, querytime)

