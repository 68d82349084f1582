"""Reading and checking ``mail.ini``, the one configuration file of mailsuite.

The file is INI with the knob names of Postfix's main.cf and Dovecot's dovecot.conf (see the
contract in DESIGN.md and the shipped ``etc/mail.ini``). Syntax:

- ``[section]`` headers, ``key = value`` lines; a line starting with whitespace continues the
  value of the line before it (as in main.cf).
- ``#`` and ``;`` start a comment at the beginning of a line, and also after whitespace inside a
  line (``smtps = no   # until TLS lands``); main.cf has no inline comments, we do.
- ``$name`` and ``${name}`` expand to the value of key ``name`` of ``[mail]`` (recursively, in
  every section); ``$$`` is a literal ``$``.

Every problem (syntax, unknown section or key, bad value, expansion loop) is collected and raised
at once as one :class:`ConfigError`, each line shaped ``FILE: [section] key: message``.
:func:`parse_config` is pure (it asks ``hostname()`` only when ``myhostname`` is not set);
:func:`load_config` reads the file; :func:`config_path` locates it (the same rule for twistd and
every command).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mailsuite import uidlformat
from mailsuite.accounts import Account
from mailsuite.net import Network, default_hostname, in_networks, parse_ip

DEFAULT_CONFIG = "/etc/mailsuite/mail.ini"


class ConfigError(Exception):
    """Everything wrong with one configuration file; ``str()`` gives one error per line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------------------------------------
# Converters: text (already $-expanded) -> value, or ValueError with a message for the user.

def _words(value: str) -> list[str]:
    """Postfix list syntax: items separated by commas and/or whitespace."""
    return [word for word in re.split(r"[\s,]+", value) if word]


class _Problems(ValueError):
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
        raise _Problems(problems)
    return out


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _domain(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{value.strip()!r} is not a valid domain name")
    return name


def _domains(value: str) -> list[str]:
    return list(dict.fromkeys(_each(_domain, _words(value))))


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


def _networks(value: str) -> list[Network]:
    return _each(_network, _words(value))


_INTERFACES_HELP = "expected all, loopback-only, or a list of IP addresses or host names"


def _interface(word: str) -> str:
    """An IP address (IPv6 with or without brackets) or a host name, which tap.py resolves
    at start as Postfix does (``localhost``: its addresses in /etc/hosts)."""
    text = _unbracket(word)
    if _is_ip(text):
        return str(ipaddress.ip_address(text))
    try:
        name = _domain(text)
        if name.rpartition(".")[2].isdigit():  # 300.1.1.1: a bad address, not a name
            raise ValueError(name)
        return name
    except ValueError:
        raise ValueError(f"{word!r} is not an IP address or a host name") from None


def _interfaces(value: str) -> list[str]:
    words = [word.lower() for word in _words(value)]
    if words in (["all"], ["loopback-only"]):
        return words
    if not words or {"all", "loopback-only"} & set(words):
        raise ValueError(_INTERFACES_HELP)
    try:
        return list(dict.fromkeys(_each(_interface, words)))
    except _Problems as e:
        raise _Problems([f"{m}; {_INTERFACES_HELP}" for m in e.messages]) from None


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


def _relayhost(value: str) -> str:
    """Postfix's ``[host]:port``, ``host:port``, ``[host]`` or ``host``; empty = direct MX."""
    text = value.strip()
    match = re.fullmatch(r"(?:\[(?:ipv6:)?([^\]]+)\]|([^\[\]:\s]+))(?::([^:]*))?", text)
    if text and not match:
        raise ValueError(f"{text!r} is not [host]:port")
    if match:
        host = match.group(1) or match.group(2)
        if not _is_ip(host):
            _domain(host)
        if match.group(3) is not None:
            _port_number(match.group(3), lowest=1)
    return text


def _tls_level(value: str) -> str:
    """Postfix smtp_tls_security_level: none, may (opportunistic STARTTLS) or encrypt."""
    text = value.strip().lower()
    if text not in ("none", "may", "encrypt"):
        raise ValueError(f"{value.strip()!r} is not none, may or encrypt")
    return text


def _optional_path(value: str) -> str:
    return _path(value) if value.strip() else ""


def _smtp_port(value: str) -> int:
    return _port_number(value.strip(), lowest=1)


def _dns_resolver(value: str) -> str:
    """``IP:port`` of a DNS server (IPv6 in brackets); empty = /etc/resolv.conf."""
    text = value.strip()
    match = re.fullmatch(r"(?:\[([^\]]+)\]|([^\[\]:\s]+)):(\S+)", text)
    if text and not (match and _is_ip(match.group(1) or match.group(2))):
        raise ValueError(f"{text!r} is not IP:port (like 127.0.0.1:53 or [::1]:53)")
    if match:
        _port_number(match.group(3), lowest=1)
    return text


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _size(value: str) -> int:
    """Bytes; a ``k``, ``M`` or ``G`` suffix (as Dovecot sizes) multiplies by 1024^n."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]?)", value.strip())
    if not match:
        raise ValueError(f"{value.strip()!r} is not a size in bytes (like 10240000 or 10M)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _line_length(value: str) -> int:
    length = _size(value)
    if length < 1024:
        raise ValueError(f"{value.strip()!r} is too small: at least 1k")
    return length


def _time_days(value: str) -> float:
    """Postfix time: a number with unit s, m, h, d or w; a bare number counts days."""
    match = re.fullmatch(r"(\d+)([smhdw]?)", value.strip())
    if not match:
        raise ValueError(
            f"{value.strip()!r} is not a time (a number with unit s, m, h, d or w, like 5d)"
        )
    return float(int(match.group(1)) * _TIME_UNITS[match.group(2) or "d"])


_BOOLEANS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def _bool(value: str) -> bool:
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{value.strip()!r} is not yes or no") from None


def _uint(value: str) -> int:
    if not value.strip().isdigit():
        raise ValueError(f"{value.strip()!r} is not a whole number")
    return int(value.strip())


def _path(value: str) -> str:
    text = value.strip()
    if not text.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path")
    return text


def _pem_path(value: str) -> str:
    """A path; Dovecot's ``ssl_cert = </etc/...`` spelling is accepted too."""
    return _path(value.strip().removeprefix("<"))


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
    return _path(path)


def _alias_maps(value: str) -> list[str]:
    """``/etc/aliases`` or ``hash:/etc/aliases``: the file path; the map type is dropped."""
    return _each(_alias_map, _words(value))


def _port(value: str) -> int | None:
    text = value.strip().lower()
    if text in ("", "no"):
        return None
    try:
        return _port_number(text)
    except ValueError as e:
        raise ValueError(f"{e}; write no or leave it empty to turn the service off") from None


def _port_or_socket(value: str) -> int | str | None:
    """LMTP may also listen on a unix socket, given by its absolute path."""
    text = value.strip()
    return text if text.startswith("/") else _port(text)


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


_passdb = _choice(("shadow", "pam"), {})


def _seconds(value: str) -> float:
    """Dovecot time: a number with unit s, m, h or d (also secs, mins, hours, days); a bare
    number counts seconds."""
    match = re.fullmatch(r"(\d+)\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)?",
                         value.strip().lower())
    if not match:
        raise ValueError(f"{value.strip()!r} is not a time (a number with unit s, m, h or d,"
                         " like 15m)")
    return float(int(match.group(1)) * _TIME_UNITS[(match.group(2) or "s")[0]])


def _cache_size(value: str) -> int:
    """auth_cache_size: bytes as ``_size``; 0 turns the cache off, else room for an entry."""
    size = _size(value)
    if 0 < size < 1024:
        raise ValueError(f"{value.strip()!r} is too small to hold an entry (at least 1k;"
                         " 0 turns the cache off)")
    return size


def _pam_service(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ValueError(f"{text!r} is not a PAM service name (a file name in /etc/pam.d)")
    return text
_ssl = _choice(("no", "yes", "required"), {})


# ---------------------------------------------------------------------------------------------
# mail_location: Dovecot's "mbox:ROOT[:INBOX=PATH]" with %u, %n, %d, %h and a leading ~.

_LOCATION_HELP = "like mbox:~/mail:INBOX=/var/mail/%u"
_PROBE = Account("probe", 1000, 1000, "/home/probe")


def _split_location(text: str) -> tuple[str, str]:
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
        if not _expand_location(template, _PROBE).startswith("/"):
            raise ValueError(f"{template!r} must start with /, ~ or %h")
    return root, inbox


def _expand_location(template: str, account: Account) -> str:
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


def _mail_location(value: str) -> str:
    _split_location(value)
    return value.strip()


def _folder_name(value: str) -> str:
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


# ---------------------------------------------------------------------------------------------
# The parsed configuration.

@dataclass(frozen=True)
class MailConfig:
    """``[mail]``: Postfix main.cf knobs."""

    myhostname: str
    mydomain: str
    myorigin: str
    mydestination: list[str]
    inet_interfaces: list[str]
    mynetworks: list[Network]
    relay_domains: list[str]
    relayhost: str
    message_size_limit: int
    alias_maps: list[str]
    queue_directory: str
    maillog_file: str
    maximal_queue_lifetime: float
    dns_resolver: str
    minimal_backoff_time: float
    maximal_backoff_time: float
    delay_warning_time: float
    smtp_tls_security_level: str
    smtp_sasl_password_maps: str
    smtp_port: int


SERVICES = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "lmtp")


@dataclass(frozen=True)
class ListenConfig:
    """``[listen]``: a port per service, None when off (lmtp: also a unix socket path)."""

    smtp: int | None
    submission: int | None
    smtps: int | None
    pop3: int | None
    pop3s: int | None
    imap: int | None
    imaps: int | None
    lmtp: int | str | None
    # Not mail services (not in SERVICES): account set-up for mail clients (autoconfig.py).
    autoconfig: int | None = None  # HTTP
    autoconfigs: int | None = None  # HTTPS with the [tls] certificate

    def enabled(self) -> dict[str, int | str]:
        """The services that are on, in SERVICES order: ``{"smtp": 25, ...}``."""
        ports = {name: getattr(self, name) for name in SERVICES}
        return {name: port for name, port in ports.items() if port is not None}


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: where accounts come from and when plaintext passwords may be sent."""

    passdb: str
    passwd_file: str
    shadow_file: str
    first_valid_uid: int
    disable_plaintext_auth: bool
    login_trusted_networks: list[Network]
    # Defaults here too, so code building an AuthConfig by hand need not name them.
    pam_service: str = "mailsuite"
    auth_failure_delay: float = 2.0
    login_max_failures: int = 10
    login_block_time: float = 900.0
    auth_cache_size: int = 10 * 1024 * 1024
    auth_cache_ttl: float = 3600.0
    auth_cache_negative_ttl: float = 3600.0

    def plaintext_allowed(
        self, peer_ip: str, tls: bool, local_ip: str = "", ssl_required: bool = False
    ) -> bool:
        """Dovecot's rule for LOGIN/USER/PASS and the PLAIN/LOGIN mechanisms: fine unless
        disabled (``ssl = required`` disables them too, as in Dovecot), except over TLS, from
        login_trusted_networks, or from the machine itself (loopback, or ``peer_ip ==
        local_ip``: Dovecot counts such a connection as secured)."""
        if tls or not (self.disable_plaintext_auth or ssl_required):
            return True
        if local_ip and peer_ip == local_ip and parse_ip(peer_ip) is not None:
            return True
        return in_networks(peer_ip, self.login_trusted_networks, loopback=True)


@dataclass(frozen=True)
class MailboxConfig:
    """``[mailbox]``: where an account's mbox files live (Dovecot's mail_location)."""

    mail_location: str
    sent: str
    drafts: str
    trash: str
    junk: str
    pop3_uidl_format: str = uidlformat.DEFAULT

    def special_folders(self) -> dict[str, str]:
        """{folder name: special-use flag} of the sent/drafts/trash/junk keys that are set."""
        pairs = ((self.sent, "\\Sent"), (self.drafts, "\\Drafts"), (self.trash, "\\Trash"),
                 (self.junk, "\\Junk"))
        return {name: flag for name, flag in pairs if name}

    def inbox_path(self, account: Account) -> str:
        """The INBOX mbox file of ``account``, e.g. ``/var/mail/boss``."""
        return _expand_location(_split_location(self.mail_location)[1], account)

    def folder_root(self, account: Account) -> str:
        """The directory holding the account's other folders, e.g. ``/home/boss/mail``."""
        return _expand_location(_split_location(self.mail_location)[0], account)


@dataclass(frozen=True)
class ImapConfig:
    """``[imap]``: Dovecot's imap settings."""

    imap_max_line_length: int = 64 * 1024


@dataclass(frozen=True)
class TLSConfig:
    """``[tls]``: Dovecot's ssl knobs."""

    ssl: str
    ssl_cert: str
    ssl_key: str


@dataclass(frozen=True)
class Config:
    path: str
    mail: MailConfig
    listen: ListenConfig
    auth: AuthConfig
    mailbox: MailboxConfig
    tls: TLSConfig
    imap: ImapConfig = ImapConfig()


# A default is text (expanded like a value from the file) or a function of a lookup of [mail].
Default = str | Callable[[Callable[[str], str]], str] | None


@dataclass(frozen=True)
class _Key:
    name: str
    default: Default
    convert: Callable[[str], Any]


@dataclass(frozen=True)
class _Section:
    build: Callable[..., Any]
    keys: list[_Key]


def _parent_domain(get: Callable[[str], str]) -> str:
    """myhostname minus its first label; ``localdomain`` for a one-label name, as Postfix."""
    return get("myhostname").partition(".")[2] or "localdomain"


_SECTIONS: dict[str, _Section] = {
    "mail": _Section(MailConfig, [
        _Key("myhostname", None, _domain),  # None: the hostname() given to parse_config
        _Key("mydomain", _parent_domain, _domain),
        _Key("myorigin", "$mydomain", _domain),
        _Key("mydestination", "$myhostname, localhost.$mydomain, localhost", _domains),
        _Key("inet_interfaces", "all", _interfaces),
        _Key("mynetworks", "127.0.0.0/8, [::1]/128", _networks),
        _Key("relay_domains", "", _domains),
        _Key("relayhost", "", _relayhost),
        _Key("message_size_limit", "10240000", _size),
        _Key("alias_maps", "/etc/aliases", _alias_maps),
        _Key("queue_directory", "/var/spool/mailsuite", _path),
        _Key("maillog_file", "/var/log/maillog", _path),
        _Key("maximal_queue_lifetime", "5d", _time_days),
        _Key("dns_resolver", "", _dns_resolver),
        _Key("minimal_backoff_time", "300s", _time_days),
        _Key("maximal_backoff_time", "4000s", _time_days),
        _Key("delay_warning_time", "0s", _time_days),
        _Key("smtp_tls_security_level", "may", _tls_level),
        _Key("smtp_sasl_password_maps", "", _optional_path),
        _Key("smtp_port", "25", _smtp_port),
    ]),
    "listen": _Section(ListenConfig, [
        _Key("smtp", "25", _port),
        _Key("submission", "587", _port),
        _Key("smtps", "465", _port),
        _Key("pop3", "110", _port),
        _Key("pop3s", "995", _port),
        _Key("imap", "143", _port),
        _Key("imaps", "993", _port),
        _Key("lmtp", "no", _port_or_socket),
        _Key("autoconfig", "no", _port),
        _Key("autoconfigs", "no", _port),
    ]),
    "auth": _Section(AuthConfig, [
        _Key("passdb", "shadow", _passdb),
        _Key("passwd_file", "/etc/passwd", _path),
        _Key("shadow_file", "/etc/shadow", _path),
        _Key("first_valid_uid", "1000", _uint),
        _Key("disable_plaintext_auth", "yes", _bool),
        _Key("login_trusted_networks", "", _networks),
        _Key("pam_service", "mailsuite", _pam_service),
        _Key("auth_failure_delay", "2s", _seconds),
        _Key("login_max_failures", "10", _uint),
        _Key("login_block_time", "15m", _seconds),
        _Key("auth_cache_size", "10M", _cache_size),
        _Key("auth_cache_ttl", "1h", _seconds),
        _Key("auth_cache_negative_ttl", "1h", _seconds),
    ]),
    "mailbox": _Section(MailboxConfig, [
        _Key("mail_location", "mbox:~/mail:INBOX=/var/mail/%u", _mail_location),
        _Key("sent", "Sent", _folder_name),
        _Key("drafts", "Drafts", _folder_name),
        _Key("trash", "Trash", _folder_name),
        _Key("junk", "Junk", _folder_name),
        _Key("pop3_uidl_format", uidlformat.DEFAULT, uidlformat.uidl_format),
    ]),
    "imap": _Section(ImapConfig, [
        _Key("imap_max_line_length", "64k", _line_length),
    ]),
    "tls": _Section(TLSConfig, [
        _Key("ssl", "yes", _ssl),
        _Key("ssl_cert", "/etc/mailsuite/tls/cert.pem", _pem_path),
        _Key("ssl_key", "/etc/mailsuite/tls/key.pem", _pem_path),
    ]),
}


# ---------------------------------------------------------------------------------------------
# Reading: text -> {section: {key: _Setting}}, then $-expansion, conversion and checks.

@dataclass
class _Setting:
    value: str
    line: int


def _read_ini(text: str, filename: str, errors: list[str]) -> dict[str, dict[str, _Setting]]:
    sections: dict[str, dict[str, _Setting]] = {}
    current: dict[str, _Setting] | None = None
    where = ""
    last: _Setting | None = None  # the setting an indented line continues
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)[#;].*", "", raw).strip()
        if not line:
            continue
        if raw[0].isspace():
            if last is None:
                errors.append(f"{filename}: {where}line {number}: indented line continues"
                              " nothing (lines starting with whitespace continue a value)")
            else:
                last.value = f"{last.value} {line}"
            continue
        last = None
        header = re.fullmatch(r"\[\s*([^\]\s]+)\s*\]", line)
        if header:
            where = f"[{header.group(1)}] "
            current = sections.setdefault(header.group(1), {})
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals or not key or current is None:
            problem = "is outside any [section]" if equals and key else (
                "is not 'key = value', '[section]' or a comment")
            errors.append(f"{filename}: {where}line {number}: {line!r} {problem}")
        elif key in current:
            errors.append(f"{filename}: {where}{key}: set twice (lines {current[key].line}"
                          f" and {number})")
        else:
            last = current[key] = _Setting(value, number)
    return sections


_DOLLAR = re.compile(r"\$(?:\{(\w+)\}|(\w+)|(\$)|)")


class _Expander:
    """``$name`` / ``${name}`` -> the (expanded) value of ``name`` in [mail]."""

    def __init__(self, mail: dict[str, Default]) -> None:
        self.mail = mail
        self.used: set[str] = set()  # the [mail] keys looked up since the caller last cleared it

    def value(self, name: str, stack: tuple[str, ...] = ()) -> str:
        if name in stack:
            raise ValueError("expansion loop: " + " -> ".join(f"${n}" for n in stack + (name,)))
        if name not in self.mail:
            raise ValueError(f"${name}: no such key in [mail]")
        self.used.add(name)
        raw = self.mail[name]
        stack += (name,)
        if callable(raw):
            raw = raw(lambda other: self.value(other, stack))
        return self.expand(raw or "", stack)

    def expand(self, text: str, stack: tuple[str, ...] = ()) -> str:
        def substitute(match: re.Match[str]) -> str:
            if match.group(3):
                return "$"
            name = match.group(1) or match.group(2)
            if not name:
                raise ValueError("a $ must be followed by a key of [mail] ($$ is a literal $)")
            return self.value(name, stack)

        return _DOLLAR.sub(substitute, text)


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown {kind}" + (f" (did you mean {close[0]}?)" if close else "")


def _misplaced(name: str, section_name: str, names: list[str]) -> str:
    """For a key not in its section: the section it belongs in, else a close match."""
    for other, section in _SECTIONS.items():
        if other != section_name and any(key.name == name for key in section.keys):
            return f"belongs in [{other}]"
    return _unknown("key", name, names)


def parse_config(
    text: str, filename: str, *, hostname: Callable[[], str] = default_hostname
) -> Config:
    """Parse and check the text of a mail.ini; raise ConfigError listing every problem.

    ``hostname()`` gives myhostname's default (the host's FQDN) when the file does not set it.
    """
    errors: list[str] = []
    given = _read_ini(text, filename, errors)
    for name in given:
        if name not in _SECTIONS:
            errors.append(f"{filename}: [{name}]: {_unknown('section', name, list(_SECTIONS))}")

    mail_keys = _SECTIONS["mail"].keys
    mail: dict[str, Default] = {key.name: key.default for key in mail_keys}
    mail["myhostname"] = lambda get: hostname()
    mail.update({k: s.value for k, s in given.get("mail", {}).items() if k in mail})
    expander = _Expander(mail)

    built: dict[str, Any] = {}
    failed: set[str] = set()  # [mail] keys already reported
    for section_name, section in _SECTIONS.items():
        settings = given.get(section_name, {})
        names = [key.name for key in section.keys]
        for name in settings:
            if name not in names:
                errors.append(f"{filename}: [{section_name}] {name}: "
                              + _misplaced(name, section_name, names))
        values: dict[str, Any] = {}
        for key in section.keys:
            setting = settings.get(key.name)
            expander.used = set()
            try:
                if section_name == "mail":
                    expanded = expander.value(key.name)
                else:
                    raw = setting.value if setting else key.default
                    assert isinstance(raw, str)
                    expanded = expander.expand(raw)
                values[key.name] = key.convert(expanded)
            except ValueError as e:
                if section_name == "mail":
                    failed.add(key.name)
                if setting is None and expander.used & failed - {key.name}:
                    continue  # a default built from a bad key: that key's error says it all
                origin = "" if setting else " (this is the default; set the key to change it)"
                messages = e.messages if isinstance(e, _Problems) else [str(e)]
                errors.extend(f"{filename}: [{section_name}] {key.name}: {message}{origin}"
                              for message in messages)
        if len(values) == len(section.keys):
            built[section_name] = section.build(**values)
    if "listen" in built and "tls" in built:
        errors.extend(_tls_listener_errors(filename, built["listen"], built["tls"]))
    if errors:
        raise ConfigError(errors)
    return Config(path=filename, **built)


def _tls_listener_errors(filename: str, listen: ListenConfig, tls: TLSConfig) -> list[str]:
    """The implicit-TLS ports cannot run with ``ssl = no``."""
    if tls.ssl != "no":
        return []
    return [f"{filename}: [listen] {name}: is TLS from the first byte but [tls] ssl = no;"
            f" set ssl = yes, or {name} = no"
            for name in ("smtps", "pop3s", "imaps", "autoconfigs")
            if getattr(listen, name) is not None]


def config_path(explicit: str | None) -> str:
    """Where mail.ini is: --config, else $MAILSUITE_CONFIG, else /etc/mailsuite/mail.ini."""
    return explicit or os.environ.get("MAILSUITE_CONFIG") or DEFAULT_CONFIG


def load_config(path: str) -> Config:
    """Read and parse the file at ``path``; an unreadable file is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from None
    return parse_config(text, path)
