"""``twistd mailsuite``: the one place where the parts are assembled into services."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from twisted.application import service, strports
from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from mailsuite import threads
from mailsuite.authcache import AuthCache
from mailsuite.authpolicy import AuthPolicy
from mailsuite.autoconfig import build_site
from mailsuite.checker import AccountDB, UnixChecker
from mailsuite.config import SERVICES, ConfigError, load_config
from mailsuite.control import ControlFactory, control_path, ensure_public
from mailsuite.imap.server import IMAPFactory
from mailsuite.maildrop import Pickup, ensure_maildrop, local_submitter, pickup_service
from mailsuite.maildrop import remove as remove_dropped
from mailsuite.maillog import MailLog
from mailsuite.pam import NssAccounts, PamChecker
from mailsuite.pop3 import POP3Factory
from mailsuite.realm import MailRealm
from mailsuite.smtp.aliases import validate as validate_aliases
from mailsuite.smtp.delivery import LocalDelivery
from mailsuite.smtp.dns import MXResolver
from mailsuite.smtp.lmtp import LMTPFactory
from mailsuite.smtp.queue import Queue, QueueSettings
from mailsuite.smtp.queuefile import QueueDirectory
from mailsuite.smtp.relay import Relay, parse_password_map
from mailsuite.smtp.server import SMTPFactory
from mailsuite.store.cleanup import clean_spool, spool_directory
from mailsuite.store.mbox import MboxStore
from mailsuite.tls import ServerTLS, TLSSetupError, server_tls

log = Logger()

DEFAULT_CONFIG = "/etc/mailsuite/mail.ini"

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
        relay_credentials(cfg)  # refused here, before binding, if unreadable
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
    return accounts, UnixChecker(accounts, cache=AuthCache.from_config(cfg.auth))


def build(cfg: Any, tls: Any = _MAKE_TLS) -> service.MultiService:
    """All services of one mail.ini, not yet started. ``tls``: a ServerTLS, or None for no TLS
    (default: made from the configuration by ``tls_of``)."""
    if tls is _MAKE_TLS:
        tls = tls_of(cfg)
    top = service.MultiService()
    maillog = MailLog(cfg.mail.maillog_file, cfg.mail.myhostname)
    maillog.open()
    maillog.coalesce = _next_turn
    accounts, checker = accounts_and_checker(cfg)
    store = MboxStore(cfg.mailbox)
    store_service = StoreService(store, spool_directory(cfg.mailbox))
    store_service.setServiceParent(top)  # first: stopped last, after the listeners
    delivery = LocalDelivery(cfg, accounts, store, maillog)
    delivery.queue = build_queue(cfg, delivery, maillog)
    qmgr = QueueService(delivery.queue, after=store_service.cleaned)
    qmgr.setName("qmgr")
    qmgr.setServiceParent(top)
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
        if name == "lmtp":
            return LMTPFactory(cfg, delivery, maillog)
        return IMAPFactory(cfg, the_portal, maillog, server_tls=tls, implicit_tls=implicit,
                           policy=policy)

    for name in SERVICES:
        port = getattr(cfg.listen, name)
        if port is None:
            continue
        factory = make(name)
        if isinstance(port, str):  # lmtp on a unix socket path
            svc = strports.service(_unix_endpoint(port), factory)
            svc.setName(f"{name}@{port}")
            svc.setServiceParent(top)
            continue
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
    _local_submission(top, cfg, delivery, maillog)
    top.maillog = maillog  # type: ignore[attr-defined]
    top.tls = tls  # type: ignore[attr-defined]
    _on_hup(maillog, tls)
    return top


def _unix_endpoint(path: str) -> str:
    """A unix socket any local MTA may reach (mode 0666; a stale socket is replaced)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return f"unix:{path.replace(':', chr(92) + ':')}:mode=666:lockfile=1"


def _local_submission(top: service.MultiService, cfg: Any, delivery: Any, maillog: Any) -> None:
    """maildrop/ pickup (sendmail) and the control socket (flush), aliases checked at start."""
    queue_directory = cfg.mail.queue_directory
    ensure_maildrop(queue_directory)
    ensure_public(queue_directory)
    pickup = Pickup(queue_directory, local_submitter(
        delivery, maillog, cfg.mail.myhostname, cfg.mail.myorigin), maillog)
    scanner = pickup_service(pickup)
    scanner.setName("pickup")
    scanner.setServiceParent(top)
    commands = {"pickup": pickup.scan, "flush": lambda: _flush(pickup, delivery),
                "delete": lambda queue_id: _delete(queue_directory, delivery, queue_id)}
    control = strports.service(_unix_endpoint(control_path(queue_directory)),
                               ControlFactory(commands))
    control.setName("control")
    control.setServiceParent(top)
    _, errors, warnings = validate_aliases(cfg.mail.alias_maps)
    for text in errors + warnings:
        log.warn("alias_maps: {text}", text=text)


def _next_turn(f: Any) -> Any:
    from twisted.internet import reactor

    return reactor.callLater(0, f)  # type: ignore[attr-defined,arg-type]


def relay_credentials(cfg: Any) -> dict[str, tuple[str, str]]:
    """smtp_sasl_password_maps read at start: a missing or unreadable file is a configuration
    error naming file, section and key, before anything is bound."""
    path = cfg.mail.smtp_sasl_password_maps
    if not path:
        return {}
    try:
        with open(path) as f:
            return parse_password_map(f.read())
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(
            f"configuration refused:\n{cfg.path}: [mail] smtp_sasl_password_maps: {e}")


def build_queue(cfg: Any, delivery: LocalDelivery, maillog: MailLog) -> Queue:
    """The outbound queue of queue_directory with its SMTP client (MX or relayhost)."""
    from twisted.internet import reactor

    mail = cfg.mail
    credentials = relay_credentials(cfg)
    relay = Relay(
        MXResolver(mail.dns_resolver, reactor=reactor),
        mail.myhostname,
        reactor,
        port=mail.smtp_port,
        relayhost=mail.relayhost,
        credentials=credentials,
        tls_level=mail.smtp_tls_security_level,
    )
    return Queue(QueueDirectory(mail.queue_directory), delivery, relay, maillog, reactor,
                 QueueSettings.from_config(mail))


class StoreService(service.Service):
    """On start, removes what a killed server left in the spool directory (stale dotlocks,
    rewrite files: ``store.cleanup``). On stop, waits for the mailboxes' pending work: the
    compaction of what was expunged (answered before the file is rewritten) is finished, not
    left for the next start."""

    def __init__(self, store: MboxStore, spool: str | None = None) -> None:
        self.store = store
        self.spool = spool
        self._cleaning: defer.Deferred[Any] = defer.succeed(None)
        self.setName("store")

    def startService(self) -> None:
        super().startService()
        if self.spool is not None:
            self._cleaning = threads.blocking(clean_spool, self.spool)
            self._cleaning.addErrback(lambda f: log.failure("cleaning {dir} failed", f,
                                                            dir=self.spool))

    def cleaned(self) -> defer.Deferred[None]:
        """Fires once the start-up clean-up is done."""
        d: defer.Deferred[None] = defer.Deferred()

        def done(result: Any) -> Any:
            d.callback(None)
            return result

        self._cleaning.addBoth(done)
        return d

    def stopService(self) -> Any:
        super().stopService()
        return self.store.settle()


class QueueService(service.Service):
    """Starts the queue manager with the other services (loads what an earlier run left)."""

    def __init__(self, queue: Queue, after: Any = None) -> None:
        """``after()``: a Deferred to wait for first (the spool's stale locks removed)."""
        self.queue = queue
        self.after = after

    def startService(self) -> None:
        super().startService()
        d = self.after() if self.after is not None else defer.succeed(None)
        d.addCallback(lambda _: self.queue.start())
        d.addErrback(lambda f: log.failure("cannot start the queue", f))

    def stopService(self) -> Any:
        self.queue.stop()
        return super().stopService()


def _flush(pickup: Pickup, delivery: Any) -> Any:
    """postqueue -f: pick up maildrop/ and retry every deferred message now."""
    if getattr(delivery, "queue", None) is not None:
        delivery.queue.flush()
    return pickup.scan()


@defer.inlineCallbacks
def _delete(queue_directory: str, delivery: Any, queue_id: str) -> Any:
    """postsuper -d ID, for the control socket."""
    if (yield threads.blocking(remove_dropped, queue_directory, queue_id)):
        return "removed"
    queue = getattr(delivery, "queue", None)
    if queue is not None and (yield queue.delete(queue_id)):
        return "removed"
    return "not found"


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
