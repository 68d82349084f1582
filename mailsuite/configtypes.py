"""The typed configuration of ``mail.ini``: ``Config`` and its sections' dataclasses, as
mailsuite.config gives them (the keys, defaults and converters are mailsuite.configschema's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailsuite import uidlformat
from mailsuite.accounts import Account
from mailsuite.configvalues import (
    expand_location,
    split_location,
)
from mailsuite.dkimconf import DkimConfig
from mailsuite.milterconf import (
    DEFAULT_MACROS,
    Endpoint,
)
from mailsuite.net import Network, in_networks, parse_ip
from mailsuite.store.quota import (
    NO_LIMITS,
    Limits,
)
from mailsuite.smtp.access import Action
from mailsuite.smtp.dnsbl import Site
from mailsuite.smtp.restrictions import (
    DEFAULT_POLICY_ACTION,
    DEFAULT_RBL_REPLY,
    DEFAULT_RELAY_RESTRICTIONS,
    Restriction,
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
    # inbound SPF/DKIM/DMARC/ARC checks (mailsuite/filter/authcheck.py): '' = myhostname
    authserv_id: str = ""
    # addresses: recipient_delimiter, virtual aliases (mailsuite/mta/rewrite.py, virtual.py)
    recipient_delimiter: str = ""
    virtual_alias_maps: list[str] = field(default_factory=list)
    virtual_alias_domains: list[str] = field(default_factory=list)


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
    # Prometheus metrics and /health (metrics.py): (address, port), not on inet_interfaces
    metrics: tuple[str, int] | None = None

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
    # quotas (mailsuite/store/quota.py)
    quota_rule: Limits = NO_LIMITS
    quota_rule_file: str = ""
    quota_warning: int = 0
    quota_status_overquota: tuple[int, str, str] = (552, "5.2.2", "Mailbox is full")

    @property
    def quota_configured(self) -> bool:
        return self.quota_rule.any or bool(self.quota_rule_file)

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
    #: Dovecot's: METADATA (RFC 5464, imap/metadata.py) offered (Dovecot: no)
    imap_metadata: bool = False
    #: Dovecot's: advertise LITERAL- (non-synchronizing literals of at most 4096 bytes)
    imap_literal_minus: bool = False


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
    # ACME certificates (mailsuite/acme/)
    acme: bool = False
    acme_server: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_email: str = ""
    acme_ca_file: str = ""
    acme_account_key: str = ""
    acme_renew_before: float = 30 * 86400.0
    acme_names: tuple[str, ...] = ()
    acme_challenge_dir: str = ""


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: the audit rules over the decoded text (mailsuite/filter/audit.py)."""

    rules: str = ""


# inbound SPF/DKIM/DMARC/ARC checks (mailsuite/filter/authcheck.py)
@dataclass(frozen=True)
class AuthChecksConfig:
    """``[auth_checks]``: SPF, DKIM, DMARC and ARC of mail from strangers on port 25."""

    enabled: bool = True
    reject_failures: bool = True  # opendmarc's RejectFailures: honour p=reject
    quarantine_to_junk: bool = True  # p=quarantine: the message goes to Junk
    mail_from_reject: str = "false"  # policyd-spf's Mail_From_reject: fail, softfail, false
    helo_reject: str = "false"  # policyd-spf's HELO_reject
    dns_timeout: float = 20.0
    skip_addresses: list[Network] = field(default_factory=list)  # policyd-spf's; + mynetworks
    arc_key: str = ""  # DOMAIN:SELECTOR:/path: ARC-seal the mail we forward


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
    auth_checks: AuthChecksConfig = AuthChecksConfig()
