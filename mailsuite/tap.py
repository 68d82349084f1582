"""``twistd mailsuite``: the one place where the parts are assembled into services.

``makeService(options, reactor=None)`` takes the reactor (the global one only when none is
given) and hands it down: every listener is made on it, every factory, queue, timer and
policy gets it as its clock, and every part that blocks gets ``threads.InPool(reactor)``. No
module of mailsuite imports the global reactor.

Time is read one way: on the reactor thread, the injected reactor's ``seconds()``
(IReactorTime) for logic and timers (timeouts, retries, delays, the recipient cache); the wall
clock (``time.time``, ``datetime.now``) only where a date is printed (Received: lines, the
maillog's stamps, INTERNALDATE, certificates). Blocking code running in a pool thread (locks,
|commands, the password cache shared with it) cannot use the reactor and times itself with
``time.monotonic``.

The root master of a privilege-separated server runs none of the doors, the queue or the
store: their modules are imported by ``build`` and ``assemble`` (the one-process server's and
the network process's), so the master is a Python process of 57 MB, not 70. The network
process imports them before it drops root (``privsep.netproc.SERVER_MODULES``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.application import service, strports
from twisted.application.internet import StreamServerEndpointService
from twisted.cred import checkers, portal
from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from mailsuite import heap, startup
from mailsuite.filter import stages as filter_stages
from mailsuite.auth.cache import AuthCache
from mailsuite.auth.checker import AccountDB, UnixChecker
from mailsuite.auth.pam import NssAccounts, PamChecker
from mailsuite.config import DEFAULT_CONFIG, SERVICES, Config, ConfigError, config_path, load_config
from mailsuite.listenaddr import listen_addresses, tcp_endpoint
from mailsuite.maillog import MailLog
from mailsuite.privsep.ports import AdoptedPort, SocketFiles, held_socket
from mailsuite.mta.aliases import AliasLookupError
from mailsuite.mta.control import (
    ControlFactory,
    Handler,
    control_path,
    ensure_public,
    queue_commands,
)
from mailsuite.mta.dns import MXResolver
from mailsuite.mta.maildrop import Pickup, ensure_maildrop, local_submitter, pickup_service
from mailsuite.mta.maildrop import remove as remove_dropped
from mailsuite.mta import tlspolicy
from mailsuite.mta.quota import check_at_start as check_quota_rules
from mailsuite.mta.relay import load_password_map
from mailsuite.mta.transaction import Pipeline
from mailsuite.mta.virtual import VirtualAliases
from mailsuite.reload import Reloader
from mailsuite.reload import warning as reload_warning
from mailsuite.privsep.reloading import MasterReload, owner_checks
from mailsuite.smtp.restrictions import Restrictions
from mailsuite.startup import StartupError, describe_os_error, step
from mailsuite.store.cleanup import clean_spool, spool_directory
from mailsuite.threads import Blocking, InPool
from mailsuite.tls import ServerTLS, TLSSetupError, server_tls

if TYPE_CHECKING:  # the servers' own modules: imported by build and assemble (see above)
    from mailsuite.mta.delivery import LocalDelivery
    from mailsuite.mta.queue import Queue
    from mailsuite.realm import MailRealm
    from mailsuite.store.mbox import MboxStore

log = Logger()

#: The services that are TLS from the first byte (the others offer STARTTLS).
IMPLICIT_TLS = ("smtps", "pop3s", "imaps")


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run the mailsuite SMTP, POP3 and IMAP services described by a mail.ini file "
        "(default: $MAILSUITE_CONFIG, else " + DEFAULT_CONFIG + ")."
    )
    optParameters: ClassVar[list[list[str | None]]] = [["config", "C", None, "Path to mail.ini"]]

    def postOptions(self) -> None:
        """Read and check mail.ini, the relay password map and the TLS files; a problem ends
        twistd here with one line per error (no usage text) and exit status 78."""
        try:
            cfg, self["tls"] = checked_config(config_path(self["config"]))
        except ConfigError as e:
            startup.fatal(e.errors, startup.EX_CONFIG)
        self["cfg"] = cfg


def add_acme(top: service.MultiService, cfg: Config, *args: Any) -> Any:
    """The ACME service under ``top`` when ``[tls] acme = yes``: mailsuite.acme.service,
    imported only then (certbot's ``acme`` and ``requests`` are 7 MB of every process)."""
    if not cfg.tls.acme:
        return None
    from mailsuite.acme.service import add_acme as add
    return add(top, cfg, *args)


def checked_config(path: str, warn: Callable[[str], None] = print) -> tuple[Config, Any]:
    """mail.ini read and checked as at start (also at reload), and its TLS."""
    cfg = load_config(path)
    load_password_map(cfg)  # refused here, before binding, if unreadable
    tlspolicy.from_config(cfg, None, warn)  # smtp_tls_policy_maps, smtp_tls_CAfile
    check_account_files(cfg)
    return cfg, tls_of(cfg)


def tls_of(cfg: Config) -> ServerTLS | None:
    """The TLS of a configuration (None for ssl = no); a first start makes a self-signed
    certificate. Problems with the files are a ConfigError naming them, before anything binds."""
    try:
        return server_tls(cfg)
    except TLSSetupError as e:
        raise ConfigError([f"{cfg.path}: [tls]: {e}"]) from None
    except OSError as e:
        raise ConfigError([f"{cfg.path}: [tls]: cannot make the self-signed certificate:"
                           f" {describe_os_error(e)}"]) from None


_MAKE_TLS = object()


def accounts_and_checker(cfg: Config, blocking: Blocking) -> tuple[Any, Any]:
    """The account database and password checker of ``[auth] passdb``: shadow (passwd_file and
    shadow_file read directly) or pam (PAM service pam_service, accounts from NSS)."""
    if cfg.auth.passdb == "pam":
        nss = NssAccounts(cfg.auth.first_valid_uid)
        return nss, PamChecker(cfg.auth.pam_service, nss, blocking)
    accounts = AccountDB(cfg.auth.passwd_file, cfg.auth.shadow_file, cfg.auth.first_valid_uid)
    return accounts, UnixChecker(accounts, blocking, cache=AuthCache.from_config(cfg.auth))


def build(cfg: Config, reactor: Any, tls: Any = _MAKE_TLS) -> MailService:
    """All services of one mail.ini on ``reactor``, not yet started, in one process.
    ``tls``: a ServerTLS, or None for no TLS (default: made from the configuration by
    ``tls_of``)."""
    from mailsuite.realm import MailRealm
    from mailsuite.store.mbox import MboxStore

    if tls is _MAKE_TLS:
        tls = tls_of(cfg)
    blocking = InPool(reactor)
    top = MailService()
    maillog = MailLog.from_config(cfg.mail, reactor)
    with step("[mail] maillog_file"):
        maillog.open()
    accounts, checker = accounts_and_checker(cfg, blocking)
    check_quota_rules(cfg.mailbox)  # [mailbox] quota_rule_file parses (mta/quota.py)
    store = MboxStore(cfg.mailbox, blocking, hostname=cfg.mail.myhostname)
    store_service = StoreService(store, spool_directory(cfg.mailbox))
    store_service.setServiceParent(top)  # first: stopped last, after the listeners

    def realm(delivery: LocalDelivery) -> MailRealm:
        return MailRealm(store, accounts, delivery, blocking)

    assemble(top, Parts(cfg, reactor, tls, maillog, accounts, checker, store, blocking,
                          realm, after=store_service.cleaned))
    add_acme(top, cfg, reactor, blocking, lambda: tls.reload(blocking), maillog)  # [tls] acme
    _on_hup(maillog, tls, reactor, blocking,
            lambda: top.reloader.reread(lambda path: checked_config(path, reload_warning)[0]))
    return top


def _delivery(top: MailService, p: Parts) -> LocalDelivery:
    """Local delivery, with the queue (its manager under ``top``) and the TLS reports."""
    from mailsuite.mta.delivery import LocalDelivery
    from mailsuite.mta.outbound import add_tls_reports, build_queue

    cfg, reactor, maillog = p.cfg, p.reactor, p.maillog
    delivery = LocalDelivery(cfg, p.accounts, p.store, maillog, p.blocking, now=reactor.seconds)
    delivery.virtual = VirtualAliases.from_config(cfg.mail, maillog)  # virtual_alias_maps
    with step("[mail] queue_directory"):
        delivery.queue = build_queue(cfg, delivery, maillog, reactor, p.blocking)
    qmgr = QueueService(delivery.queue, after=p.after)
    qmgr.setName("qmgr")
    qmgr.setServiceParent(top)
    add_tls_reports(top, cfg, reactor, p.blocking, delivery.queue)  # TLS-RPT: "tlsrpt"
    return delivery


@dataclass
class Parts:
    """What ``assemble`` puts together (the one-process server's, or the network process's)."""

    cfg: Config
    reactor: Any
    tls: Any
    maillog: MailLog
    accounts: Any
    checker: Any
    store: Any
    blocking: Blocking
    realm: Callable[[LocalDelivery], MailRealm]
    after: Any = None
    listeners: dict[str, int] | None = None
    open_dropped: Any = None


def assemble(top: MailService, p: Parts) -> LocalDelivery:
    """Delivery, queue, portal, the doors and local submission, under ``top``."""
    from mailsuite import metrics
    from mailsuite.auth.policy import AuthPolicy
    from mailsuite.autoconfig import build_site
    from mailsuite.imap.idle import IdlePoller
    from mailsuite.imap.recent import RecentTracker
    from mailsuite.imap.server import IMAPFactory
    from mailsuite.limits import Limits
    from mailsuite.pop3.server import POP3Factory
    from mailsuite.smtp.clientname import reverse_lookup
    from mailsuite.smtp.lmtp import LMTPFactory
    from mailsuite.smtp.server import SMTPFactory

    cfg, reactor, tls, maillog = p.cfg, p.reactor, p.tls, p.maillog
    delivery = _delivery(top, p)
    the_portal = portal.Portal(p.realm(delivery), [p.checker, checkers.AllowAnonymousAccess()])
    policy = AuthPolicy.from_config(cfg, maillog, reactor)  # one for all doors: across protocols
    names = MXResolver(cfg.mail.dns_resolver, reactor=reactor)
    lookup = functools.partial(reverse_lookup, names=names)
    checks = Restrictions.at_start(cfg.mail, delivery, reactor, names, maillog)  # SMTP doors'
    recent, idle_poller = RecentTracker(), IdlePoller()  # one \Recent and IDLE refresh: 143 + 993
    # one accept pipeline for every door (SMTP, LMTP, sendmail): its stages are the filters
    pipeline = Pipeline(delivery, maillog, cfg.mail.myhostname, delivery.now,
                        filter_stages(cfg, reactor, maillog, p.blocking))
    limits = Limits(cfg.mail, maillog, reactor)  # connection counts and rates: every door

    def make(name: str) -> Any:
        implicit = name in IMPLICIT_TLS
        if name == "metrics":
            return metrics.serve(maillog, limits, delivery.queue, tuple(cfg.listen.enabled()))
        if name in ("smtp", "submission", "smtps"):
            return SMTPFactory(cfg, the_portal, delivery, maillog, clock=reactor,
                               reverse_lookup=lookup, service=name, server_tls=tls,
                               implicit_tls=implicit, policy=policy, pipeline=pipeline,
                               limits=limits, front_door=name == "smtp",
                               restrictions=checks)
        if name in ("pop3", "pop3s"):
            return POP3Factory(cfg, the_portal, maillog, clock=reactor, server_tls=tls,
                               implicit_tls=implicit, policy=policy, limits=limits)
        if name == "lmtp":
            return LMTPFactory(cfg, delivery, maillog, pipeline, limits)
        if name in ("autoconfig", "autoconfigs"):
            return build_site(cfg, reactor)
        return IMAPFactory(cfg, the_portal, maillog, clock=reactor, server_tls=tls,
                           implicit_tls=implicit, policy=policy, recent=recent,
                           idle_poller=idle_poller, limits=limits)

    _add_listeners(top, cfg, make, tls, reactor, p.listeners)
    with step("[mail] queue_directory"):
        _local_submission(top, cfg, delivery, maillog, reactor, p.blocking, pipeline,
                          p.listeners, p.open_dropped)
    top.maillog, top.tls = maillog, tls  # type: ignore[attr-defined]
    top.reloader = Reloader(top, p, assemble)  # kill -HUP: mail.ini read again
    return delivery


def _add_listeners(top: service.MultiService, cfg: Config, make: Callable[[str], Any], tls: Any,
                   reactor: Any, adopted: dict[str, int] | None = None) -> None:
    """A listening service under ``top`` per enabled door (``make(name)`` its factory) and
    address of inet_interfaces, lmtp on a unix socket path; then the autoconfig sites.
    ``adopted``: the sockets the master bound, by service name (privilege separation)."""

    def listener(endpoint: str, factory: Any, name: str) -> None:
        svc: service.Service
        if adopted is not None:
            svc = AdoptedPort(adopted[name], factory, reactor)
        else:
            svc = strports.service(endpoint, factory, reactor)
        svc.setName(name)
        svc.setServiceParent(top)

    for name in SERVICES:
        port = getattr(cfg.listen, name)
        if port is None:
            continue
        factory = make(name)
        if isinstance(port, str):  # lmtp on a unix socket path
            endpoint = _unix_endpoint(port, name) if adopted is None else ""
            listener(endpoint, factory, f"{name}@{port}")
            continue
        if name in IMPLICIT_TLS:
            factory = tls.implicit(factory)
        for address in listen_addresses(cfg.mail.inet_interfaces):
            listener(tcp_endpoint(port, address), factory, f"{name}@{address}")
    if cfg.listen.metrics is not None:  # Prometheus metrics and /health (metrics.py)
        listener(tcp_endpoint(cfg.listen.metrics[1], cfg.listen.metrics[0]), make("metrics"),
                 "metrics")
    for name in ("autoconfig", "autoconfigs"):  # account set-up for mail clients (HTTP/HTTPS)
        port = getattr(cfg.listen, name)
        if port is None:
            continue
        site = make(name)
        if name == "autoconfigs":
            site = tls.implicit(site)
        for address in listen_addresses(cfg.mail.inet_interfaces):
            listener(tcp_endpoint(port, address), site, f"{name}@{address}")


def _unix_endpoint(path: str, name: str) -> str:
    """A unix socket any local MTA may reach (mode 0666; a stale socket is replaced). No
    twistd lockfile: its pid would be the one before twistd's fork; the queue directory's
    InstanceLock and the stale-socket check keep two servers apart instead."""
    with step(f"cannot listen on unix socket {path} ({name})"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    startup.remove_stale_socket(path, name)
    return f"unix:{path.replace(':', chr(92) + ':')}:mode=666:lockfile=0"


def _local_submission(top: service.MultiService, cfg: Config, delivery: Any, maillog: Any,
                      reactor: Any, blocking: Blocking, pipeline: Pipeline,
                      adopted: dict[str, int] | None = None, open_dropped: Any = None) -> None:
    """maildrop/ pickup (sendmail) and the control socket (flush), aliases checked at start.
    ``adopted``/``open_dropped``: the network process's (the master made the directories)."""
    queue_directory = cfg.mail.queue_directory
    if adopted is None:
        ensure_maildrop(queue_directory)
        ensure_public(queue_directory)
    pickup = Pickup(queue_directory, local_submitter(
        delivery, maillog, cfg.mail.myhostname, cfg.mail.myorigin, pipeline=pipeline), maillog,
        blocking, open_dropped=open_dropped)
    scanner = pickup_service(pickup, reactor)
    scanner.setName("pickup")
    scanner.setServiceParent(top)
    commands: dict[str, Handler] = {
        "pickup": pickup.scan,
        "flush": lambda: _flush(pickup, delivery),
        "delete": lambda queue_id: _delete(queue_directory, delivery, queue_id, blocking),
    }
    if getattr(delivery, "queue", None) is not None:  # the hold queue's postsuper verbs
        commands.update(queue_commands(delivery.queue))
    control: service.Service
    if adopted is not None:
        control = AdoptedPort(adopted["control"], ControlFactory(commands), reactor)
    else:
        control = strports.service(_unix_endpoint(control_path(queue_directory), "control"),
                                   ControlFactory(commands), reactor)
    control.setName("control")
    control.setServiceParent(top)
    # read now: a problem is in the maillog from the start; if it is one, it was warned of and
    # local mail is deferred until the file can be read
    with contextlib.suppress(AliasLookupError):
        delivery.aliases.snapshot()


def check_account_files(cfg: Config) -> None:
    """passdb = shadow: passwd_file and shadow_file must be readable at start (a typo or a
    server without root would otherwise refuse every login); a ConfigError names them."""
    if cfg.auth.passdb != "shadow":
        return
    errors = []
    for key in ("passwd_file", "shadow_file"):
        try:
            open(getattr(cfg.auth, key), "rb").close()
        except OSError as e:
            errors.append(f"{cfg.path}: [auth] {key}: {describe_os_error(e)}")
    if errors:
        raise ConfigError(errors)


def build_master(cfg: Config, reactor: Any, tls: ServerTLS | None) -> MailService:
    """The root master of a privilege-separated server (``[mail] mail_owner`` set): the
    listeners bound here and handed over, the password checks, the agents (privsep.master)."""
    from mailsuite.privsep.master import MasterService
    owner = startup.mail_owner(cfg)
    owner_checks(cfg, owner)
    blocking = InPool(reactor)
    maillog = MailLog.from_config(cfg.mail, reactor)
    with step("[mail] maillog_file"):
        maillog.open()
    accounts, checker = accounts_and_checker(cfg, blocking)
    queue_directory = cfg.mail.queue_directory
    with step("[mail] queue_directory"):
        ensure_maildrop(queue_directory)
        ensure_public(queue_directory)
        startup.give_queue(queue_directory, owner)
    bound = placeholders(cfg, tls, reactor)
    control = strports.service(_unix_endpoint(control_path(queue_directory), "control"),
                               protocol.Factory(), reactor)
    control.setName("control")
    control.setServiceParent(bound)
    try:
        bound.privilegedStartService()
    except StartupError as e:
        maillog.write("master", f"fatal: {e}")  # as Postfix: the maillog says it too
        maillog.close()
        raise
    listeners = {svc.name or "": held_socket(svc) for svc in bound}
    top = MailService()
    paths = [control_path(queue_directory)]
    if isinstance(cfg.listen.lmtp, str):
        paths.append(cfg.listen.lmtp)
    SocketFiles(paths).setServiceParent(top)  # stopped last: removes the socket files
    top.bound = bound  # type: ignore[attr-defined]  # keeps the sockets open
    top.listening = True
    cleanup = StoreService(None, spool_directory(cfg.mailbox), blocking)
    cleanup.setServiceParent(top)
    tls_files = None if tls is None else (cfg.tls.ssl_cert, cfg.tls.ssl_key)
    master = MasterService(cfg, reactor, checker, accounts, maillog, listeners, tls_files, owner)
    master.setServiceParent(top)
    add_acme(top, cfg, reactor, blocking, master.hup, maillog, owner)  # [tls] acme: here
    top.maillog = maillog
    master.reload = MasterReload(master, bound, lambda path: checked_config(path, reload_warning),
                                 lambda cfg, tls: placeholders(cfg, tls, reactor))

    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(master.hup)

    with contextlib.suppress(ValueError):  # not the main thread (tests)
        signal.signal(signal.SIGHUP, on_hup)
    return top


def placeholders(cfg: Config, tls: Any, reactor: Any) -> MailService:
    """The master's listeners of ``cfg``, not bound yet, with factories that serve nothing
    (the network process adopts the sockets)."""
    bound = MailService()
    idle = protocol.Factory()
    idle.noisy = False
    _add_listeners(bound, cfg, lambda name: idle, tls, reactor)
    return bound


class MailService(service.MultiService):
    """All services of one mail.ini. ``makeService`` binds the listeners itself, before twistd
    logs or daemonizes, so that a port in use is one line on the terminal; twistd's own
    ``privilegedStartService`` later finds them bound."""

    listening = False
    maillog: MailLog  # set by build
    instance_lock: startup.InstanceLock  # set by makeService, held while the daemon runs
    reloader: Reloader  # set by assemble

    def privilegedStartService(self) -> None:
        """Bind every listener; a failure is a StartupError naming address, port and service."""
        if self.listening:
            return
        self.listening = True
        service.Service.privilegedStartService(self)
        bound: list[StreamServerEndpointService] = []
        for svc in self:
            try:
                svc.privilegedStartService()
            except CannotListenError as e:
                for done in bound:  # close what was bound (for a caller that carries on)
                    done.stopService()
                raise StartupError(startup.listen_failure(svc.name or "", e)) from None
            if isinstance(svc, StreamServerEndpointService):
                bound.append(svc)


class StoreService(service.Service):
    """On start, removes what a killed server left in the spool directory (stale dotlocks,
    rewrite files: ``store.cleanup``). On stop, waits for the mailboxes' pending work: the
    compaction of what was expunged (answered before the file is rewritten) is finished, not
    left for the next start."""

    def __init__(self, store: MboxStore | None, spool: str | None = None,
                 blocking: Blocking | None = None) -> None:
        """``store`` None: only the clean-up (the master of privsep; agents hold the store)."""
        self.store = store
        self.spool = spool
        self.blocking = blocking if store is None else store.blocking
        self._cleaning: defer.Deferred[Any] = defer.succeed(None)
        self.setName("store")

    def startService(self) -> None:
        super().startService()
        if self.spool is not None and self.blocking is not None:
            self._cleaning = self.blocking(clean_spool, self.spool)
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
        return None if self.store is None else self.store.settle()


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
def _delete(queue_directory: str, delivery: Any, queue_id: str, blocking: Blocking) -> Any:
    """postsuper -d ID, for the control socket."""
    if (yield blocking(remove_dropped, queue_directory, queue_id)):
        return "removed"
    queue = getattr(delivery, "queue", None)
    if queue is not None and (yield queue.delete(queue_id)):
        return "removed"
    return "not found"


def _on_hup(maillog: Any, tls: ServerTLS | None, reactor: Any, blocking: Blocking,
            reread: Callable[[], None]) -> None:
    """``kill -HUP`` reopens maillog_file (after logrotate moved it), reads mail.ini again
    (mailsuite.reload) and reloads the TLS certificate and key (after a renewal); open
    connections are not touched."""

    def on_hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(maillog.reopen)
        reactor.callFromThread(reread)
        if tls is not None:
            reactor.callFromThread(tls.reload, blocking)

    with contextlib.suppress(ValueError):  # not the main thread (tests)
        signal.signal(signal.SIGHUP, on_hup)


def makeService(options: Options, reactor: Any = None) -> MailService:
    """The services on ``reactor`` (twistd's global reactor when none is given), with the queue
    directory locked and the listeners bound; a start-up failure ends twistd with one line on
    stderr (see mailsuite.startup)."""
    if reactor is None:
        from twisted.internet import reactor

    reactor.suggestThreadPoolSize(16)
    heap.fixed_mmap_threshold()
    startup.stop_on_early_sigterm(reactor)
    cfg = options["cfg"]
    lock = startup.InstanceLock(cfg.mail.queue_directory)
    try:
        startup.check_twistd_files(options.parent)
        lock.acquire()  # first: a second instance must not touch the first one's files
        if cfg.mail.mail_owner and os.geteuid() == 0:
            top = build_master(cfg, reactor, options["tls"])
        else:
            top = build(cfg, reactor, options["tls"])
    except ConfigError as e:
        startup.fatal(e.errors, startup.EX_CONFIG)
    except (StartupError, OSError) as e:
        startup.fatal([_failure_text(e)], startup.EX_FAILURE)
    try:
        top.privilegedStartService()
    except StartupError as e:
        top.maillog.write("master", f"fatal: {e}")  # as Postfix: the maillog says it too
        top.maillog.close()
        startup.fatal([str(e)], startup.EX_FAILURE)
    top.instance_lock = lock
    reactor.callWhenRunning(lock.write_pid)  # after the fork
    return top


def _failure_text(e: StartupError | OSError) -> str:
    return str(e) if isinstance(e, StartupError) else f"cannot start: {describe_os_error(e)}"
