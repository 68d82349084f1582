"""Our own MTA-STS policy (RFC 8461 3.2, 3.3), served by the autoconfig web site.

With ``[mail] mta_sts_mode`` testing or enforce, ``GET /.well-known/mta-sts.txt`` with the
``Host`` ``mta-sts.DOMAIN`` (DOMAIN one of ours: mydestination without the localhost names,
else mydomain) answers ``text/plain``::

    version: STSv1
    mode: enforce
    mx: mail.example.com          (one line per mta_sts_mx pattern, default $myhostname)
    max_age: 604800               (mta_sts_max_age, default 7d: the RFC expects weeks)

Senders fetch it only over HTTPS on port 443 with a certificate valid for mta-sts.DOMAIN:
``[listen] autoconfigs = 443`` with such a certificate in ``[tls]`` (or a web server in front
forwarding to ``autoconfig``). The DNS record to publish is :func:`txt_record`; its ``id`` is
a hash of the policy text, so it changes exactly when the policy does (senders refetch then).
``python -m mailsuite.mtastsserve [-C mail.ini]`` prints the policy and the records.
"""

from __future__ import annotations

import hashlib
import sys

from mailsuite.config import Config

WELL_KNOWN = "/.well-known/mta-sts.txt"


def policy_text(cfg: Config) -> str:
    """The policy file of our configuration (LF line ends, as 3.2 allows)."""
    mail = cfg.mail
    lines = ["version: STSv1", f"mode: {mail.mta_sts_mode}"]
    lines += [f"mx: {pattern}" for pattern in mail.mta_sts_mx or (mail.myhostname,)]
    lines.append(f"max_age: {mail.mta_sts_max_age}")
    return "\n".join(lines) + "\n"


def policy_id(text: str) -> str:
    """The TXT record's id for a policy text: 32 hex digits of its SHA-256 (3.1: 1-32
    letters and digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def served(cfg: Config) -> bool:
    return cfg.mail.mta_sts_mode != "none"


def policy_domains(cfg: Config) -> list[str]:
    """The domains whose ``mta-sts.`` host serves the policy."""
    names = [d for d in cfg.mail.mydestination
             if d != "localhost" and not d.startswith("localhost.")]
    return names or [cfg.mail.mydomain]


def policy_for_host(cfg: Config, host_header: str) -> bytes | None:
    """The policy body for a request's Host header, None when it is not ours to answer."""
    if not served(cfg):
        return None
    host = host_header.strip().lower().partition(":")[0].rstrip(".")  # no port
    if not host.startswith("mta-sts.") or host[len("mta-sts."):] not in policy_domains(cfg):
        return None
    return policy_text(cfg).encode("ascii")


def txt_record(cfg: Config, domain: str) -> str:
    """The zone line to publish for ``domain``."""
    return f'_mta-sts.{domain}. IN TXT "v=STSv1; id={policy_id(policy_text(cfg))}"'


def describe(cfg: Config) -> str:
    """What an operator publishes: the policy file, the TXT records, the host names."""
    text = policy_text(cfg)
    out = [f"# {WELL_KNOWN} (served for mta-sts.DOMAIN on the autoconfig ports):", text]
    if not served(cfg):
        out.insert(0, "# mta_sts_mode = none: the policy is not served.")
    out.append("# DNS records to publish (the id changes when the policy does):")
    for domain in policy_domains(cfg):
        out.append(txt_record(cfg, domain))
        out.append(f"# and mta-sts.{domain} pointing at this server, with a certificate"
                   " for that name on port 443")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from mailsuite.config import ConfigError, config_path, load_config
    args = sys.argv[1:] if argv is None else argv
    path = args[1] if len(args) >= 2 and args[0] in ("-C", "--config") else None
    try:
        cfg = load_config(config_path(path))
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 78
    sys.stdout.write(describe(cfg))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
