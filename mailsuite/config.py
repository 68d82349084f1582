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
every command). The converter of each key's value is in mailsuite.configvalues.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailsuite import uidlformat
from mailsuite.accounts import Account
from mailsuite.configvalues import (
    Problems,
    expand_location,
    parse_access_list,
    parse_alias_maps,
    parse_bool,
    parse_cache_size,
    parse_command_length,
    parse_dns_resolver,
    parse_domain,
    parse_domains,
    parse_folder_name,
    parse_greet_action,
    parse_interfaces,
    parse_line_length,
    parse_mail_location,
    parse_networks,
    parse_optional_path,
    parse_pam_service,
    parse_passdb,
    parse_path,
    parse_pem_path,
    parse_port,
    parse_port_or_socket,
    parse_positive,
    parse_positive_seconds,
    parse_relayhost,
    parse_seconds,
    parse_size,
    parse_smtp_port,
    parse_ssl,
    parse_time_days,
    parse_timeout,
    parse_tls_level,
    parse_uint,
    parse_user_name,
    split_location,
)
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
    # slow clients (smtp/server.py) and the front door of port 25 (smtp/postscreen.py)
    smtpd_timeout: float
    smtpd_per_request_deadline: bool
    smtpd_min_data_rate: int
    postscreen_greet_action: str
    postscreen_greet_wait: float
    postscreen_greet_ttl: float
    postscreen_cache_retention_time: float
    postscreen_access_list: list[str]
    maximal_queue_lifetime: float
    dns_resolver: str
    minimal_backoff_time: float
    maximal_backoff_time: float
    delay_warning_time: float
    smtp_tls_security_level: str
    smtp_sasl_password_maps: str
    smtp_port: int
    #: the unprivileged user of the network process ('': one process, no separation)
    mail_owner: str = "mailsuite"
    # Limits of smtpd (Postfix's names and defaults; mailsuite.limits, smtp/limits.py).
    smtpd_recipient_limit: int = 1000
    smtpd_hard_error_limit: int = 20
    smtpd_soft_error_limit: int = 10
    smtpd_error_sleep_time: float = 1.0
    smtpd_junk_command_limit: int = 100
    line_length_limit: int = 2048
    default_process_limit: int = 100
    smtpd_client_connection_count_limit: int = 50
    smtpd_client_connection_rate_limit: int = 0
    smtpd_client_message_rate_limit: int = 0
    smtpd_client_recipient_rate_limit: int = 0
    smtpd_client_new_tls_session_rate_limit: int = 0
    smtpd_client_event_limit_exceptions: list[Network] = field(default_factory=list)
    anvil_rate_time_unit: float = 60.0


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
    # before login (IMAP, POP3): Dovecot's login processes, see README.rst
    login_timeout: float = 180.0
    login_idle_timeout: float = 60.0

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
        return expand_location(split_location(self.mail_location)[1], account)

    def folder_root(self, account: Account) -> str:
        """The directory holding the account's other folders, e.g. ``/home/boss/mail``."""
        return expand_location(split_location(self.mail_location)[0], account)


@dataclass(frozen=True)
class ImapConfig:
    """``[imap]``: Dovecot's imap settings."""

    imap_max_line_length: int = 64 * 1024
    mail_max_userip_connections: int = 10
    process_limit: int = 1024


@dataclass(frozen=True)
class Pop3Config:
    """``[pop3]``: Dovecot's protocol pop3 and service pop3 limits."""

    mail_max_userip_connections: int = 10
    process_limit: int = 1024


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
    pop3: Pop3Config = Pop3Config()


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
        _Key("myhostname", None, parse_domain),  # None: the hostname() given to parse_config
        _Key("mydomain", _parent_domain, parse_domain),
        _Key("myorigin", "$mydomain", parse_domain),
        _Key("mydestination", "$myhostname, localhost.$mydomain, localhost", parse_domains),
        _Key("inet_interfaces", "all", parse_interfaces),
        _Key("mynetworks", "127.0.0.0/8, [::1]/128", parse_networks),
        _Key("relay_domains", "", parse_domains),
        _Key("relayhost", "", parse_relayhost),
        _Key("message_size_limit", "10240000", parse_size),
        _Key("alias_maps", "/etc/aliases", parse_alias_maps),
        _Key("queue_directory", "/var/spool/mailsuite", parse_path),
        _Key("maillog_file", "/var/log/maillog", parse_path),
        _Key("smtpd_timeout", "300s", parse_timeout),
        _Key("smtpd_per_request_deadline", "yes", parse_bool),  # Postfix: no (see README)
        _Key("smtpd_min_data_rate", "500", parse_uint),
        _Key("postscreen_greet_action", "drop", parse_greet_action),  # Postfix: ignore
        _Key("postscreen_greet_wait", "6s", parse_seconds),
        _Key("postscreen_greet_ttl", "1d", parse_time_days),
        _Key("postscreen_cache_retention_time", "7d", parse_time_days),
        _Key("postscreen_access_list", "permit_mynetworks", parse_access_list),
        _Key("maximal_queue_lifetime", "5d", parse_time_days),
        _Key("dns_resolver", "", parse_dns_resolver),
        _Key("minimal_backoff_time", "300s", parse_time_days),
        _Key("maximal_backoff_time", "4000s", parse_time_days),
        _Key("delay_warning_time", "0s", parse_time_days),
        _Key("smtp_tls_security_level", "may", parse_tls_level),
        _Key("smtp_sasl_password_maps", "", parse_optional_path),
        _Key("smtp_port", "25", parse_smtp_port),
        _Key("mail_owner", "mailsuite", parse_user_name),
        _Key("smtpd_recipient_limit", "1000", parse_positive),
        _Key("smtpd_hard_error_limit", "20", parse_positive),
        _Key("smtpd_soft_error_limit", "10", parse_uint),
        _Key("smtpd_error_sleep_time", "1s", parse_seconds),
        _Key("smtpd_junk_command_limit", "100", parse_positive),
        _Key("line_length_limit", "2048", parse_command_length),
        _Key("default_process_limit", "100", parse_positive),
        _Key("smtpd_client_connection_count_limit", "50", parse_uint),
        _Key("smtpd_client_connection_rate_limit", "0", parse_uint),
        _Key("smtpd_client_message_rate_limit", "0", parse_uint),
        _Key("smtpd_client_recipient_rate_limit", "0", parse_uint),
        _Key("smtpd_client_new_tls_session_rate_limit", "0", parse_uint),
        _Key("smtpd_client_event_limit_exceptions", "$mynetworks", parse_networks),
        _Key("anvil_rate_time_unit", "60s", parse_positive_seconds),
    ]),
    "listen": _Section(ListenConfig, [
        _Key("smtp", "25", parse_port),
        _Key("submission", "587", parse_port),
        _Key("smtps", "465", parse_port),
        _Key("pop3", "110", parse_port),
        _Key("pop3s", "995", parse_port),
        _Key("imap", "143", parse_port),
        _Key("imaps", "993", parse_port),
        _Key("lmtp", "no", parse_port_or_socket),
        _Key("autoconfig", "no", parse_port),
        _Key("autoconfigs", "no", parse_port),
    ]),
    "auth": _Section(AuthConfig, [
        _Key("passdb", "shadow", parse_passdb),
        _Key("passwd_file", "/etc/passwd", parse_path),
        _Key("shadow_file", "/etc/shadow", parse_path),
        _Key("first_valid_uid", "1000", parse_uint),
        _Key("disable_plaintext_auth", "yes", parse_bool),
        _Key("login_trusted_networks", "", parse_networks),
        _Key("pam_service", "mailsuite", parse_pam_service),
        _Key("auth_failure_delay", "2s", parse_seconds),
        _Key("login_max_failures", "10", parse_uint),
        _Key("login_block_time", "15m", parse_seconds),
        _Key("auth_cache_size", "10M", parse_cache_size),
        _Key("auth_cache_ttl", "1h", parse_seconds),
        _Key("auth_cache_negative_ttl", "1h", parse_seconds),
        _Key("login_timeout", "3m", parse_timeout),
        _Key("login_idle_timeout", "60s", parse_timeout),
    ]),
    "mailbox": _Section(MailboxConfig, [
        _Key("mail_location", "mbox:~/mail:INBOX=/var/mail/%u", parse_mail_location),
        _Key("sent", "Sent", parse_folder_name),
        _Key("drafts", "Drafts", parse_folder_name),
        _Key("trash", "Trash", parse_folder_name),
        _Key("junk", "Junk", parse_folder_name),
        _Key("pop3_uidl_format", uidlformat.DEFAULT, uidlformat.uidl_format),
    ]),
    "imap": _Section(ImapConfig, [
        _Key("imap_max_line_length", "64k", parse_line_length),
        _Key("mail_max_userip_connections", "10", parse_uint),
        _Key("process_limit", "1024", parse_positive),
    ]),
    "pop3": _Section(Pop3Config, [
        _Key("mail_max_userip_connections", "10", parse_uint),
        _Key("process_limit", "1024", parse_positive),
    ]),
    "tls": _Section(TLSConfig, [
        _Key("ssl", "yes", parse_ssl),
        _Key("ssl_cert", "/etc/mailsuite/tls/cert.pem", parse_pem_path),
        _Key("ssl_key", "/etc/mailsuite/tls/key.pem", parse_pem_path),
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


#: the longest a value may be once its $-references are expanded
MAX_EXPANDED = 65536
_DOLLAR = re.compile(r"\$(?:\{(\w+)\}|(\w+)|(\$)|)")


class _Expander:
    """``$name`` / ``${name}`` -> the (expanded) value of ``name`` in [mail]."""

    def __init__(self, mail: dict[str, Default]) -> None:
        self.mail = mail
        self.used: set[str] = set()  # the [mail] keys looked up since the caller last cleared it

    def value(self, name: str, stack: tuple[str, ...] = ()) -> str:
        if name in stack:
            raise ValueError("expansion loop: " + " -> ".join(f"${n}" for n in (*stack, name)))
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

        value = _DOLLAR.sub(substitute, text)
        if len(value) > MAX_EXPANDED:  # references that double at each key: 2^30 bytes
            raise ValueError(f"expands to more than {MAX_EXPANDED} characters")
        return value


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
                messages = e.messages if isinstance(e, Problems) else [str(e)]
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
