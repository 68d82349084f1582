"""The network process: every listener, every protocol before login, the queue, relay and
pickup, running as ``[mail] mail_owner`` with no capability.

It reaches the rest only through the master's commands (wire.CheckPassword, OpenDelivery...):
its logins are privsep.login's (the password checked by the master, a logged-in IMAP or POP3
session handed to the user's agent), and ``RemoteStore`` is the store the local delivery
writes through (the agent of each recipient does the writing).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pickle
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsuite import tap
from mailsuite.config import Config, ConfigError
from mailsuite.fsutil import write_all
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.privsep import wire
from mailsuite.privsep.dorm import Dorm
from mailsuite.privsep.ports import AdoptedPort
from mailsuite.privsep.login import NetRealm, RemoteChecker
from mailsuite.privsep.common import (
    Channel,
    Once,
    Shared,
    adopt_stream,
    fresh_reactor,
    maillog_on,
    run,
    start_logging,
    stop,
)
from mailsuite.realm import MailRealm
from mailsuite.startup import StartupError
from mailsuite.store.interfaces import StoreError, StoreRefused
from mailsuite.store.locking import LockTimeout
from mailsuite.store.quota import Limits, QuotaExceeded, Usage
from mailsuite.threads import InPool
from mailsuite.tls import ServerTLS

log = Logger()

#: what tap's build and assemble and the filters' stages import where they use it (the
#: master runs none of it): imported with this module, which the zygote's child imports
#: before it drops root, since this process runs as mail_owner, which may not be able to
#: read the server's Python
SERVER_MODULES = (
    "dkim", "mailsuite.auth.policy", "mailsuite.autoconfig", "mailsuite.filter.authcheck",
    "mailsuite.filter.milter", "mailsuite.imap.idle", "mailsuite.imap.recent",
    "mailsuite.imap.server", "mailsuite.limits", "mailsuite.metrics", "mailsuite.mta.delivery",
    "mailsuite.mta.outbound", "mailsuite.pop3.server", "mailsuite.realm",
    "mailsuite.smtp.clientname", "mailsuite.smtp.lmtp", "mailsuite.smtp.server",
    "mailsuite.store.mbox")
for _name in SERVER_MODULES:
    importlib.import_module(_name)

#: a delivery channel unused this long is closed (so an idle agent may exit)
CHANNEL_IDLE = 30.0


def _drop(channel: Channel) -> None:
    """An agent's channel with a call unanswered in time: dropped (the next request opens a
    new one through the master, which kills a hung agent)."""
    if channel.transport is not None:
        channel.transport.abortConnection()  # type: ignore[attr-defined]


class RemoteStore:
    """The store of the network process's local delivery: each account's agent writes."""

    def __init__(self, master: Any, reactor: Any) -> None:
        self.master = master
        self.reactor = reactor
        self._channels: dict[str, Shared] = {}
        self._used: dict[str, float] = {}
        self._sweep: Any = None

    def deliver(self, account: Any, data: bytes, sender: str) -> defer.Deferred[None]:
        return self.deliver_many(account, [(data, sender)])

    def deliver_many(self, account: Any, items: list[tuple[bytes, str]]) -> defer.Deferred[None]:
        fd = _sealed([data for data, _ in items])
        d = self._channel(account.name)
        d.addCallback(lambda ch: ch.callRemote(
            wire.Deliver, data=fd, sizes=[len(m) for m, _ in items],
            senders=[s for _, s in items]))

        def done(result: Any) -> Any:
            os.close(fd)
            return result

        d.addBoth(done)
        return d.addCallback(_delivered, self.quota_reply)

    def settle(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    #: [mailbox] quota_rule (or quota_rule_file) set: the agents answer wire.Quota
    quota_reply: tuple[int, str, str] | None = None

    def quota_report(self, account: Any) -> defer.Deferred[Any] | None:
        """Deferred[(Usage, Limits)] from the account's agent (mailsuite/store/quota.py)."""
        if self.quota_reply is None:
            return None
        d = self._channel(account.name).addCallback(lambda ch: ch.callRemote(wire.Quota))
        return d.addCallback(lambda a: (Usage(a["storage"], a["messages"]),
                                        Limits(a["storage_limit"], a["messages_limit"])))

    def _channel(self, name: str, uid: int | None = None) -> defer.Deferred[Any]:
        """The delivery channel to ``name``'s agent (opened through the master once); with
        ``uid``: the agent for alias commands that run as that uid (OpenPrivs)."""
        self._used[name] = self.reactor.seconds()
        if self._sweep is None:
            self._sweep = self.reactor.callLater(CHANNEL_IDLE, self._close_idle)
        known = self._channels.get(name)
        if known is None:

            def lost(_: Any = None) -> None:
                if self._channels.get(name) is shared:
                    del self._channels[name]

            def adopt(answer: dict[str, Any]) -> Any:
                return adopt_stream(self.reactor, answer["fd"], Once(lambda: Channel(
                    on_lost=lost, reactor=self.reactor, on_timeout=_drop))).protocol

            def failed(failure: Failure) -> Failure:
                lost()
                return failure

            made = (self.master.callRemote(wire.OpenDelivery, user=name) if uid is None
                    else self.master.callRemote(wire.OpenPrivs, uid=uid))
            made.addCallbacks(adopt, failed)
            known = shared = self._channels[name] = Shared(made)
        return known.get()

    def renew(self) -> None:
        """After a reload: the next deliveries open new channels (to the agents of the new
        configuration); those open now are closed once idle (deliveries on them finish)."""
        old, self._channels = self._channels, {}
        for known in old.values():
            if known.result is not None:
                self.reactor.callLater(CHANNEL_IDLE, known.result.transport.loseConnection)

    def _close_idle(self) -> None:
        self._sweep = None
        now = self.reactor.seconds()
        for name, used in list(self._used.items()):
            if now - used >= CHANNEL_IDLE:
                del self._used[name]
                known = self._channels.pop(name, None)
                if known is not None and known.result is not None:
                    known.result.transport.loseConnection()
        if self._used:
            self._sweep = self.reactor.callLater(CHANNEL_IDLE, self._close_idle)


def forward_reader(store: RemoteStore) -> Any:
    """Expander.forward_reader of the network process (it runs in a pool thread): the
    account's agent reads ``~/.forward`` with the account's rights."""
    from twisted.internet.threads import blockingCallFromThread

    from mailsuite.mta.aliases import Target

    def ask(account: Any) -> defer.Deferred[Any]:
        d = store._channel(account.name)
        return d.addCallback(lambda ch: ch.callRemote(wire.ReadForward))

    def read(account: Any) -> list[Any]:
        try:
            answer: dict[str, Any] = blockingCallFromThread(store.reactor, ask, account)
        except Exception as e:  # no agent: as an unreadable file, delivered to the mailbox
            log.warn("{user}: ~/.forward not read ({error}); delivering to the mailbox",
                     user=account.name, error=e)
            return []
        return [Target(text, answer["path"], line)
                for text, line in zip(answer["items"], answer["lines"], strict=True)]

    return read


def include_reader(store: RemoteStore, alias_maps: list[str]) -> Any:
    """Expander.include_reader of the network process (in a pool thread): an :include: file
    named with someone's rights is read by the agent with those rights (ReadInclude: an agent
    of OpenPrivs when they are an alias file's, else the user's); one named with root's
    (privs None: Postfix reads it as root) with ours."""
    from twisted.internet.threads import blockingCallFromThread

    from mailsuite.mta import forward

    def ask(privs: Any, via: tuple[str, ...], path: str, start: int) -> defer.Deferred[Any]:
        d = (store._channel(f"uid:{privs.uid}", uid=privs.uid) if via[0] in alias_maps
             else store._channel(privs.user))
        return d.addCallback(lambda ch: ch.callRemote(wire.ReadInclude, path=path, start=start,
                                                      via=list(via)))

    def read(path: str, privs: Any, via: tuple[str, ...]) -> tuple[int, int, str]:
        if privs is None:
            return forward.read_include_file(path, None)
        pieces: list[str] = []
        for _ in range(forward.LIST_FILE_LIMIT // wire.INCLUDE_PIECE + 2):
            try:
                a: dict[str, Any] = blockingCallFromThread(
                    store.reactor, ask, privs, via, path, sum(map(len, pieces)))
            except Exception as e:  # Refused, a lost agent: as a file that cannot be read
                raise OSError(errno.EACCES, str(e)) from e
            if a["errno"]:
                raise OSError(a["errno"], os.strerror(a["errno"]))
            pieces.append(a["text"])
            if not a["more"]:
                break
        return a["mode"], a["owner"], "".join(pieces)

    return read


class RemoteSpecial:
    """LocalDelivery.special of the network process: a command or file target runs in an
    agent with the rights it must run with, which checks it is where it came from: the
    user's agent for one of ``~/.forward``, an agent of default_privs (or of the file's owner)
    for one of alias_maps (:include: files may name none), and the agent of default_privs for
    root's own ~/.forward (no agent of root runs anything)."""

    def __init__(self, store: RemoteStore) -> None:
        self.store = store

    def __call__(self, dest: Any, data: bytes, sender: str, original: str, final: str,
                 now: float) -> defer.Deferred[str]:
        from mailsuite.mta import forward
        if dest.sender and sender:  # owner-NAME, as forward.deliver_special
            sender = dest.sender
        origin = dest.origin.rsplit(", line ", 1)[0]
        if dest.privs.uid == 0:  # (Expander gives them default_privs' rights)
            return defer.fail(forward.TargetFailed(False, "4.3.0", "no command or file runs"
                                                   " as root"))
        if origin == os.path.join(dest.privs.home, ".forward"):
            channel = self.store._channel(dest.privs.user)
        else:  # an alias file's, or root's ~/.forward's (default_privs: the master checks)
            channel = self.store._channel(f"uid:{dest.privs.uid}", uid=dest.privs.uid)
        program = isinstance(dest, forward.Program)
        fd = _sealed([data])
        channel.addCallback(lambda ch: ch.callRemote(
            wire.DeliverSpecial, kind="program" if program else "file",
            target=dest.command if program else dest.path, origin=origin, data=fd,
            sender=sender, original=original, final=final, when=now))

        def done(result: Any) -> Any:
            os.close(fd)
            return result

        channel.addBoth(done)

        def answer(a: dict[str, Any]) -> str:
            if a["status"] == "sent":
                return str(a["text"])
            raise forward.TargetFailed(a["permanent"], a["dsn"], a["text"])

        return channel.addCallback(answer)


def _sealed(messages: list[bytes]) -> int:
    """A memfd holding the messages one after the other, sealed against any change."""
    import fcntl
    fd = os.memfd_create("mail", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        for data in messages:
            write_all(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _delivered(answer: dict[str, Any], quota_reply: Any = None) -> None:
    status = answer["status"]
    if status == "ok":
        return
    if status == "refused":
        raise StoreRefused(answer["text"])
    if status == "overquota":  # the agent's store/quota.py
        raise QuotaExceeded(answer["text"], quota_reply)
    if status == "locked":
        raise LockTimeout(answer["text"], answer["lock_path"])
    raise StoreError(answer["text"])


def build_network(cfg: Config, reactor: Any, maillog: MailLog, master: Any,
                  listeners: dict[str, int],
                  tls_fds: tuple[int | None, int | None]) -> tap.MailService:
    """The services of the network process: tap's assembly with the master's listeners, its
    password checks (RemoteChecker) and the agents as the store (RemoteStore, RemoteSpecial)."""
    cert, key = tls_fds
    tls = None if cert is None or key is None else ServerTLS(f"/proc/self/fd/{cert}",
                                                             f"/proc/self/fd/{key}")
    blocking = InPool(reactor)
    top = tap.MailService()
    accounts, _ = tap.accounts_and_checker(cfg, blocking)
    checker = RemoteChecker(master)
    store = RemoteStore(master, reactor)
    if cfg.mailbox.quota_configured:  # the RCPT check asks the agents (mta/quota.py)
        store.quota_reply = cfg.mailbox.quota_status_overquota
    dorm = top.dorm = Dorm(master, reactor, maillog)  # type: ignore[attr-defined]

    def realm(delivery: LocalDelivery) -> MailRealm:
        return NetRealm(checker, master, reactor, dorm, store, accounts, delivery, blocking)

    def open_dropped(queue_id: str) -> Any:
        def refused(failure: Failure) -> None:  # a link, a symlink: left in place, as read()
            failure.trap(wire.Refused)
            raise ValueError(failure.getErrorMessage())

        d = master.callRemote(wire.OpenDropped, queue_id=queue_id)
        return d.addCallbacks(lambda answer: answer["fd"], refused)

    delivery = tap.assemble(top, tap.Parts(cfg, reactor, tls, maillog, accounts, checker, store,
                                           blocking, realm, listeners=listeners,
                                           open_dropped=open_dropped))

    def fixup(delivery: LocalDelivery, cfg: Config) -> None:
        delivery.special = RemoteSpecial(store)
        delivery.expander.forward_reader = forward_reader(store)
        delivery.expander.include_reader = include_reader(store, cfg.mail.alias_maps)

    fixup(delivery, cfg)
    top.reloader.fixup = fixup  # the same after a reload
    top.remote_store = store  # type: ignore[attr-defined]
    return top


class MasterLink(Channel):
    """The network process's end of its channel to the master (whose going ends us)."""

    top: Any = None  # the network process's services
    reactor: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fresh: dict[str, int] = {}  # listeners of a reload (Listen), by name

    @wire.NewLog.responder
    def new_log(self, fd: int) -> dict[str, Any]:
        self.top.maillog.adopt(fd)
        return {}

    @wire.Hibernate.responder
    def hibernate(self, session: bytes, state: int, watch: int, received: int) -> Any:
        return self.top.dorm.hibernate(session, state, watch, received)

    @wire.Listen.responder
    def listen(self, name: str, fd: int) -> dict[str, Any]:
        self.fresh[name] = fd
        return {}

    @wire.Reload.responder
    def reload(self, cfg: int) -> dict[str, Any]:
        """The master's new configuration for new sessions (mailsuite.reload); the listeners
        it bound (Listen) adopted; any error is Refused, and nothing was swapped."""
        try:
            new = pickle.loads(os.pread(cfg, os.fstat(cfg).st_size, 0))
            self.top.reloader.apply(new, self._adopt)
        except ConfigError as e:
            raise wire.Refused("; ".join(e.errors)) from None
        except (StartupError, OSError, KeyError, ValueError) as e:
            raise wire.Refused(str(e)) from None
        finally:
            os.close(cfg)
            for fd in self.fresh.values():
                os.close(fd)
            self.fresh.clear()
        self.top.remote_store.renew()
        return {}

    def _adopt(self, name: str, factory: Any) -> AdoptedPort:
        svc = AdoptedPort(self.fresh.pop(name), factory, self.reactor)
        svc.setName(name)
        return svc

    @wire.NewTLS.responder
    def new_tls(self, cert: int, key: int) -> Any:
        tls = self.top.tls
        if tls is None:
            os.close(cert)
            os.close(key)
            return {"loaded": False}
        old = tls.cert_path, tls.key_path
        tls.cert_path, tls.key_path = f"/proc/self/fd/{cert}", f"/proc/self/fd/{key}"

        def done(loaded: bool) -> dict[str, Any]:
            if loaded:  # the memfds of the certificate before are no longer needed
                drop = [int(path.rsplit("/", 1)[1]) for path in old
                        if path.startswith("/proc/self/fd/")]
            else:
                tls.cert_path, tls.key_path = old
                drop = [cert, key]
            for fd in drop:
                with contextlib.suppress(OSError):
                    os.close(fd)
            return {"loaded": loaded}

        return tls.reload(InPool(self.reactor)).addCallback(done)


def main(spawn: Any, fds: dict[str, int]) -> None:
    """The network process (the zygote has made it mail_owner)."""
    start_logging(spawn.title)
    reactor = fresh_reactor()
    p = spawn.params
    cfg = p["cfg"]
    maillog = maillog_on(fds.pop("maillog", None), cfg.mail, reactor)
    link = MasterLink(on_lost=lambda _: stop(reactor))
    link.reactor = reactor
    adopt_stream(reactor, fds.pop("channel"), Once(lambda: link))
    tls_fds = (fds.pop("tls_cert", None), fds.pop("tls_key", None))
    top = link.top = build_network(cfg, reactor, maillog, link, fds, tls_fds)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    run(reactor)

