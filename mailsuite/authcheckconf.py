"""The values of the inbound authentication checks' keys (``[auth_checks]``, ``[mail]
authserv_id``; mailsuite/filter/authcheck.py), apart from the filter so that the
configuration schema does not import the checks' libraries."""

from __future__ import annotations

import re

#: policyd-spf's HELO_reject / Mail_From_reject values that are implemented: ``fail`` refuses
#: an SPF fail (``-all``), ``softfail`` also a softfail (``~all``), ``false`` never refuses
SPF_REJECT = ("fail", "softfail", "false")


def parse_spf_reject(value: str) -> str:
    """``Fail``, ``Softfail`` or ``False`` (policyd-spf's spelling, any case)."""
    word = value.strip().lower()
    if word not in SPF_REJECT:
        raise ValueError(f"{value.strip()!r} is not one of Fail, Softfail, False")
    return word


def parse_authserv_id(value: str) -> str:
    """RFC 8601 2.2: the authserv-id is a value: here an RFC 2045 token (a host name, usually)."""
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+", value):
        raise ValueError(f"{value!r} is not an authserv-id (a name without spaces or ;)")
    return value.lower()


def parse_arc_key(value: str) -> str:
    """``DOMAIN:SELECTOR:/path/key.pem`` (the key file is read at start) or empty (no ARC
    sealing)."""
    value = value.strip()
    if not value:
        return ""
    domain, _, rest = value.partition(":")
    selector, _, path = rest.partition(":")
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if not re.fullmatch(rf"{label}(?:\.{label})+", domain.rstrip(".")):
        raise ValueError(f"{value!r}: {domain!r} is not a domain (DOMAIN:SELECTOR:/path)")
    if not re.fullmatch(rf"{label}(?:\.{label})*", selector):
        raise ValueError(f"{value!r}: {selector!r} is not a selector (DOMAIN:SELECTOR:/path)")
    if not path.startswith("/"):
        raise ValueError(f"{value!r}: the key file must be an absolute path")
    return f"{domain.rstrip('.').lower()}:{selector}:{path}"
