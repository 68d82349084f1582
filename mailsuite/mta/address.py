"""SMTP paths and ESMTP parameters as RFC 5321, 3461 (DSN) and 6531 (SMTPUTF8) write them.

Twisted's ``smtp.Address`` refuses UTF-8 local parts and accepts things Postfix would not, so
the server parses paths here:

- ``<>`` is the null path; ``<@a,@b:user@host>`` source routes are dropped (RFC 5321 C);
- a mailbox is ``local@domain`` with one unquoted ``@``; the local part is a dot-string or a
  quoted string (kept with its quotes); ``user@host@local`` is a syntax error;
- non-ASCII (UTF-8) is allowed only when the client declared ``SMTPUTF8``.

The relay test looks at :func:`has_routing`: a local part that still holds ``@``, ``%`` or ``!``
(``"user@host"@local``, ``user%host@local``, ``user!host@local``) is sender-specified routing,
which mailsuite never performs for untrusted clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[^"\\\r\n]|\\[ -~\u0080-\U0010ffff])*"'
_LABEL = (
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[^\[\]\\\s]+\])"
_MAILBOX = re.compile(rf"({_DOT_STRING}|{_QUOTED})@({_DOMAIN})")
_LOCAL_ONLY = re.compile(rf"({_DOT_STRING}|{_QUOTED})")
_ROUTE = re.compile(rf"@{_DOMAIN}(?:,\s*@{_DOMAIN})*:")


class PathError(ValueError):
    """Not an RFC 5321 path; ``needs_utf8`` when only the missing SMTPUTF8 declaration is wrong."""

    def __init__(self, message: str, needs_utf8: bool = False) -> None:
        super().__init__(message)
        self.needs_utf8 = needs_utf8


def parse_path(raw: bytes, utf8: bool, allow_bare_local: bool = False) -> str:
    """The mailbox of a MAIL/RCPT path (``''`` for ``<>``), routes dropped, quotes kept.

    ``allow_bare_local`` accepts ``<user>`` without a domain (as Postfix does for local
    submission); the caller adds the domain.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PathError("not UTF-8") from None
    if not text.isascii() and not utf8:
        raise PathError("non-ASCII address without SMTPUTF8", needs_utf8=True)
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    elif "<" in text or ">" in text:
        raise PathError("unbalanced angle brackets")
    text = text.strip()
    if text == "":
        return ""
    route = _ROUTE.match(text)
    if route:
        text = text[route.end():]
    if _MAILBOX.fullmatch(text):
        local, _, domain = text.rpartition("@")
        if len(local.encode()) > 64 or len(domain.encode()) > 255:
            raise PathError("address too long")
        return text
    if allow_bare_local and _LOCAL_ONLY.fullmatch(text):
        return text
    raise PathError("bad address syntax")


def split(address: str) -> tuple[str, str]:
    """``local@domain`` -> (local, domain) without touching quotes; no ``@`` -> (address, '')."""
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


def unquote_local(local: str) -> str:
    """``"a b"`` -> ``a b`` (backslash escapes resolved); a dot-string is returned as is."""
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def has_routing(address: str) -> bool:
    """True when the local part (unquoted) asks for further routing: ``@``, ``%`` or ``!``."""
    local = unquote_local(split(address)[0])
    return any(c in local for c in "@%!")


# --- ESMTP parameters ----------------------------------------------------------------------------

_XTEXT = re.compile(rb"\+([0-9A-F]{2})")


def xtext_decode(value: bytes) -> str:
    """RFC 3461 xtext: ``+2B`` -> ``+``; raises ValueError for bad syntax."""
    if any(b < 33 or b == 61 or b == 127 for b in value):
        raise ValueError("bad xtext")
    if re.search(rb"\+(?![0-9A-F]{2})", value):
        raise ValueError("bad xtext")
    return _XTEXT.sub(lambda m: bytes([int(m.group(1), 16)]), value).decode("utf-8", "replace")


def xtext_encode(value: str) -> str:
    """The inverse of :func:`xtext_decode` (non-ASCII as UTF-8 bytes, each ``+XX``)."""
    out = []
    for b in value.encode("utf-8"):
        out.append(chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}")
    return "".join(out)


NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")


@dataclass
class MailParams:
    """What MAIL FROM said beyond the path."""

    size: int | None = None
    body: str | None = None  # "7BIT" | "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None


@dataclass
class RcptParams:
    """What RCPT TO said beyond the path: DSN NOTIFY (None = default) and ORCPT."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of NOTIFY_WORDS
    orcpt: str | None = None  # "rfc822;user@example" (decoded)


def parse_notify(value: bytes) -> tuple[str, ...]:
    words = tuple(w.decode("ascii", "replace").upper() for w in value.split(b","))
    if words == ("NEVER",):
        return words
    if not words or any(w not in NOTIFY_WORDS for w in words) or len(set(words)) != len(words):
        raise ValueError("bad NOTIFY")
    return words


def parse_orcpt(value: bytes) -> str:
    kind, sep, rest = value.partition(b";")
    if not sep or not kind or not rest or not re.fullmatch(rb"[A-Za-z0-9-]+", kind):
        raise ValueError("bad ORCPT")
    return kind.decode("ascii").lower() + ";" + xtext_decode(rest)
