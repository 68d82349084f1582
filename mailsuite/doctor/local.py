"""``mailsuite doctor``'s checks of this host's files: the TLS certificate (names, issuer,
dates), the mail spool and the queue directory (owner and mode, as ``setup-debian.sh install``
and mailsuite.startup make them), and every table the server reads at start (parsed by the
server's own start-up checks, so the doctor and the server never disagree)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import service_identity
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from service_identity.cryptography import verify_certificate_hostname

from mailsuite.autoconfig import our_domains
from mailsuite.config import Config, ConfigError
from mailsuite.configvalues import split_location
from mailsuite.doctor.context import Context
from mailsuite.doctor.verdict import Result, cannot_run, fail, ok, warn
from mailsuite.startup import QUEUE_SUBDIRS, StartupError, describe_os_error, mail_owner

#: days of validity left under which the certificate check warns
RENEW_DAYS = 21


def certificate_names(cfg: Config) -> list[str]:
    """myhostname, and autoconfig./autodiscover. of our domains when a site serves them."""
    names = [cfg.mail.myhostname]
    if cfg.listen.autoconfig is not None or cfg.listen.autoconfigs is not None:
        for domain in our_domains(cfg):
            names += [f"autoconfig.{domain}", f"autodiscover.{domain}"]
    return list(dict.fromkeys(names))


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_certificate(ctx: Context) -> Result:
    cfg = ctx.cfg
    path = cfg.tls.ssl_cert
    check = "certificate"
    if cfg.tls.ssl == "no":
        return warn(check, "[tls] ssl = no: passwords cross the network in the clear, and"
                    " Outlook and Thunderbird refuse such a server", "set [tls] ssl = yes")
    names = certificate_names(cfg)
    get = f"a certificate from a CA (Let's Encrypt: certbot certonly -d {' -d '.join(names)})"
    try:
        with open(path, "rb") as f:
            certs = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        return fail(check, f"{path}: {e.strerror}", f"put {get} in [tls] ssl_cert")
    except ValueError as e:
        return fail(check, f"{path}: not a PEM certificate ({e})", f"put {get} there")
    leaf = certs[0]
    now = datetime.fromtimestamp(ctx.now(), UTC)
    missing = []
    for name in names:
        try:
            verify_certificate_hostname(leaf, name)
        except (service_identity.VerificationError, service_identity.CertificateError):
            missing.append(name)
    days = (leaf.not_valid_after_utc - now).total_seconds() / 86400
    found = f"{path}: for {', '.join(_names(leaf)) or 'no name'}"
    if missing:
        return fail(check, f"{found}: does not cover {', '.join(missing)}", f"get {get}")
    if _self_signed(leaf):
        return fail(check, f"{found}: self-signed, clients warn or refuse", f"get {get}")
    if leaf.not_valid_before_utc > now:
        return fail(check, f"{found}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d}",
                    "fix the host's clock, or get a new certificate")
    if days < 0:
        return fail(check, f"{found}: expired {leaf.not_valid_after_utc:%Y-%m-%d}",
                    f"renew it: {get}")
    if days < RENEW_DAYS:
        return warn(check, f"{found}: {int(days)} days left", f"renew it: {get}")
    return ok(check, f"{found}, issued by {leaf.issuer.rfc4514_string()}: {int(days)} days left")


def _names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in ext.value.get_values_for_type(x509.DNSName)]


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group} {stat.S_IMODE(st.st_mode):04o}"


def check_spool(ctx: Context) -> Result:
    """The INBOX directory (``INBOX=/var/mail/%u``): root:mail 2775, as Debian makes it."""
    inbox = split_location(ctx.cfg.mailbox.mail_location)[1]
    check = "mail spool"
    directory = inbox.rpartition("/")[0]
    if "%" in directory or "~" in directory:
        return ok(check, f"INBOX is {inbox}: in each user's own directory")
    try:
        st = os.stat(directory)
    except OSError as e:
        return fail(check, f"{directory}: {e.strerror}", f"install -d -m 2775 -g mail {directory}")
    try:
        mail_gid = grp.getgrnam("mail").gr_gid
    except KeyError:
        return fail(check, "no group mail on this host", "groupadd --system mail")
    have = _owner(st)
    if st.st_uid != 0 or st.st_gid != mail_gid or stat.S_IMODE(st.st_mode) != 0o2775:
        return fail(check, f"{directory} is {have}, not root:mail 2775 (dotlocks and the"
                    " users' mbox files are made there)",
                    f"chown root:mail {directory} && chmod 2775 {directory}")
    return ok(check, f"{directory} is {have}")


def check_queue(ctx: Context) -> Result:
    """queue_directory root's 0755, its work directories mail_owner's (startup.give_queue)."""
    queue = ctx.cfg.mail.queue_directory
    check = "queue"
    try:
        st = os.lstat(queue)
    except FileNotFoundError:
        return warn(check, f"{queue} does not exist yet (the first start makes it)",
                    "start mailsuite once")
    except OSError as e:
        return fail(check, f"{queue}: {e.strerror}", f"chown root:root {queue}")
    if not ctx.cfg.mail.mail_owner:
        if stat.S_IMODE(st.st_mode) & 0o002:
            return fail(check, f"{queue} is {_owner(st)}: anyone may write there",
                        f"chmod o-w {queue}")
        return ok(check, f"{queue} is {_owner(st)} (no privilege separation: mail_owner empty)")
    try:
        uid, gid = mail_owner(ctx.cfg)
    except StartupError as e:
        return fail(check, str(e), "setup-debian.sh install makes the user")
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) != 0o755 or not stat.S_ISDIR(st.st_mode):
        return fail(check, f"{queue} is {_owner(st)}, not root 0755: mail_owner could swap"
                    " what is in it", f"chown root:root {queue} && chmod 0755 {queue}"
                    " (the next start fixes what is below)")
    wrong = []
    for name, mode in QUEUE_SUBDIRS.items():
        try:
            sub = os.lstat(os.path.join(queue, name))
        except FileNotFoundError:
            continue  # made at the next start
        if (sub.st_uid, sub.st_gid) != (uid, gid) or stat.S_IMODE(sub.st_mode) != mode:
            wrong.append(f"{name}/ is {_owner(sub)}, not {ctx.cfg.mail.mail_owner} {mode:04o}")
    if wrong:
        return fail(check, f"{queue}: {'; '.join(wrong)}", "restart mailsuite: it sets the"
                    " queue's owners and modes at start (startup.give_queue)")
    return ok(check, f"{queue} is {_owner(st)}, its work directories"
              f" {ctx.cfg.mail.mail_owner}'s")


def table_checks(ctx: Context, owner: tuple[int, int]) -> list[tuple[str, Callable[[], Any]]]:
    """(what, the server's own start-up check of it) for each kind of table."""
    from mailsuite import filter as stages
    from mailsuite.mta import tlspolicy
    from mailsuite.mta.relay import load_password_map
    from mailsuite.smtp import restrictions
    cfg = ctx.cfg
    return [
        ("tables content/dkim/bcc/audit", lambda: stages.check_at_start(cfg, owner)),
        ("tables access", lambda: restrictions.check_tables(cfg.mail, owner)),
        ("tables tls policy", lambda: tlspolicy.from_config(cfg, ctx.reactor, lambda _: None)),
        ("tables tls policy readable", lambda: tlspolicy.check_readable(cfg, owner)),
        ("tables sasl passwords", lambda: load_password_map(cfg)),
    ]


def check_tables(ctx: Context) -> list[Result]:
    """The aliases (as newaliases reads them) and every other table (as the server at start,
    with mail_owner's rights when run as root)."""
    from mailsuite.mta import aliases
    results = []
    _, errors, warnings = aliases.validate(ctx.cfg.mail.alias_maps)
    maps = ", ".join(ctx.cfg.mail.alias_maps) or "none"
    if errors:
        results.append(fail("aliases", f"{errors[0]}" + (f" (and {len(errors) - 1} more)"
                            if len(errors) > 1 else ""), "fix the line, then run newaliases"))
    elif warnings:
        results.append(warn("aliases", warnings[0], "add the line, then run newaliases"))
    else:
        results.append(ok("aliases", f"{maps} parse"))
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0 and ctx.cfg.mail.mail_owner:
        try:
            owner = mail_owner(ctx.cfg)
        except StartupError as e:
            return [*results, fail("tables", str(e), "setup-debian.sh install makes the user")]
    elif os.geteuid() != 0:
        results.append(cannot_run("tables readable", "not root: whether mail_owner may read"
                                  " the tables is not checked"))
    for what, run in table_checks(ctx, owner):
        try:
            run()
        except (StartupError, ConfigError) as e:
            results.append(fail(what, str(e).replace("\n", "; "), "fix the file named"))
        except OSError as e:
            results.append(fail(what, describe_os_error(e), "fix the file named"))
        else:
            results.append(ok(what, "parse"))
    return results
