"""The schema of ``mail.ini``: the typed sections (``Config`` and its parts) and, per section,
its keys with their defaults and converters (``SECTIONS``). mailsuite.config reads a file
against it. A new key is one ``Key`` line here and one field of its section's dataclass (the
[mail] fields of a feature are kept together under a comment naming it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailsuite import uidlformat
from mailsuite.accounts import Account
from mailsuite.configvalues import (
    expand_location,
    parse_access_list,
    parse_alias_maps,
    parse_bcc_address,
    parse_bool,
    parse_cert_match,
    parse_cache_size,
    parse_command_length,
    parse_content_tables,
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
from mailsuite.dkimconf import DkimConfig
from mailsuite.maillog import parse_syslog_facility, parse_syslog_name
from mailsuite.dkimconf import build as build_dkim
from mailsuite.dkimconf import parse_entry as parse_dkim_entry
from mailsuite.milterconf import (
    DEFAULT_MACROS,
    Endpoint,
    parse_default_action,
    parse_milters,
    parse_protocol,
)
from mailsuite.mta.mtasts import parse_max_age, parse_mode, parse_mx_patterns
from mailsuite.net import Network, in_networks, parse_ip
from mailsuite.store.spam import parse_spam_header
from mailsuite.smtp.access import Action
from mailsuite.smtp.dnsbl import Site, parse_sites
from mailsuite.smtp.restrictions import (
    DEFAULT_POLICY_ACTION,
    DEFAULT_RBL_REPLY,
    DEFAULT_RELAY_RESTRICTIONS,
    Restriction,
    parse_delay_reject,
    parse_policy_action,
    parse_rbl_reply,
    parse_restrictions,
)

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
    # Postfix's log habits (maillog.py): the MTA lines' name, and syslog when maillog_file = ""
    syslog_name: str
    syslog_facility: str
    syslog_socket: str
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
    #: the rights of commands and files of root's ~/.forward and of root-owned alias files
    default_privs: str = "nobody"
    #: streams (sessions, deliveries) one agent serves at most; then a new agent (Dovecot's)
    default_client_limit: int = 1000
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
    # outbound TLS: levels, policy maps, certificate checks, DANE (mailsuite/mta/tlspolicy.py)
    smtp_tls_policy_maps: str = ""
    smtp_tls_CAfile: str = ""
    smtp_tls_verify_cert_match: tuple[str, ...] = ("hostname",)
    smtp_tls_secure_cert_match: tuple[str, ...] = ("nexthop", "dot-nexthop")
    smtp_sasl_tls_verified_only: bool = True
    # milters (mailsuite/filter/milter): smtpd_milters, non_smtpd_milters, milter_*
    smtpd_milters: list[Endpoint] = field(default_factory=list)
    non_smtpd_milters: list[Endpoint] = field(default_factory=list)
    milter_default_action: str = "tempfail"
    milter_protocol: int = 6
    milter_connect_timeout: float = 30.0
    milter_command_timeout: float = 30.0
    milter_content_timeout: float = 300.0
    milter_connect_macros: str = DEFAULT_MACROS["milter_connect_macros"]
    milter_helo_macros: str = DEFAULT_MACROS["milter_helo_macros"]
    milter_mail_macros: str = DEFAULT_MACROS["milter_mail_macros"]
    milter_rcpt_macros: str = DEFAULT_MACROS["milter_rcpt_macros"]
    milter_data_macros: str = DEFAULT_MACROS["milter_data_macros"]
    milter_end_of_header_macros: str = DEFAULT_MACROS["milter_end_of_header_macros"]
    milter_end_of_data_macros: str = DEFAULT_MACROS["milter_end_of_data_macros"]
    milter_unknown_command_macros: str = DEFAULT_MACROS["milter_unknown_command_macros"]
    # content checks (mailsuite/filter/checks.py): header_checks, body_checks, ...
    header_checks: list[tuple[str, str]] = field(default_factory=list)
    mime_header_checks: list[tuple[str, str]] = field(default_factory=list)
    nested_header_checks: list[tuple[str, str]] = field(default_factory=list)
    body_checks: list[tuple[str, str]] = field(default_factory=list)
    body_checks_size_limit: int = 51200
    # BCC maps (mailsuite/filter/bcc.py): always_bcc, sender_bcc_maps, recipient_bcc_maps
    always_bcc: str = ""
    sender_bcc_maps: list[str] = field(default_factory=list)
    recipient_bcc_maps: list[str] = field(default_factory=list)
    # SMTP restrictions, policy service, DNSBL (mailsuite/smtp/restrictions.py)
    smtpd_client_restrictions: tuple[Restriction, ...] = ()
    smtpd_helo_restrictions: tuple[Restriction, ...] = ()
    smtpd_sender_restrictions: tuple[Restriction, ...] = ()
    smtpd_relay_restrictions: tuple[Restriction, ...] = DEFAULT_RELAY_RESTRICTIONS
    smtpd_recipient_restrictions: tuple[Restriction, ...] = ()
    smtpd_data_restrictions: tuple[Restriction, ...] = ()
    smtpd_delay_reject: bool = True
    smtpd_policy_service_timeout: float = 100.0
    smtpd_policy_service_max_idle: float = 300.0
    smtpd_policy_service_request_limit: int = 0
    smtpd_policy_service_default_action: Action = DEFAULT_POLICY_ACTION
    default_rbl_reply: str = DEFAULT_RBL_REPLY
    postscreen_dnsbl_sites: list[Site] = field(default_factory=list)
    postscreen_dnsbl_threshold: int = 1
    postscreen_dnsbl_action: str = "ignore"
    postscreen_dnsbl_ttl: float = 3600.0
    # hold queue (mailsuite/mta/queue.py)
    # MTA-STS and TLS-RPT (mailsuite/mta/mtasts*.py, tlsrpt*.py, mailsuite/mtastsserve.py)
    smtp_mta_sts_enable: bool = True
    mta_sts_mode: str = "none"
    mta_sts_mx: tuple[str, ...] = ()
    mta_sts_max_age: int = 604800
    smtp_tlsrpt_enable: bool = False
    tlsrpt_organization_name: str = ""
    tlsrpt_contact_info: str = ""
    tlsrpt_sender_address: str = ""


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
    spam_header: str = "X-Spam"  # a message it marks goes to ``junk`` (mailsuite.store.spam)

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
    #: Dovecot's: an IDLE session this long idle leaves its agent (0: never; Dovecot: 0)
    imap_hibernate_timeout: float = 5.0


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
class AuditConfig:
    """``[audit]``: the audit rules over the decoded text (mailsuite/filter/audit.py)."""

    rules: str = ""


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
    audit: AuditConfig = AuditConfig()
    # DKIM signing (filter/dkim.py)
    dkim: DkimConfig = field(default_factory=DkimConfig)


# A default is text (expanded like a value from the file) or a function of a lookup of [mail].
Default = str | Callable[[Callable[[str], str]], str] | None


@dataclass(frozen=True)
class Key:
    name: str
    default: Default
    convert: Callable[[str], Any]


@dataclass(frozen=True)
class Section:
    build: Callable[..., Any]
    keys: list[Key]
    #: a section whose keys are names of the admin's (the domains of [dkim]) rather than
    #: ``keys``: ``entry(key, value)`` gives (name, item) for each line, ValueError if bad,
    #: and ``build`` takes the dict {name: item}
    entry: Callable[[str, str], tuple[str, Any]] | None = None


def _parent_domain(get: Callable[[str], str]) -> str:
    """myhostname minus its first label; ``localdomain`` for a one-label name, as Postfix."""
    return get("myhostname").partition(".")[2] or "localdomain"


SECTIONS: dict[str, Section] = {
    "mail": Section(MailConfig, [
        Key("myhostname", None, parse_domain),  # None: the hostname() given to parse_config
        Key("mydomain", _parent_domain, parse_domain),
        Key("myorigin", "$mydomain", parse_domain),
        Key("mydestination", "$myhostname, localhost.$mydomain, localhost", parse_domains),
        Key("inet_interfaces", "all", parse_interfaces),
        Key("mynetworks", "127.0.0.0/8, [::1]/128", parse_networks),
        Key("relay_domains", "", parse_domains),
        Key("relayhost", "", parse_relayhost),
        Key("message_size_limit", "10240000", parse_size),
        Key("alias_maps", "/etc/aliases", parse_alias_maps),
        Key("queue_directory", "/var/spool/mailsuite", parse_path),
        Key("maillog_file", "/var/log/maillog", parse_optional_path),  # "": syslog
        # Postfix's log habits (maillog.py)
        Key("syslog_name", "postfix", parse_syslog_name),
        Key("syslog_facility", "mail", parse_syslog_facility),
        Key("syslog_socket", "/dev/log", parse_path),
        Key("smtpd_timeout", "300s", parse_timeout),
        Key("smtpd_per_request_deadline", "yes", parse_bool),  # Postfix: no (see README)
        Key("smtpd_min_data_rate", "500", parse_uint),
        Key("postscreen_greet_action", "drop", parse_greet_action),  # Postfix: ignore
        Key("postscreen_greet_wait", "6s", parse_seconds),
        Key("postscreen_greet_ttl", "1d", parse_time_days),
        Key("postscreen_cache_retention_time", "7d", parse_time_days),
        Key("postscreen_access_list", "permit_mynetworks", parse_access_list),
        Key("maximal_queue_lifetime", "5d", parse_time_days),
        Key("dns_resolver", "", parse_dns_resolver),
        Key("minimal_backoff_time", "300s", parse_time_days),
        Key("maximal_backoff_time", "4000s", parse_time_days),
        Key("delay_warning_time", "0s", parse_time_days),
        Key("smtp_tls_security_level", "may", parse_tls_level),
        Key("smtp_sasl_password_maps", "", parse_optional_path),
        Key("smtp_port", "25", parse_smtp_port),
        Key("mail_owner", "mailsuite", parse_user_name),
        Key("default_privs", "nobody", parse_user_name),
        Key("default_client_limit", "1000", parse_positive),
        Key("smtpd_recipient_limit", "1000", parse_positive),
        Key("smtpd_hard_error_limit", "20", parse_positive),
        Key("smtpd_soft_error_limit", "10", parse_uint),
        Key("smtpd_error_sleep_time", "1s", parse_seconds),
        Key("smtpd_junk_command_limit", "100", parse_positive),
        Key("line_length_limit", "2048", parse_command_length),
        Key("default_process_limit", "100", parse_positive),
        Key("smtpd_client_connection_count_limit", "50", parse_uint),
        Key("smtpd_client_connection_rate_limit", "0", parse_uint),
        Key("smtpd_client_message_rate_limit", "0", parse_uint),
        Key("smtpd_client_recipient_rate_limit", "0", parse_uint),
        Key("smtpd_client_new_tls_session_rate_limit", "0", parse_uint),
        Key("smtpd_client_event_limit_exceptions", "$mynetworks", parse_networks),
        Key("anvil_rate_time_unit", "60s", parse_positive_seconds),
        # outbound TLS: levels, policy maps, certificate checks, DANE (mailsuite/mta/tlspolicy.py)
        Key("smtp_tls_policy_maps", "", parse_optional_path),
        Key("smtp_tls_CAfile", "", parse_optional_path),
        Key("smtp_tls_verify_cert_match", "hostname", parse_cert_match),
        Key("smtp_tls_secure_cert_match", "nexthop, dot-nexthop", parse_cert_match),
        Key("smtp_sasl_tls_verified_only", "yes", parse_bool),
        # milters (mailsuite/filter/milter)
        Key("smtpd_milters", "", parse_milters),
        Key("non_smtpd_milters", "", parse_milters),
        Key("milter_default_action", "tempfail", parse_default_action),
        Key("milter_protocol", "6", parse_protocol),
        Key("milter_connect_timeout", "30s", parse_timeout),
        Key("milter_command_timeout", "30s", parse_timeout),
        Key("milter_content_timeout", "300s", parse_timeout),
        *(Key(name, value, str.strip) for name, value in DEFAULT_MACROS.items()),
        # content checks (mailsuite/filter/checks.py)
        Key("header_checks", "", parse_content_tables),
        Key("mime_header_checks", "$header_checks", parse_content_tables),
        Key("nested_header_checks", "$header_checks", parse_content_tables),
        Key("body_checks", "", parse_content_tables),
        Key("body_checks_size_limit", "51200", parse_uint),
        # BCC maps (mailsuite/filter/bcc.py)
        Key("always_bcc", "", parse_bcc_address),
        Key("sender_bcc_maps", "", parse_alias_maps),
        Key("recipient_bcc_maps", "", parse_alias_maps),
        # SMTP restrictions, policy service, DNSBL (mailsuite/smtp/restrictions.py)
        Key("smtpd_client_restrictions", "", parse_restrictions),
        Key("smtpd_helo_restrictions", "", parse_restrictions),
        Key("smtpd_sender_restrictions", "", parse_restrictions),
        # Postfix: defer_unauth_destination (454); mailsuite keeps its 554 by default
        Key("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated,"
            " reject_unauth_destination", parse_restrictions),
        Key("smtpd_recipient_restrictions", "", parse_restrictions),
        Key("smtpd_data_restrictions", "", parse_restrictions),
        Key("smtpd_delay_reject", "yes", parse_delay_reject),
        Key("smtpd_policy_service_timeout", "100s", parse_positive_seconds),
        Key("smtpd_policy_service_max_idle", "300s", parse_positive_seconds),
        Key("smtpd_policy_service_request_limit", "0", parse_uint),
        Key("smtpd_policy_service_default_action", "451 4.3.5 Server configuration problem",
            parse_policy_action),
        Key("default_rbl_reply", DEFAULT_RBL_REPLY.replace("$", "$$"), parse_rbl_reply),
        Key("postscreen_dnsbl_sites", "", parse_sites),
        Key("postscreen_dnsbl_threshold", "1", parse_positive),
        Key("postscreen_dnsbl_action", "ignore", parse_greet_action),
        Key("postscreen_dnsbl_ttl", "1h", parse_time_days),
        # hold queue (mailsuite/mta/queue.py)
        # MTA-STS and TLS-RPT (mailsuite/mta/mtasts*.py, tlsrpt*.py, mailsuite/mtastsserve.py;
        # smtp_tls_CAfile, above, is theirs too)
        Key("smtp_mta_sts_enable", "yes", parse_bool),
        Key("mta_sts_mode", "none", parse_mode),
        Key("mta_sts_mx", "$myhostname", parse_mx_patterns),
        Key("mta_sts_max_age", "7d", parse_max_age),
        Key("smtp_tlsrpt_enable", "no", parse_bool),
        Key("tlsrpt_organization_name", "$mydomain", str.strip),
        Key("tlsrpt_contact_info", "postmaster@$mydomain", str.strip),
        Key("tlsrpt_sender_address", "noreply-smtp-tls-reporting@$mydomain", str.strip),
    ]),
    "listen": Section(ListenConfig, [
        Key("smtp", "25", parse_port),
        Key("submission", "587", parse_port),
        Key("smtps", "465", parse_port),
        Key("pop3", "110", parse_port),
        Key("pop3s", "995", parse_port),
        Key("imap", "143", parse_port),
        Key("imaps", "993", parse_port),
        Key("lmtp", "no", parse_port_or_socket),
        Key("autoconfig", "no", parse_port),
        Key("autoconfigs", "no", parse_port),
    ]),
    "auth": Section(AuthConfig, [
        Key("passdb", "shadow", parse_passdb),
        Key("passwd_file", "/etc/passwd", parse_path),
        Key("shadow_file", "/etc/shadow", parse_path),
        Key("first_valid_uid", "1000", parse_uint),
        Key("disable_plaintext_auth", "yes", parse_bool),
        Key("login_trusted_networks", "", parse_networks),
        Key("pam_service", "mailsuite", parse_pam_service),
        Key("auth_failure_delay", "2s", parse_seconds),
        Key("login_max_failures", "10", parse_uint),
        Key("login_block_time", "15m", parse_seconds),
        Key("auth_cache_size", "10M", parse_cache_size),
        Key("auth_cache_ttl", "1h", parse_seconds),
        Key("auth_cache_negative_ttl", "1h", parse_seconds),
        Key("login_timeout", "3m", parse_timeout),
        Key("login_idle_timeout", "60s", parse_timeout),
    ]),
    "mailbox": Section(MailboxConfig, [
        Key("mail_location", "mbox:~/mail:INBOX=/var/mail/%u", parse_mail_location),
        Key("sent", "Sent", parse_folder_name),
        Key("drafts", "Drafts", parse_folder_name),
        Key("trash", "Trash", parse_folder_name),
        Key("junk", "Junk", parse_folder_name),
        Key("pop3_uidl_format", uidlformat.DEFAULT, uidlformat.uidl_format),
        Key("spam_header", "X-Spam", parse_spam_header),
    ]),
    "imap": Section(ImapConfig, [
        Key("imap_max_line_length", "64k", parse_line_length),
        Key("mail_max_userip_connections", "10", parse_uint),
        Key("process_limit", "1024", parse_positive),
        Key("imap_hibernate_timeout", "5s", parse_seconds),
    ]),
    "pop3": Section(Pop3Config, [
        Key("mail_max_userip_connections", "10", parse_uint),
        Key("process_limit", "1024", parse_positive),
    ]),
    "tls": Section(TLSConfig, [
        Key("ssl", "yes", parse_ssl),
        Key("ssl_cert", "/etc/mailsuite/tls/cert.pem", parse_pem_path),
        Key("ssl_key", "/etc/mailsuite/tls/key.pem", parse_pem_path),
    ]),
    "audit": Section(AuditConfig, [
        Key("rules", "", parse_optional_path),
    ]),
    # DKIM signing (filter/dkim.py): one line a domain, DOMAIN = SELECTOR:/path/key.pem
    "dkim": Section(build_dkim, [], entry=parse_dkim_entry),
}
