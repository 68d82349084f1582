"""Postfix's access(5) actions and access tables, for the SMTP restrictions (smtp/restrictions.py).

An action is what a ``check_*_access`` table entry or a policy service (``action=...``) says:
``OK`` (or any number that is not a 4NN/5NN reply), ``REJECT [text]``, ``DEFER [text]``,
``DEFER_IF_REJECT [text]``, ``DEFER_IF_PERMIT [text]``, ``4NN text``, ``5NN text``, ``DUNNO``,
``PREPEND header: value``, ``WARN text``, ``INFO text``; ``permit``, ``reject``, ``defer``
and ``dunno`` as restriction names too. Case does not matter. ``HOLD``, ``DISCARD``,
``FILTER``, ``REDIRECT`` and ``BCC`` are not supported here: they are logged and ignored
(``DUNNO``). A text that starts with an enhanced status code (``4.2.0 Greylisted``) gives the
reply its DSN, as Postfix's dsn_split.

An access table is the text source of a Postfix ``hash:`` map (``key value`` a line, ``#``
comments, a line that starts with white space continues the one before), read once at start
by the network process (mail_owner must be able to read it). ``hash:``, ``texthash:`` and
``btree:`` name the text file itself (no ``postmap``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailsuite.net import parse_ip

_DSN = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")
_REPLY = re.compile(r"^([45])\d\d$")
UNSUPPORTED = ("HOLD", "DISCARD", "FILTER", "REDIRECT", "BCC")
TABLE_TYPES = ("hash", "texthash", "btree", "lmdb", "cdb")


@dataclass(frozen=True)
class Action:
    """One decision: ``kind`` is DUNNO, PERMIT, REJECT (``code`` 4xx is a deferral),
    DEFER_IF_PERMIT, DEFER_IF_REJECT, PREPEND (``text`` the header), WARN, INFO, or UNSUPPORTED
    (``text`` the action as given)."""

    kind: str
    code: int = 0
    dsn: str = ""
    text: str = ""


DUNNO = Action("DUNNO")
PERMIT = Action("PERMIT")


def split_dsn(text: str, default: str) -> tuple[str, str]:
    """(DSN, rest) of a reply text that may start with one (Postfix's dsn_split); the DSN's
    class is the reply's: ``default``'s first digit."""
    m = _DSN.match(text)
    if not m:
        return default, text
    return default[0] + m.group(1)[1:], text[m.end():]


def parse_action(value: str) -> Action:
    """An access(5) action; ValueError if it is none."""
    word, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    upper = word.upper()
    if upper in ("OK", "PERMIT") or (word.isdigit() and not _REPLY.match(word)):
        return PERMIT
    if upper == "DUNNO":
        return DUNNO
    if _REPLY.match(word):
        dsn, text = split_dsn(rest, f"{word[0]}.7.1")
        return Action("REJECT", int(word), dsn, text or "Access denied")
    defaults = {"REJECT": (554, "5.7.1", "Access denied"),
                "DEFER": (450, "4.7.1", "Access denied"),
                "DEFER_IF_PERMIT": (450, "4.7.1", "Service unavailable"),
                "DEFER_IF_REJECT": (450, "4.7.1", "Service unavailable")}
    if upper in defaults:
        code, default, generic = defaults[upper]
        dsn, text = split_dsn(rest, default)
        kind = "REJECT" if upper in ("REJECT", "DEFER") else upper
        return Action(kind, code, dsn, text or generic)
    if upper == "PREPEND":
        if not re.match(r"^[!-9;-~]+:", rest):
            raise ValueError(f"PREPEND needs a header (name: value), not {rest!r}")
        return Action("PREPEND", text=rest)
    if upper in ("WARN", "INFO"):
        return Action(upper, text=rest)
    if upper in UNSUPPORTED:
        return Action("UNSUPPORTED", text=value.strip())
    raise ValueError(f"{value.strip()!r} is not an access(5) action")


def table_path(spec: str) -> str:
    """The file of ``hash:/etc/postfix/access`` (or of a bare path); ValueError otherwise."""
    kind, colon, path = spec.partition(":")
    if not colon:
        kind, path = "hash", spec
    if kind.lower() not in TABLE_TYPES or not path.startswith("/"):
        raise ValueError(f"{spec!r} is not a table (like hash:/etc/mailsuite/access)")
    return path


def read_table(path: str) -> dict[str, Action]:
    """An access table's entries (keys lower case); OSError, or ValueError naming file:line."""
    entries: dict[str, Action] = {}
    lines: list[tuple[int, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            text = line.rstrip("\n")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if text[0] in " \t" and lines:
                lines[-1] = (lines[-1][0], lines[-1][1] + " " + text.strip())
            else:
                lines.append((number, text.strip()))
    for number, text in lines:
        key, _, value = text.partition(" ") if " " in text else text.partition("\t")
        if not value.strip():
            raise ValueError(f"{path}:{number}: no value for key {key!r}")
        try:
            entries[key.lower()] = parse_action(value)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from None
    return entries


def client_keys(ip: str, name: str) -> list[str]:
    """The keys Postfix looks up for a client: its name and parent domains, its address, then
    the address's shorter prefixes (``1.2.3``, ``1.2``, ``1``; IPv6 by ``:`` groups)."""
    keys: list[str] = []
    if name and name != "unknown":
        keys.extend(_domain_keys(name.lower()))
    address = parse_ip(ip)
    text = str(address) if address is not None else ip
    keys.append(text)
    sep = "." if address is not None and address.version == 4 else ":"
    parts = text.split(sep)
    keys.extend(sep.join(parts[:n]) for n in range(len(parts) - 1, 0, -1))
    return [k for k in keys if k]


def address_keys(address: str) -> list[str]:
    """The keys of an envelope address: ``user@domain``, the domain and its parents
    (``domain``, ``.domain``), ``user@``; the null address is ``<>``."""
    if not address:
        return ["<>"]
    address = address.lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return [address, f"{address}@"]
    return [address, *_domain_keys(domain), f"{local}@"]


def _domain_keys(domain: str) -> list[str]:
    labels = domain.rstrip(".").split(".")
    keys = [domain.rstrip(".")]
    for n in range(1, len(labels)):
        parent = ".".join(labels[n:])
        keys.extend([parent, "." + parent])
    return keys


def look_up(table: dict[str, Action], keys: list[str]) -> Action | None:
    for key in keys:
        found = table.get(key)
        if found is not None:
            return found
    return None
