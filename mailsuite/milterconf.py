"""The milter keys of [mail] (mailsuite.filter.milter reads them): Postfix's milter names
(``inet:host:port``, ``unix:/path``, ``{ inet:host:port, default_action=accept }``) and the
values of milter_default_action and milter_protocol. Apart from the filter package, so that
the config schema does not import the pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """One milter of ``smtpd_milters``: its name as Postfix logs it (``inet:host:port``,
    ``unix:/path``), where it listens, and its own ``default_action`` (None: the global)."""

    name: str
    host: str
    port: int
    path: str
    default_action: str | None = None


#: Postfix's defaults (postconf -d) of the milter_*_macros keys
DEFAULT_MACROS = {
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _",
    "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host}"
                          " {mail_mailer}",
    "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "milter_data_macros": "i",
    "milter_end_of_header_macros": "i",
    "milter_end_of_data_macros": "i",
    "milter_unknown_command_macros": "",
}

ACTIONS = ("accept", "tempfail", "reject", "quarantine")


def parse_endpoint(text: str) -> Endpoint:
    """``inet:host:port``, ``inet:[v6]:port``, ``unix:/path`` (``local:`` too); a clear
    ValueError for anything else."""
    transport, _, where = text.partition(":")
    if not where or not transport:
        raise ValueError(f'Milter service needs transport:endpoint instead of "{text}"')
    if transport in ("unix", "local"):
        return Endpoint(text, "", 0, where)
    if transport != "inet":
        raise ValueError(f"invalid transport name: {transport} in Milter service: {text}")
    host, _, port = where.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in Milter service: {text}")
    return Endpoint(text, host, int(port), "")


def _split_list(value: str) -> list[str]:
    """Postfix's list syntax: comma or space separated, ``{ ... }`` kept together."""
    out, depth, word = [], 0, ""
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced '}}' in {value!r}")
        if depth == 0 and (ch in ", \t\n"):
            if word:
                out.append(word)
            word = ""
        else:
            word += ch
    if depth:
        raise ValueError(f"missing '}}' in {value!r}")
    return out + ([word] if word else [])


def parse_milters(value: str) -> list[Endpoint]:
    """``smtpd_milters``: ``inet:127.0.0.1:11332, unix:/run/x.sock`` and Postfix 3's
    per-milter form ``{ inet:host:port, default_action=accept }``."""
    out = []
    for item in _split_list(value):
        if not item.startswith("{"):
            out.append(parse_endpoint(item))
            continue
        words = [w.strip() for w in re.split(r"[,\s]+", item.strip("{} \t")) if w.strip()]
        if not words:
            raise ValueError(f"empty milter in {value!r}")
        endpoint, action = parse_endpoint(words[0]), None
        for setting in words[1:]:
            key, _, val = setting.partition("=")
            if key != "default_action" or val not in ACTIONS:
                raise ValueError(f"unsupported milter setting {setting!r} (known:"
                                 f" default_action={'|'.join(ACTIONS)})")
            action = val
        out.append(Endpoint(endpoint.name, endpoint.host, endpoint.port, endpoint.path, action))
    return out


def parse_default_action(value: str) -> str:
    value = value.strip().lower()
    if value not in ACTIONS:
        raise ValueError(f"{value!r} is not one of {', '.join(ACTIONS)}")
    return value


def parse_protocol(value: str) -> int:
    """``milter_protocol``: 2, 3, 4 or 6 (``no_header_reply`` is implied by version 6)."""
    words = [w for w in re.split(r"[,\s]+", value.strip()) if w and w != "no_header_reply"]
    if len(words) != 1 or words[0] not in ("2", "3", "4", "6"):
        raise ValueError(f"{value.strip()!r} is not a milter protocol version (2, 3, 4 or 6)")
    return int(words[0])
