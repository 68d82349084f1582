"""What the ``[tls] acme*`` keys mean: the directory URL's check, the names a certificate must
cover, and where the account key and the http-01 tokens live (beside the TLS files)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
#: the directory of the http-01 tokens, beside ssl_cert: root's, as the TLS files are
CHALLENGE_DIR = "acme-challenge"
ACCOUNT_KEY = "acme-account.key"
STATE = "acme-state.json"


def parse_directory_url(value: str) -> str:
    """An ACME directory URL: https with a host (RFC 8555 6.1: HTTPS only)."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{text!r} is not an https:// URL of an ACME directory"
                         f" (as {LETS_ENCRYPT})")
    return text


def _not_localhost(name: str) -> bool:
    return name != "localhost" and not name.startswith("localhost.")


def names_of(cfg: Any) -> list[str]:
    """The names the ACME certificate covers: ``acme_names`` when set; else myhostname and,
    for each of our mail domains (mydestination without localhost and myhostname itself, else
    mydomain), the autoconfig
    and autodiscover names (the HTTPS autoconfig site answers for them), and ``mta-sts.DOMAIN``
    when an MTA-STS policy is served (its fetchers require HTTPS with a valid certificate)."""
    if cfg.tls.acme_names:
        return list(cfg.tls.acme_names)
    domains = [d for d in cfg.mail.mydestination
               if _not_localhost(d) and d != cfg.mail.myhostname] or [cfg.mail.mydomain]
    names = [cfg.mail.myhostname]
    if cfg.listen.autoconfig is not None or cfg.listen.autoconfigs is not None:
        for domain in domains:
            names += [f"autoconfig.{domain}", f"autodiscover.{domain}"]
    if cfg.mail.mta_sts_mode != "none":
        names += [f"mta-sts.{domain}" for domain in domains]
    return list(dict.fromkeys(names))


def account_key_path(cfg: Any) -> str:
    """``acme_account_key``, else ``acme-account.key`` beside ssl_key."""
    return cfg.tls.acme_account_key or os.path.join(os.path.dirname(cfg.tls.ssl_key),
                                                    ACCOUNT_KEY)


def state_path(cfg: Any) -> str:
    """Which directory issued the certificate in place: ``acme-state.json`` beside the
    account key."""
    return os.path.join(os.path.dirname(account_key_path(cfg)), STATE)


def challenge_dir(cfg: Any) -> str:
    """The http-01 token directory (``acme_challenge_dir``, else beside ssl_cert): written by
    the ACME client (root's, in a privilege-separated server: never a directory the network
    process could swap for a symlink), read by the HTTP responder."""
    return cfg.tls.acme_challenge_dir or os.path.join(os.path.dirname(cfg.tls.ssl_cert),
                                                      CHALLENGE_DIR)


def config_errors(filename: str, cfg_listen: Any, tls: Any) -> list[str]:
    """``acme = yes`` needs TLS and the HTTP responder (http-01 is answered there)."""
    if not tls.acme:
        return []
    errors = []
    if tls.ssl == "no":
        errors.append(f"{filename}: [tls] acme: yes needs ssl = yes (or required)")
    if cfg_listen.autoconfig is None:
        errors.append(f"{filename}: [tls] acme: yes needs [listen] autoconfig = 80: the CA"
                      " checks the http-01 challenge on port 80 of every name")
    return errors
