"""MTA-STS (RFC 8461): the records and policies, and what a policy asks of a delivery.

Pure functions, no I/O (discovery, fetching and the cache are mailsuite.mta.mtastsfetch and
mailsuite.mta.mtastscache):

- :func:`parse_txt` reads the ``_mta-sts.DOMAIN`` TXT answer (RFC 8461 3.1): the strings of a
  record are joined, records not starting ``v=STSv1;`` are dropped, and anything but exactly
  one valid record means "no policy";
- :func:`parse_policy` reads ``/.well-known/mta-sts.txt`` (3.2): ``version: STSv1``, ``mode``
  enforce|testing|none, ``max_age`` (at most 31557600), one or more ``mx`` (may be absent in
  mode none); unknown fields are ignored, a repeated field other than ``mx`` counts once (the
  first); a violation is :class:`PolicyError`;
- :meth:`StsPolicy.matches` is 4.1's MX matching: case-insensitive, a ``*.`` pattern matches
  exactly one left-most label (``*.example.com`` matches ``mx.example.com``, not
  ``example.com`` nor ``a.b.example.com``);
- :func:`filter_hosts` applies a policy to the MX list (enforce: the MX hosts that match no
  pattern are not used; what TLS a matching host must give is mailsuite.mta.stsroute's).

No kept library parses these: postfix-mta-sts-resolver is a daemon with its own resolver and
HTTP client (aiohttp, aiodns), not a library for a Twisted reactor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: RFC 8461 3.2: max_age is at most 31557600 (a year)
MAX_AGE_LIMIT = 31557600
#: 3.3: a policy body larger than this is refused (the RFC's suggested 64 KB)
MAX_POLICY_SIZE = 64 * 1024
MODES = ("enforce", "testing", "none")

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_POLICY_EXT_VALUE = re.compile(r"[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class PolicyError(ValueError):
    """A policy file that RFC 8461 3.2 says is invalid: the message says what is wrong."""


@dataclass(frozen=True)
class StsRecord:
    """A valid ``_mta-sts`` TXT record: its ``id`` (and the extension fields, ignored)."""

    id: str
    extensions: dict[str, str] = field(default_factory=dict)


def parse_txt_record(text: str) -> StsRecord | None:
    """One record's text (its strings joined) per 3.1's grammar, else None."""
    if not text.startswith("v=STSv1"):
        return None
    rest = text[len("v=STSv1"):]
    fields = rest.split(";")
    # sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
    if fields[0].strip(" \t") != "" or len(fields) < 2:
        return None
    fields = fields[1:]
    if fields[-1].strip(" \t") == "":
        fields = fields[:-1]  # the optional trailing delimiter
    record_id = None
    extensions: dict[str, str] = {}
    for raw in fields:
        item = raw.strip(" \t")
        name, equals, value = item.partition("=")
        if not equals:
            return None
        if name == "id":
            if not _ID.fullmatch(value) or record_id is not None:
                return None
            record_id = value
        elif _EXT_NAME.fullmatch(name) and _EXT_VALUE.fullmatch(value):
            extensions.setdefault(name, value)
        else:
            return None
    if record_id is None:
        return None
    return StsRecord(record_id, extensions)


def txt_texts(strings_per_record: Sequence[Sequence[bytes | str]]) -> list[str]:
    """The text of each TXT record: its strings joined without spaces (RFC 8461 3.1, RFC 8460
    3 say so)."""
    return ["".join(s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                    for s in strings) for strings in strings_per_record]


def parse_txt(strings_per_record: Sequence[Sequence[bytes | str]]) -> StsRecord | None:
    """The ``_mta-sts`` answer (each record its list of strings): the one valid STSv1 record,
    else None (none, several, or the one is invalid: 3.1 "no available policy")."""
    candidates = [t for t in txt_texts(strings_per_record) if t.startswith("v=STSv1;")]
    if len(candidates) != 1:
        return None
    return parse_txt_record(candidates[0])


def valid_pattern(pattern: str) -> bool:
    """``["*."] Domain`` (RFC 5321 Domain: dot-separated LDH labels)."""
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 1 and all(_LABEL.fullmatch(x) for x in labels)


@dataclass(frozen=True)
class StsPolicy:
    """A parsed policy of ``domain``. ``text`` is the file as fetched (TLS-RPT reports its
    lines as the policy-string)."""

    mode: str
    max_age: int
    mx: tuple[str, ...]
    text: str = ""
    domain: str = ""

    def matches(self, mx_host: str) -> bool:
        """Whether ``mx_host`` matches one of the mx patterns (RFC 8461 4.1)."""
        host = mx_host.rstrip(".").lower()
        if not host:
            return False
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, dot, rest = host.partition(".")
                if dot and first and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    @property
    def lines(self) -> list[str]:
        """The policy-string of a TLS-RPT report: the file's lines, blank ones left out."""
        return [line.rstrip("\r") for line in self.text.split("\n") if line.strip()]


def parse_policy(body: bytes, domain: str = "") -> StsPolicy:
    """The policy in ``body`` (3.2); PolicyError if it is not a valid STSv1 policy."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("the policy is not UTF-8") from None
    found: dict[str, str] = {}
    mx: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r").rstrip(" \t")  # *WSP before the terminator
        if not line:
            continue  # a blank line (the optional trailing terminator and the like)
        name, colon, value = line.partition(":")
        value = value.lstrip(" \t")
        if not colon or not _EXT_NAME.fullmatch(name):
            raise PolicyError(f"line {number} is not 'key: value'")
        if name == "mx":
            pattern = value.lower().rstrip(".")
            if not valid_pattern(pattern):
                raise PolicyError(f"line {number}: {value!r} is not a domain or *.domain")
            mx.append(pattern)
        elif name in ("version", "mode", "max_age"):
            found.setdefault(name, value)  # 3.2: a repeated field: the first one counts
        elif not _POLICY_EXT_VALUE.fullmatch(value):
            raise PolicyError(f"line {number}: bad value of extension field {name!r}")
    return _checked(found, mx, text, domain)


def _checked(found: dict[str, str], mx: list[str], text: str, domain: str) -> StsPolicy:
    if found.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = found.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode {mode!r} is not enforce, testing or none")
    age = found.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", age) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {age!r} is not a number of seconds up to {MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise PolicyError("no mx pattern (required unless mode is none)")
    return StsPolicy(mode, int(age), tuple(dict.fromkeys(mx)), text, domain.lower())


H = TypeVar("H")


def filter_hosts(policy: StsPolicy | None, hosts: Sequence[H]) -> tuple[list[H], list[H]]:
    """(hosts to try, hosts that match no pattern) for the MX list ``hosts`` (objects with a
    ``name``, e.g. mailsuite.mta.dns.MailHost, or plain names). enforce: the non-matching MX
    hosts are not tried (5: "MUST NOT deliver"); testing: all are tried, the non-matching
    ones are reported (TLS-RPT); none or no policy: all, none reported."""
    if policy is None or policy.mode == "none":
        return list(hosts), []
    good = [h for h in hosts if policy.matches(_name(h))]
    bad = [h for h in hosts if not policy.matches(_name(h))]
    if policy.mode == "enforce":
        return good, bad
    return list(hosts), bad


def _name(host: Any) -> str:
    return host if isinstance(host, str) else str(host.name)


# -- mail.ini values of our own policy (mailsuite.mtastsserve) ----------------------------------

def parse_mode(value: str) -> str:
    """``[mail] mta_sts_mode``: none (not served), testing or enforce."""
    text = value.strip().lower()
    if text not in MODES:
        raise ValueError(f"{value.strip()!r} is not none, testing or enforce")
    return text


def parse_mx_patterns(value: str) -> tuple[str, ...]:
    """``[mail] mta_sts_mx``: host names or ``*.domain`` patterns, commas or spaces between."""
    patterns = [w.lower().rstrip(".") for w in re.split(r"[\s,]+", value) if w]
    bad = [p for p in patterns if not valid_pattern(p)]
    if bad:
        raise ValueError(f"not a host name or *.domain: {', '.join(bad)}")
    return tuple(dict.fromkeys(patterns))


def parse_max_age(value: str) -> int:
    """``[mail] mta_sts_max_age``: seconds (units s m h d w as Postfix times), at most a year."""
    match = re.fullmatch(r"(\d+)([smhdw]?)", value.strip())
    if not match:
        raise ValueError(f"{value.strip()!r} is not a time (like 7d or 604800)")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400,
                                     "w": 604800}[match.group(2)]
    if seconds > MAX_AGE_LIMIT:
        raise ValueError(f"{value.strip()!r} is over RFC 8461's limit of {MAX_AGE_LIMIT}s")
    return seconds
