"""DKIM (RFC 6376) of every signature of a message and its ARC chain (RFC 8617), by dkimpy.

dkimpy verifies (``dkim.DKIM(...).verify(idx, dnsfunc=...)``, ``dkim.arc_verify``); its
``dnsfunc`` is our resolver's, through a :class:`mailsuite.mta.dnsquery.FromThread`, so these
functions block and run in a thread of mailsuite.threads.

dkimpy answers a signature with True/False (or an exception for a bad signature header) and
keeps to itself why a key was not usable; the dnsfunc here notes what DNS said, so that each
signature gets the result RFC 8601 2.7.1 names:

==========  =================================================================================
pass        the signature verifies
fail        the body hash or the signature does not match (the message changed, or a forgery)
neutral     the DKIM-Signature field cannot be processed (syntax: a tag missing or bad)
policy      verified, but a key shorter than our minimum (MIN_KEY_BITS, 1024: RFC 8301)
temperror   the key's DNS query timed out or failed (SERVFAIL): try again later
permerror   no key published (NXDOMAIN, no TXT), or a key record that does not parse
==========  =================================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dkim

from mailsuite.mta.dnsquery import FromThread, TemporaryDNSError

#: seconds for each key's DNS query (dkimpy's timeout, given to its dnsfunc)
KEY_TIMEOUT = 10.0
#: shorter RSA keys verify to ``policy`` (dkimpy's minkey; RFC 8301 3.2: at least 1024)
MIN_KEY_BITS = 1024
#: at most this many signatures are verified per message (each one costs a DNS query)
MAX_SIGNATURES = 10

_quiet = logging.getLogger("mailsuite.dkimcheck")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class DKIMResult:
    """One signature's result, with its d=, s=, and the first 8 characters of b= (RFC 6008
    ``header.b``, to tell two signatures of one domain apart) and why, for the comment."""

    result: str
    domain: str = ""
    selector: str = ""
    b: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ARCResult:
    """The chain's validation (pass fail none) and why."""

    result: str
    reason: str = ""
    instances: int = 0


class _KeyLookup:
    """dkimpy's dnsfunc over our resolver; remembers what the last query answered."""

    def __init__(self, lookup: FromThread) -> None:
        self.lookup = lookup
        self.answer: bytes | None = None
        self.temporary: str | None = None

    def __call__(self, name: Any, timeout: float = KEY_TIMEOUT) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        self.answer, self.temporary = None, None
        try:
            records = self.lookup.txt(text, min(float(timeout), KEY_TIMEOUT))
        except TemporaryDNSError as e:
            self.temporary = str(e)
            raise dkim.DnsTimeoutError(str(e)) from None
        self.answer = records[0] if records else None
        return self.answer


def _tags(header: bytes) -> dict[bytes, bytes]:
    try:
        return dkim.util.parse_tag_value(header)  # type: ignore[no-any-return]
    except Exception:  # any syntax error: the tags are unknown
        return {}


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value else ""


def signatures(data: bytes) -> list[bytes]:
    """The values of the DKIM-Signature fields of ``data``, top first."""
    d = dkim.DKIM(data, logger=_quiet)
    return [v for n, v in d.headers if n.lower() == b"dkim-signature"][:MAX_SIGNATURES]


def verify_all(data: bytes, lookup: FromThread) -> list[DKIMResult]:
    """A DKIMResult for each DKIM-Signature of ``data`` (top first; none: ``[]``). Blocking."""
    try:
        sigs = signatures(data)
    except dkim.MessageFormatError:
        return []
    results = []
    for idx, value in enumerate(sigs):
        results.append(_verify_one(data, idx, _tags(value), lookup))
    return results


def _verify_one(data: bytes, idx: int, tags: dict[bytes, bytes], lookup: FromThread) -> DKIMResult:
    domain, selector = _text(tags.get(b"d")), _text(tags.get(b"s"))
    b = "".join(_text(tags.get(b"b")).split())[:8]
    keys = _KeyLookup(lookup)
    d = dkim.DKIM(data, logger=_quiet, timeout=int(KEY_TIMEOUT), minkey=MIN_KEY_BITS)

    def result(what: str, reason: str = "") -> DKIMResult:
        return DKIMResult(what, domain.lower(), selector, b, reason)
    try:
        ok = d.verify(idx, dnsfunc=keys)
    except dkim.KeyFormatError as e:  # raised after the signature checked: a short key
        return result("policy" if "too small" in str(e) else "permerror", str(e))
    except dkim.ValidationError as e:
        if "body hash mismatch" in str(e):
            return result("fail", "body hash did not verify")
        return result("neutral", str(e))
    except dkim.DKIMException as e:
        return result("neutral", str(e))
    except Exception as e:  # a key or signature dkimpy cannot take apart
        return result("permerror", f"{type(e).__name__}: {e}")
    if ok:
        return result("pass")
    if keys.temporary is not None:
        return result("temperror", "key query failed")
    if keys.answer is None:
        return result("permerror", "no key for signature")
    try:
        dkim.evaluate_pk(b"", keys.answer)
    except Exception:  # KeyFormatError and the parsers' own errors
        return result("permerror", "key record does not parse")
    return result("fail", "signature did not verify")


def arc_verify(data: bytes, lookup: FromThread) -> ARCResult:
    """The ARC chain's validation status of ``data`` (RFC 8617 5.2). Blocking."""
    keys = _KeyLookup(lookup)
    try:
        cv, results, reason = dkim.arc_verify(data, logger=_quiet, dnsfunc=keys)
    except Exception as e:  # a broken set dkimpy cannot take apart
        return ARCResult("fail", f"{type(e).__name__}: {e}")
    if cv == dkim.CV_None:
        return ARCResult("none", "", 0)
    what = "pass" if cv == dkim.CV_Pass else "fail"
    return ARCResult(what, "" if what == "pass" else str(reason), len(results))
