"""The ``Authentication-Results:`` header (RFC 8601) of the inbound checks, and the removal of
the ones that claim our authserv-id.

The header is written by the ``authres`` package (its result classes quote and order the
properties as RFC 8601 says); one line, folded by nothing (the store keeps it as given).
RFC 8601 5: a receiver MUST remove (or rename) the Authentication-Results fields that claim
its own authserv-id before it adds its own, so that a sender cannot hand us a forged "pass";
fields of other authserv-ids are left as they are. Their authserv-id is read by ``authres``;
one it cannot parse is read as its first word (a malformed field claiming our id goes too).
"""

from __future__ import annotations

import re

import authres
import authres.arc
import authres.dkim_b
import authres.dmarc

from mailsuite.filter.dkimcheck import ARCResult, DKIMResult
from mailsuite.filter.dmarc import DMARCResult
from mailsuite.filter.spfcheck import SPFResult

NAME = "Authentication-Results"
_CONTEXT = authres.FeatureContext(authres.dkim_b, authres.dmarc, authres.arc)
_FIELD = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIRST_WORD = re.compile(r"^\s*(?:\([^)]*\)\s*)*\"?([^\s;\"(]+)")


def header_value(authserv_id: str, spf_mailfrom: SPFResult | None, spf_helo: SPFResult | None,
                 dkim: list[DKIMResult], dmarc: DMARCResult | None,
                 arc: ARCResult | None) -> str:
    """The field's value: ``authserv-id; spf=...; dkim=...; dmarc=...; arc=...``."""
    results: list[object] = []
    if spf_mailfrom is not None:
        results.append(authres.SPFAuthenticationResult(
            result=spf_mailfrom.result, smtp_mailfrom=spf_mailfrom.identity))
    if spf_helo is not None:
        results.append(authres.SPFAuthenticationResult(
            result=spf_helo.result, smtp_helo=spf_helo.identity.partition("@")[2]))
    if not dkim:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    for d in dkim:
        r = authres.dkim_b.DKIMAuthenticationResult(
            result=d.result, result_comment=_comment(d.reason), header_d=d.domain or None,
            header_b=d.b or None)
        if d.selector:  # the header.b class of authres takes no header.s: set after
            r.header_s = d.selector
        results.append(r)
    if dmarc is not None:
        comment = f"p={dmarc.policy} dis={dmarc.disposition}" if dmarc.policy else None
        if dmarc.reason:
            comment = f"{comment}; {dmarc.reason}" if comment else dmarc.reason
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, result_comment=_comment(comment), header_from=dmarc.domain,
            policy=dmarc.policy or None))
    if arc is not None:
        results.append(authres.arc.ARCAuthenticationResult(
            result=arc.result, result_comment=_comment(arc.reason)))
    value = _CONTEXT.header(authserv_id=authserv_id, results=results).header_value()
    return _CONTROL.sub(" ", value)  # a line end in a sender's value must not end our field


def _comment(text: str | None) -> str | None:
    """A reason as an RFC 5322 comment's text: its parentheses and backslashes quoted (a
    reason may carry a signature's tag values, the sender's: an unbalanced "(" would make
    the rest of our field a comment to the parsers after us)."""
    if not text:
        return None
    return re.sub(r"([()\\])", r"\\\1", text)


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims ('' if none), lower case."""
    unfolded = re.sub(r"\r?\n[ \t]", " ", value).strip()
    try:
        return str(_CONTEXT.parse_value(unfolded).authserv_id or "").lower()
    except Exception:  # authres raises its own and others on bad input
        m = _FIRST_WORD.match(unfolded)
        return m.group(1).lower() if m else ""


def remove_ours(data: bytes, authserv_id: str) -> tuple[bytes, int]:
    """``data`` without the Authentication-Results fields claiming ``authserv_id`` (any case;
    folded fields whole), and how many went. The body is not touched."""
    end = data.find(b"\n\n")
    head, rest = (data, b"") if end < 0 else (data[:end + 1], data[end + 1:])
    lines = head.split(b"\n")
    kept: list[bytes] = []
    removed = 0
    i = 0
    ours = authserv_id.lower().rstrip(".")
    while i < len(lines):
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        block = lines[i:j]
        if _FIELD.match(lines[i]):
            value = b"\n".join(block).split(b":", 1)[1].decode("utf-8", "replace")
            if authserv_id_of(value).rstrip(".") == ours:
                removed += 1
                i = j
                continue
        kept.extend(block)
        i = j
    if not removed:
        return data, 0
    return b"\n".join(kept) + rest, removed
