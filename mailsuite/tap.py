"""``twistd mailsuite``: the one place where the parts are assembled into services."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from twisted.application import service, strports
from twisted.cred import checkers, portal
from twisted.logger import Logger
from twisted.python import usage

from mailsuite.authpolicy import AuthPolicy
from mailsuite.autoconfig import build_site
from mailsuite.checker import AccountDB, UnixChecker
from mailsuite.config import ConfigError, load_config
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.pam import NssAccounts, PamChecker
from mailsuite.pop3 import POP3Factory
from mailsuite.realm import MailRealm
from mailsuite.smtp.delivery import LocalDelivery
from mailsuite.smtp.server import SMTPFactory
from mailsuite.store.mbox import MboxStore
from mailsuite.tls import ServerTLS, TLSSetupError, server_tls

log = Logger()

DEFAULT_CONFIG = "/etc/mailsuite/mail.ini"

#: The [listen] services this version serves (LMTP arrives with the MTA work).
SERVICES = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
#: The services that are TLS from the first byte (the others offer STARTTLS).
IMPLICIT_TLS = ("smtps", "pop3s", "imaps")


def config_path(explicit: str | None) -> str:
    """Where a command finds mail.ini: --config, else $MAILSUITE_CONFIG, else /etc/mailsuite."""
    return explicit or os.environ.get("MAILSUITE_CONFIG") or DEFAULT_CONFIG


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run the mailsuite SMTP, POP3 and IMAP services described by a mail.ini file "
        "(default: $MAILSUITE_CONFIG, else " + DEFAULT_CONFIG + ")."
    )
    optParameters = [["config", "C", None, "Path to mail.ini"]]

    def postOptions(self) -> None:
        path = config_path(self["config"])
        try:
            cfg = load_config(path)
        except ConfigError as e:
            raise usage.UsageError("configuration refused:\n" + str(e))
        unserved = [name for name in cfg.listen.enabled() if name not in SERVICES]
        if unserved:
            raise usage.UsageError("configuration refused:\n" + "\n".join(
                f"{cfg.path}: [listen] {name}: this version does not serve {name} yet;"
                " set it to no" for name in unserved))
        self["cfg"] = cfg
        self["tls"] = tls_of(cfg)


def tls_of(cfg: Any) -> ServerTLS | None:
    """The TLS of a configuration (None for ssl = no); a first start makes a self-signed
    certificate. Problems with the files are a UsageError naming them, before anything binds."""
    try:
        return server_tls(cfg)
    except TLSSetupError as e:
        raise usage.UsageError(f"TLS refused ({cfg.path}: [tls]):\n{e}") from None
    except OSError as e:
        raise usage.UsageError(
            f"TLS refused ({cfg.path}: [tls]): cannot make the self-signed certificate:"
            f" {e.filename}: {e.strerror}") from None


def _can_bind(family: int, address: str) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def listen_addresses(inet_interfaces: list[str]) -> list[str]:
    """Addresses to bind for Postfix's inet_interfaces (all, loopback-only, or a list)."""
    if inet_interfaces == ["all"]:
        # An IPv6 wildcard socket on Linux also takes IPv4 (bindv6only=0 is the default).
        return ["::"] if _can_bind(socket.AF_INET6, "::") else ["0.0.0.0"]
    if inet_interfaces == ["loopback-only"]:
        out = ["127.0.0.1"]
        if _can_bind(socket.AF_INET6, "::1"):
            out.append("::1")
        return out
    return list(inet_interfaces)


def _endpoint(port: int, address: str) -> str:
    escaped = address.replace(":", r"\:")
    return f"tcp:{port}:interface={escaped}"


_MAKE_TLS = object()


def accounts_and_checker(cfg: Any) -> tuple[Any, Any]:
    """The account database and password checker of ``[auth] passdb``: shadow (passwd_file and
    shadow_file read directly) or pam (PAM service pam_service, accounts from NSS)."""
    if cfg.auth.passdb == "pam":
        nss = NssAccounts(cfg.auth.first_valid_uid)
        return nss, PamChecker(cfg.auth.pam_service, nss)
    accounts = AccountDB(cfg.auth.passwd_file, cfg.auth.shadow_file, cfg.auth.first_valid_uid)
    return accounts, UnixChecker(accounts)


def build(cfg: Any, tls: Any = _MAKE_TLS) -> service.MultiService:
    """All services of one mail.ini, not yet started. ``tls``: a ServerTLS, or None for no TLS
    (default: made from the configuration by ``tls_of``)."""
    if tls is _MAKE_TLS:
        tls = tls_of(cfg)
    top = service.MultiService()
    maillog = MailLog(cfg.mail.maillog_file, cfg.mail.myhostname)
    maillog.open()
    accounts, checker = accounts_and_checker(cfg)
    store = MboxStore(cfg.mailbox)
    delivery = LocalDelivery(cfg, accounts, store, maillog)
    realm = MailRealm(store, accounts, delivery)
    the_portal = portal.Portal(realm, [checker, checkers.AllowAnonymousAccess()])
    policy = AuthPolicy.from_config(cfg, maillog)  # one for all doors: counts across protocols

    def make(name: str) -> Any:
        implicit = name in IMPLICIT_TLS
        if name in ("smtp", "submission", "smtps"):
            return SMTPFactory(cfg, the_portal, delivery, maillog, service=name,
                               server_tls=tls, implicit_tls=implicit, policy=policy)
        if name in ("pop3", "pop3s"):
            return POP3Factory(cfg, the_portal, maillog, server_tls=tls, implicit_tls=implicit,
                               policy=policy)
        return IMAPFactory(cfg, the_portal, maillog, server_tls=tls, implicit_tls=implicit,
                           policy=policy)

    for name in SERVICES:
        port = getattr(cfg.listen, name)
        if port is None:
            continue
        factory = make(name)
        if name in IMPLICIT_TLS:
            factory = tls.implicit(factory)
        for address in listen_addresses(cfg.mail.inet_interfaces):
            svc = strports.service(_endpoint(port, address), factory)
            svc.setName(f"{name}@{address}")
            svc.setServiceParent(top)
    for name in ("autoconfig", "autoconfigs"):  # account set-up for mail clients (HTTP/HTTPS)
        port = getattr(cfg.listen, name)
        if port is None:
            continue
        site: Any = build_site(cfg)
        if name == "autoconfigs":
            site = tls.implicit(site)
        for address in listen_addresses(cfg.mail.inet_interfaces):
            svc = strports.service(_endpoint(port, address), site)
            svc.setName(f"{name}@{address}")
            svc.setServiceParent(top)
    top.maillog = maillog  # type: ignore[attr-defined]
    top.tls = tls  # type: ignore[attr-defined]
    _on_hup(maillog, tls)
    return top


def _on_hup(maillog: Any, tls: ServerTLS | None) -> None:
    """``kill -HUP`` reopens maillog_file (after logrotate moved it) and reloads the TLS
    certificate and key (after a renewal); open connections are not touched."""
    from twisted.internet import reactor

    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(maillog.reopen)  # type: ignore[attr-defined]
        if tls is not None:
            reactor.callFromThread(tls.reload)  # type: ignore[attr-defined]

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except ValueError:  # not the main thread (tests)
        pass


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    reactor.suggestThreadPoolSize(16)  # type: ignore[attr-defined]
    return build(options["cfg"], options["tls"])
