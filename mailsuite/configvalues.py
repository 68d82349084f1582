"""The value converters of ``mail.ini`` (mailsuite.config's key tables name one per key).

Each takes the text of a value (already ``$``-expanded) and returns the value, or raises
ValueError with a message for the user (:class:`Problems` for several bad items of one list,
each its own error line). Postfix list syntax, domains, networks, interfaces, sizes, times,
paths, ports, and Dovecot's ``mail_location`` (``split_location`` / ``expand_location``, which
mailsuite.config's MailboxConfig uses to find an account's mbox files).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable
from typing import TypeVar

from mailsuite.accounts import Account
from mailsuite.net import Network


def _words(value: str) -> list[str]:
    """Postfix list syntax: items separated by commas and/or whitespace."""
    return [word for word in re.split(r"[\s,]+", value) if word]


class Problems(ValueError):
    """Several bad items of one list value: each becomes its own error line."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


T = TypeVar("T")


def _each(convert: Callable[[str], T], words: list[str]) -> list[T]:
    """``convert`` applied to every word; every bad word is reported, not only the first."""
    out: list[T] = []
    problems: list[str] = []
    for word in words:
        try:
            out.append(convert(word))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise Problems(problems)
    return out


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def parse_domain(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{value.strip()!r} is not a valid domain name")
    return name


def parse_domains(value: str) -> list[str]:
    return list(dict.fromkeys(_each(parse_domain, _words(value))))


def _unbracket(word: str) -> str:
    """``[::1]/128`` -> ``::1/128`` (Postfix writes IPv6 in brackets, Dovecot does not)."""
    return re.sub(r"^\[([^\]]*)\]", r"\1", word)


def _network(word: str) -> Network:
    text = _unbracket(word)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{word!r} is not an IP network (like 127.0.0.0/8 or [::1]/128)"
            ) from None
        raise ValueError(f"{word!r} has host bits set; did you mean {loose}?") from None


def parse_networks(value: str) -> list[Network]:
    return _each(_network, _words(value))


_INTERFACES_HELP = "expected all, loopback-only, or a list of IP addresses or host names"


def _interface(word: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name, which tap.py resolves
    at start as Postfix does (``localhost``: its addresses in /etc/hosts)."""
    text = _unbracket(word)
    if _is_ip(text):
        return str(ipaddress.ip_address(text))
    try:
        name = parse_domain(text)
        if name.rpartition(".")[2].isdigit():  # 300.1.1.1: a bad address, not a name
            raise ValueError(name)
        return name
    except ValueError:
        raise ValueError(f"{word!r} is not an IP address or a host name") from None


def parse_interfaces(value: str) -> list[str]:
    words = [word.lower() for word in _words(value)]
    if words in (["all"], ["loopback-only"]):
        return words
    if not words or {"all", "loopback-only"} & set(words):
        raise ValueError(_INTERFACES_HELP)
    try:
        return list(dict.fromkeys(_each(_interface, words)))
    except Problems as e:
        raise Problems([f"{m}; {_INTERFACES_HELP}" for m in e.messages]) from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port_number(text: str, lowest: int = 0) -> int:
    if not text.isdigit() or not lowest <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from {lowest} to 65535")
    return int(text)


def parse_relayhost(value: str) -> str:
    """Postfix's ``[host]:port``, ``host:port``, ``[host]`` or ``host``; empty = direct MX."""
    text = value.strip()
    match = re.fullmatch(r"(?:\[(?:ipv6:)?([^\]]+)\]|([^\[\]:\s]+))(?::([^:]*))?", text)
    if text and not match:
        raise ValueError(f"{text!r} is not [host]:port")
    if match:
        host = match.group(1) or match.group(2)
        if not _is_ip(host):
            parse_domain(host)
        if match.group(3) is not None:
            _port_number(match.group(3), lowest=1)
    return text


TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "verify", "secure")


def parse_tls_level(value: str) -> str:
    """Postfix smtp_tls_security_level (mailsuite/mta/tlspolicy.py has the meanings)."""
    text = value.strip().lower()
    if text not in TLS_LEVELS:
        raise ValueError(f"{value.strip()!r} is not one of {', '.join(TLS_LEVELS)}")
    return text


def parse_cert_match(value: str) -> tuple[str, ...]:
    """smtp_tls_verify_cert_match / smtp_tls_secure_cert_match: ``hostname``, ``nexthop``,
    ``dot-nexthop``, names and ``.domain`` patterns, separated by commas or spaces."""
    words = tuple(w.lower() for w in re.split(r"[\s,:]+", value.strip()) if w)
    if not words:
        raise ValueError("names no match strategy (hostname, nexthop, dot-nexthop or a name)")
    for word in words:
        if word not in ("hostname", "nexthop", "dot-nexthop"):
            parse_domain(word[1:] if word.startswith(".") else word)
    return words


def parse_optional_path(value: str) -> str:
    return parse_path(value) if value.strip() else ""


def parse_smtp_port(value: str) -> int:
    return _port_number(value.strip(), lowest=1)


def parse_dns_resolver(value: str) -> str:
    """``IP:port`` of a DNS server (IPv6 in brackets); empty = /etc/resolv.conf."""
    text = value.strip()
    match = re.fullmatch(r"(?:\[([^\]]+)\]|([^\[\]:\s]+)):(\S+)", text)
    if text and not (match and _is_ip(match.group(1) or match.group(2))):
        raise ValueError(f"{text!r} is not IP:port (like 127.0.0.1:53 or [::1]:53)")
    if match:
        _port_number(match.group(3), lowest=1)
    return text


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: str) -> int:
    """Bytes; a ``k``, ``M`` or ``G`` suffix (as Dovecot sizes) multiplies by 1024^n."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]?)", value.strip())
    if not match:
        raise ValueError(f"{value.strip()!r} is not a size in bytes (like 10240000 or 10M)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_line_length(value: str) -> int:
    length = parse_size(value)
    if length < 1024:
        raise ValueError(f"{value.strip()!r} is too small: at least 1k")
    return length


def parse_time_days(value: str) -> float:
    """Postfix time: a number with unit s, m, h, d or w; a bare number counts days."""
    match = re.fullmatch(r"(\d+)([smhdw]?)", value.strip())
    if not match:
        raise ValueError(
            f"{value.strip()!r} is not a time (a number with unit s, m, h, d or w, like 5d)"
        )
    return float(int(match.group(1)) * _TIME_UNITS[match.group(2) or "d"])


_BOOLEANS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def parse_bool(value: str) -> bool:
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{value.strip()!r} is not yes or no") from None


def parse_user_name(value: str) -> str:
    """A Unix user name (that it exists is checked at start), or empty."""
    if value and not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", value, re.IGNORECASE):
        raise ValueError(f"not a user name: {value}")
    return value


def parse_uint(value: str) -> int:
    if not value.strip().isdigit():
        raise ValueError(f"{value.strip()!r} is not a whole number")
    return int(value.strip())


def parse_positive(value: str) -> int:
    """A whole number of at least 1 (a limit that cannot be turned off)."""
    number = parse_uint(value)
    if number < 1:
        raise ValueError(f"{value.strip()!r} is not at least 1")
    return number


def parse_positive_seconds(value: str) -> float:
    seconds = parse_seconds(value)
    if seconds <= 0:
        raise ValueError(f"{value.strip()!r} is not a time of at least 1s")
    return seconds


def parse_command_length(value: str) -> int:
    """line_length_limit: bytes of an SMTP command line, at least 512 (RFC 5321 4.5.3.1.4)."""
    length = parse_size(value)
    if length < 512:
        raise ValueError(f"{value.strip()!r} is too small: at least 512 (RFC 5321)")
    return length


def parse_path(value: str) -> str:
    text = value.strip()
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path")
    return text


def parse_pem_path(value: str) -> str:
    """A path; Dovecot's ``ssl_cert = </etc/...`` spelling is accepted too."""
    return parse_path(value.strip().removeprefix("<"))


_ALIAS_MAP_TYPES = ("hash", "lmdb", "texthash")


def _alias_map(word: str) -> str:
    kind, colon, path = word.partition(":")
    if not colon:
        path = word
    elif kind not in _ALIAS_MAP_TYPES:
        raise ValueError(
            f"{word!r}: map type {kind}: is not supported (use a file path, hash:, lmdb:"
            " or texthash:)"
        )
    return parse_path(path)


def parse_alias_maps(value: str) -> list[str]:
    """``/etc/aliases`` or ``hash:/etc/aliases``: the file path; the map type is dropped."""
    return _each(_alias_map, _words(value))


def parse_port(value: str) -> int | None:
    text = value.strip().lower()
    if text in ("", "no"):
        return None
    try:
        return _port_number(text)
    except ValueError as e:
        raise ValueError(f"{e}; write no or leave it empty to turn the service off") from None


def parse_listen_address(value: str) -> tuple[str, int] | None:
    """``ADDRESS:PORT`` (``[::1]:PORT`` for IPv6), or a port alone (on 127.0.0.1: a
    listener that is not for mail clients stays off the network unless an address is
    given); ``no`` or empty: off."""
    text = value.strip()
    if text.lower() in ("", "no"):
        return None
    if text.isdigit():
        return "127.0.0.1", _port_number(text)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\[\]:\s]+):(\d+)", text)
    if match is None:
        raise ValueError(f"{text!r} is not ADDRESS:PORT ([::1]:PORT for IPv6), a port or no")
    address = match.group(1) or match.group(3)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address") from None
    return address, _port_number(match.group(2) or match.group(4), lowest=1)


def parse_port_or_socket(value: str) -> int | str | None:
    """LMTP may also listen on a unix socket, given by its absolute path."""
    text = value.strip()
    return text if text.startswith("/") else parse_port(text)


def _choice(allowed: tuple[str, ...], refused: dict[str, str]) -> Callable[[str], str]:
    """One of ``allowed`` (case-insensitive); values in ``refused`` are known but not usable yet."""

    def convert(value: str) -> str:
        text = value.strip().lower()
        if text not in allowed:
            raise ValueError(f"{value.strip()!r} is not one of: {', '.join(allowed)}")
        if text in refused:
            raise ValueError(refused[text])
        return text

    return convert


parse_passdb = _choice(("shadow", "pam"), {})
parse_greet_action = _choice(("ignore", "enforce", "drop"), {})


def parse_access_list(value: str) -> list[str]:
    """postscreen_access_list: ``permit_mynetworks`` or nothing (Postfix's CIDR tables are not
    supported)."""
    words = _words(value)
    for word in words:
        if word != "permit_mynetworks":
            raise ValueError(f"{word!r} is not supported (only permit_mynetworks, or empty)")
    return words


def parse_seconds(value: str) -> float:
    """Dovecot time: a number with unit s, m, h or d (also secs, mins, hours, days); a bare
    number counts seconds."""
    match = re.fullmatch(r"(\d+)\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)?",
                         value.strip().lower())
    if not match:
        raise ValueError(f"{value.strip()!r} is not a time (a number with unit s, m, h or d,"
                         " like 15m)")
    return float(int(match.group(1)) * _TIME_UNITS[(match.group(2) or "s")[0]])


def parse_timeout(value: str) -> float:
    """A time limit (``parse_seconds``) that is more than zero."""
    seconds = parse_seconds(value)
    if seconds <= 0:
        raise ValueError(f"{value.strip()!r} is not a time limit: at least 1s")
    return seconds


def parse_cache_size(value: str) -> int:
    """auth_cache_size: bytes as ``parse_size``; 0 turns the cache off, else room for an entry."""
    size = parse_size(value)
    if 0 < size < 1024:
        raise ValueError(f"{value.strip()!r} is too small to hold an entry (at least 1k;"
                         " 0 turns the cache off)")
    return size


def parse_pam_service(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ValueError(f"{text!r} is not a PAM service name (a file name in /etc/pam.d)")
    return text
parse_ssl = _choice(("no", "yes", "required"), {})


# ---------------------------------------------------------------------------------------------
# mail_location: Dovecot's "mbox:ROOT[:INBOX=PATH]" with %u, %n, %d, %h and a leading ~.

_LOCATION_HELP = "like mbox:~/mail:INBOX=/var/mail/%u"
_PROBE = Account("probe", 1000, 1000, "/home/probe")


def split_location(text: str) -> tuple[str, str]:
    """The (folder root, INBOX) templates of a mail_location; ValueError if unusable."""
    kind, colon, rest = text.strip().partition(":")
    if not colon:
        raise ValueError(f"{text.strip()!r} is not FORMAT:ROOT, {_LOCATION_HELP}")
    if kind != "mbox":
        raise ValueError(f"mailbox format {kind!r} is not supported, only mbox: ({_LOCATION_HELP})")
    root, *params = rest.split(":")
    if not root:
        raise ValueError(f"mbox: needs a folder root directory, {_LOCATION_HELP}")
    inbox = posixpath.join(root, "inbox")  # Dovecot's default when INBOX= is not given
    for param in params:
        name, _, path = param.partition("=")
        if name != "INBOX" or not path:
            raise ValueError(f"{param!r}: only INBOX=PATH is supported after the root")
        inbox = path
    for template in (root, inbox):
        if not expand_location(template, _PROBE).startswith("/"):
            raise ValueError(f"{template!r} must start with /, ~ or %h")
    return root, inbox


def expand_location(template: str, account: Account) -> str:
    name = account.name
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"unsafe account name {name!r} in a mailbox path")
    values = {"u": name, "n": name.partition("@")[0], "d": name.partition("@")[2],
              "h": account.home, "%": "%"}

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "~":
            return account.home
        if match.group(1) not in values:
            raise ValueError(f"unknown variable %{match.group(1)} (known: %u %n %d %h %%)")
        return values[match.group(1)]

    return posixpath.normpath(re.sub(r"^~(?=/|$)|%(.?)", substitute, template))


def parse_mail_location(value: str) -> str:
    split_location(value)
    return value.strip()


def parse_folder_name(value: str) -> str:
    """A special-use folder name ('/' separates levels); empty: no such folder."""
    from mailsuite.store import folders
    from mailsuite.store.interfaces import InvalidMailboxName

    value = value.strip()
    if not value:
        return ""
    try:
        return next(iter(folders.check_specials({value: ""})))
    except InvalidMailboxName as e:
        raise ValueError(f"not a usable folder name: {e}") from None


def parse_content_tables(value: str) -> list[tuple[str, str]]:
    """``regexp:/path, pcre:/path ...`` (header_checks, body_checks...): (type, path) pairs."""
    def table(word: str) -> tuple[str, str]:
        kind, colon, path = word.partition(":")
        if not colon or kind not in ("regexp", "pcre"):
            raise ValueError(f"{word!r} is not a regexp:/path or pcre:/path table")
        return kind, parse_path(path)

    return _each(table, [w for w in re.split(r"[\s,]+", value) if w])


def parse_bcc_address(value: str) -> str:
    """``always_bcc``: empty, or one mail address (Postfix takes one)."""
    text = value.strip().removeprefix("<").removesuffix(">")
    if text and not re.fullmatch(r"[^\s<>()\[\],;:\"@]+@[^\s<>()\[\],;:\"@]+", text):
        raise ValueError(f"{value.strip()!r} is not one mail address (user@domain)")
    return text
