"""The schema of ``mail.ini``: per section, its keys with their defaults and converters
(``SECTIONS``), over the typed sections of mailsuite.configtypes (``Config`` and its parts,
importable from here too). mailsuite.config reads a file against it. A new key is one ``Key``
line here and one field of its section's dataclass there (the [mail] fields of a feature are
kept together under a comment naming it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailsuite import uidlformat
from mailsuite.acme.conf import parse_directory_url
from mailsuite.authcheckconf import parse_arc_key, parse_authserv_id, parse_spf_reject
from mailsuite.configvalues import (
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
    parse_listen_address,
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
)
from mailsuite.dkimconf import build as build_dkim
from mailsuite.maillog import parse_syslog_facility, parse_syslog_name
from mailsuite.dkimconf import parse_entry as parse_dkim_entry
from mailsuite.milterconf import (
    DEFAULT_MACROS,
    parse_default_action,
    parse_milters,
    parse_protocol,
)
from mailsuite.mta.mtasts import parse_max_age, parse_mode, parse_mx_patterns
from mailsuite.mta.rewrite import parse_recipient_delimiter, parse_virtual_alias_domains
from mailsuite.store.quota import (
    parse_quota_status,
    parse_rules,
    parse_warning,
)
from mailsuite.store.spam import parse_spam_header
from mailsuite.smtp.dnsbl import parse_sites
from mailsuite.smtp.restrictions import (
    DEFAULT_RBL_REPLY,
    parse_delay_reject,
    parse_policy_action,
    parse_rbl_reply,
    parse_restrictions,
)

from mailsuite.configtypes import (  # the types, importable from here as before
    SERVICES,
    AuditConfig,
    AuthChecksConfig,
    AuthConfig,
    Config,
    ImapConfig,
    ListenConfig,
    MailboxConfig,
    MailConfig,
    Pop3Config,
    TLSConfig,
)

__all__ = [
    "SECTIONS",
    "SERVICES",
    "AuditConfig",
    "AuthChecksConfig",
    "AuthConfig",
    "Config",
    "Default",
    "ImapConfig",
    "Key",
    "ListenConfig",
    "MailConfig",
    "MailboxConfig",
    "Pop3Config",
    "Section",
    "TLSConfig",
]

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
        # inbound SPF/DKIM/DMARC/ARC checks (mailsuite/filter/authcheck.py)
        Key("authserv_id", "$myhostname", parse_authserv_id),
        # addresses: recipient_delimiter, virtual aliases (mailsuite/mta/rewrite.py, virtual.py)
        Key("recipient_delimiter", "", parse_recipient_delimiter),
        Key("virtual_alias_maps", "", parse_alias_maps),
        Key("virtual_alias_domains", "$virtual_alias_maps", parse_virtual_alias_domains),
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
        Key("metrics", "no", parse_listen_address),
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
        # quotas (mailsuite/store/quota.py)
        Key("quota_rule", "", parse_rules),
        Key("quota_rule_file", "", parse_optional_path),
        Key("quota_warning", "0", parse_warning),
        Key("quota_status_overquota", "552 5.2.2 Mailbox is full", parse_quota_status),
    ]),
    "imap": Section(ImapConfig, [
        Key("imap_max_line_length", "64k", parse_line_length),
        Key("mail_max_userip_connections", "10", parse_uint),
        Key("process_limit", "1024", parse_positive),
        Key("imap_hibernate_timeout", "5s", parse_seconds),
        Key("imap_metadata", "no", parse_bool),  # Dovecot's default: no
        Key("imap_literal_minus", "no", parse_bool),  # RFC 7888: LITERAL- instead of LITERAL+
    ]),
    "pop3": Section(Pop3Config, [
        Key("mail_max_userip_connections", "10", parse_uint),
        Key("process_limit", "1024", parse_positive),
    ]),
    "tls": Section(TLSConfig, [
        Key("ssl", "yes", parse_ssl),
        Key("ssl_cert", "/etc/mailsuite/tls/cert.pem", parse_pem_path),
        Key("ssl_key", "/etc/mailsuite/tls/key.pem", parse_pem_path),
        # ACME certificates (mailsuite/acme/): http-01 on [listen] autoconfig
        Key("acme", "no", parse_bool),
        Key("acme_server", "https://acme-v02.api.letsencrypt.org/directory", parse_directory_url),
        Key("acme_email", "", parse_bcc_address),
        Key("acme_ca_file", "", parse_optional_path),
        Key("acme_account_key", "", parse_optional_path),
        Key("acme_renew_before", "30d", parse_time_days),
        Key("acme_names", "", lambda value: tuple(parse_domains(value))),
        Key("acme_challenge_dir", "", parse_optional_path),
    ]),
    "audit": Section(AuditConfig, [
        Key("rules", "", parse_optional_path),
    ]),
    # DKIM signing (filter/dkim.py): one line a domain, DOMAIN = SELECTOR:/path/key.pem
    "dkim": Section(build_dkim, [], entry=parse_dkim_entry),
    # inbound SPF/DKIM/DMARC/ARC checks (mailsuite/filter/authcheck.py)
    "auth_checks": Section(AuthChecksConfig, [
        Key("enabled", "yes", parse_bool),
        Key("reject_failures", "yes", parse_bool),
        Key("quarantine_to_junk", "yes", parse_bool),
        Key("mail_from_reject", "false", parse_spf_reject),
        Key("helo_reject", "false", parse_spf_reject),
        Key("dns_timeout", "20s", parse_timeout),
        Key("skip_addresses", "127.0.0.0/8, [::1]/128", parse_networks),
        Key("arc_key", "", parse_arc_key),
    ]),
}
