"""The network process: every listener, every protocol before login, the queue, relay and
pickup, running as ``[mail] mail_owner`` with no capability.

It reaches the rest only through the master's commands (wire.CheckPassword, OpenDelivery...):
``RemoteChecker`` is its password checker (for an IMAP or POP3 login the master's answer
brings the stream of an agent of the user, already serving the session), ``NetRealm`` hands
the logged-in session over (``Handoff`` then ``Splice``: the bytes of the client, TLS already
removed, pass between the two), and ``RemoteStore`` is the store the
local delivery writes through (the agent of each recipient does the writing).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsuite import tap
from mailsuite.auth.checker import LOGIN_FAILED, login_of
from mailsuite.config import Config
from mailsuite.fsutil import write_all
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.privsep import wire
from mailsuite.privsep.dorm import Dorm
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
from mailsuite.realm import Avatar, MailRealm
from mailsuite.store.interfaces import StoreError, StoreRefused
from mailsuite.store.locking import LockTimeout
from mailsuite.threads import InPool
from mailsuite.tls import ServerTLS

log = Logger()

#: a delivery channel unused this long is closed (so an idle agent may exit)
CHANNEL_IDLE = 30.0


class AuthUnavailable(Exception):
    """The master could not check the password (its answer: ``temp``)."""


@dataclass
class Opened:
    """An IMAP or POP3 session the master opened at a right password: the stream of the
    user's agent (``fd``) and the session's name, until the login hands it over or drops it."""

    fd: int
    session: bytes


@implementer(ICredentialsChecker)
class RemoteChecker:
    """The password checker of the network process: the master checks (wire.CheckPassword).

    Credentials with a ``handoff`` (the IMAP or POP3 login's tag, method, secure, lip:
    auth.sasl.login) have the master open the session at a right password; the realm takes
    the ``Opened`` for the session's avatar (``take``)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, master: Any) -> None:
        self.master = master
        self._opened: dict[str, list[Opened]] = {}

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        try:
            name, password = login_of(credentials)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        service = str(getattr(credentials, "service", ""))
        fields = dict(getattr(credentials, "handoff", None) or {})
        rip = str(getattr(credentials, "client_ip", "") or fields.pop("rip", ""))
        fields.pop("rip", None)
        if service not in ("imap", "pop3"):
            fields = {}
        d = self.master.callRemote(wire.CheckPassword, user=name, password=password,
                                   service=service, rip=rip, **fields)
        return d.addCallbacks(self._verdict, _unavailable)

    def _verdict(self, answer: dict[str, Any]) -> bytes:
        if answer["verdict"] == "ok":
            if answer.get("fd") is not None:
                opened = self._opened.setdefault(answer["name"], [])
                opened.append(Opened(answer["fd"], answer["session"]))
                for dropped in opened[:-8]:  # (never taken: the realm takes it at once)
                    self.drop(dropped)
                del opened[:-8]
            return str(answer["name"]).encode("utf-8")
        if answer["verdict"] == "temp":
            raise AuthUnavailable("the password check failed")
        raise UnauthorizedLogin(LOGIN_FAILED)

    def take(self, name: str) -> Opened | None:
        opened = self._opened.get(name)
        if not opened:
            return None
        first = opened.pop(0)
        if not opened:
            del self._opened[name]
        return first

    def drop(self, opened: Opened) -> None:
        """A session opened and not handed over (the login went no further): its stream
        closed (its agent ends it) and its name forgotten by the master."""
        os.close(opened.fd)
        d = self.master.callRemote(wire.Forget, session=opened.session)
        d.addErrback(lambda f: None)  # a master that is gone forgets everything


class NetRealm(MailRealm):
    """MailRealm of the network process: IMAP and POP3 logins become a ``Handoff``."""

    def __init__(self, checker: RemoteChecker, master: Any, reactor: Any, dorm: Dorm,
                 *args: Any) -> None:
        super().__init__(*args)
        self.checker = checker
        self.master = master
        self.reactor = reactor
        self.dorm = dorm

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> Any:
        for iface, service in ((IImapAccount, "imap"), (pop3.IMailbox, "pop3")):
            if iface in interfaces and isinstance(avatarId, bytes):
                opened = self.checker.take(avatarId.decode("utf-8"))
                if opened is None:
                    return defer.fail(UnauthorizedLogin(LOGIN_FAILED))
                handoff = Handoff(self.checker, self.reactor, opened, service,
                                  avatarId.decode("utf-8"), self.dorm)
                result: Avatar = (iface, handoff, handoff.release)
                return defer.succeed(result)
        return super().requestAvatar(avatarId, mind, *interfaces)


def _unavailable(failure: Failure) -> None:
    """The master did not answer in time (wire.CALL_TIMEOUT): a temporary failure."""
    failure.trap(defer.TimeoutError)
    raise AuthUnavailable("the password check took too long")


def _drop(channel: Channel) -> None:
    """An agent's channel with a call unanswered in time: dropped (the next request opens a
    new one through the master, which kills a hung agent)."""
    if channel.transport is not None:
        channel.transport.abortConnection()  # type: ignore[attr-defined]


class Handoff:
    """The avatar of an IMAP or POP3 login here: the session goes to the user's agent, whose
    stream the password check brought (``opened``)."""

    def __init__(self, checker: RemoteChecker, reactor: Any, opened: Opened, service: str,
                 name: str, dorm: Dorm) -> None:
        self.checker, self.reactor, self.service = checker, reactor, service
        self.opened: Opened | None = opened
        self.name, self.dorm = name, dorm

    def hand_off(self, session: Any, rip: str, lip: str) -> None:
        """Splice the client to the agent's stream (which answers the login's tag: it had
        the login's fields with the password)."""
        opened, self.opened = self.opened, None
        if opened is None:
            raise RuntimeError("a session is handed off once")
        splice = Splice(session, self.reactor, opened.fd)
        if not splice.lost:
            self.dorm.add(opened.session, splice, self.name, rip, lip)
        else:
            self.dorm.forget(opened.session)

    def release(self) -> None:
        """The avatar's logout: a login that did not go on (a limit refused it, the client
        left) lets its agent's stream go."""
        opened, self.opened = self.opened, None
        if opened is not None:
            self.checker.drop(opened)


class Splice:
    """Passes bytes between a client (the session's transport) and the agent's stream, with
    flow control both ways; either end closing closes the other. ``sleeper``: while the
    session is hibernated (privsep/dorm.py) the client's bytes go to it instead.

    The login's protocol (IMAPServer, POP3Server: a few KB) is let go: the client's transport
    delivers to a small ``_ClientSide`` that keeps only the session's ``slot`` in the limits."""

    def __init__(self, session: Any, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.client = session.transport
        self.agent: Any = None
        self.sent = 0  # bytes written to the agent's stream (wire.Hibernate's "received")
        self.sleeper: Any = None
        self.on_end: Any = None  # called once when the session is over
        self.secure = bool(getattr(session, "secure", False))
        self.slot = getattr(session, "slot", None)
        self.lost = bool(getattr(session, "_lost", False))
        pending = _unread(session)
        session.splice = self  # (if its transport cannot be given another protocol)
        session.setTimeout(None)
        deadlines = getattr(session, "_login_deadlines", None)
        if deadlines is not None:
            deadlines.stop()
        if self.lost:
            os.close(fd)
            return
        _give_protocol(self.client, session, _ClientSide(self))
        self.connect(fd, pending)

    def connect(self, fd: int, pending: bytes) -> None:
        """Splice the client to a (new) agent stream, ``pending`` its first bytes."""
        agent = adopt_stream(self.reactor, fd, Once(lambda: _AgentSide(self)))
        self.sent = 0
        if pending:
            self.up(pending)
        self.client.registerProducer(agent, True)
        agent.registerProducer(self.client, True)
        self.client.resumeProducing()

    def up(self, data: bytes) -> None:
        if self.sleeper is not None:
            self.sleeper.up(data)
        elif self.agent is not None:
            self.sent += len(data)
            self.agent.write(data)

    def client_lost(self) -> None:
        if self.agent is not None:
            self.agent.unregisterProducer()
            self.agent.loseConnection()
        if self.sleeper is not None:
            self.sleeper.client_lost()
        self._end()

    def agent_lost(self) -> None:
        """The agent ended the session (LOGOUT, QUIT, its timeout): its place in the limits'
        counts is free at once (a TLS close may wait for the client); a TLS transport shuts
        down only once no producer is registered with it. (Or it went to hibernate: the
        sleeper keeps the client.)"""
        self.agent = None
        self.client.unregisterProducer()
        if self.sleeper is not None:
            self.sleeper.agent_gone()
            return
        if self.slot is not None:
            self.slot.release()
        self.client.loseConnection()
        self._end()

    def _end(self) -> None:
        end, self.on_end = self.on_end, None
        if end is not None:
            end()


class _ClientSide(protocol.Protocol):
    """The protocol of a spliced client's transport: its bytes go to the Splice."""

    def __init__(self, splice: Splice) -> None:
        self.splice = splice

    def dataReceived(self, data: bytes) -> None:
        self.splice.up(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        s = self.splice
        s.lost = True
        s.client_lost()
        if s.slot is not None:
            s.slot.release()


def _give_protocol(transport: Any, old: Any, new: protocol.Protocol) -> None:
    """``transport`` (TLS: its wrapped protocol; TCP: its protocol) delivers to ``new``."""
    if getattr(transport, "wrappedProtocol", None) is old:
        transport.wrappedProtocol = new
    elif getattr(transport, "protocol", None) is old:
        transport.protocol = new
    else:
        return
    new.transport = transport


def _unread(session: Any) -> bytes:
    """What the client sent after its login and the session had not yet handled."""
    queued = getattr(session, "_queue", None)  # POP3: lines waiting their turn
    out = b"".join(line + b"\r\n" for line in queued) if queued else b""
    if queued:
        queued.clear()
    out += session._buffer
    session._buffer = b""
    return out


class _AgentSide(protocol.Protocol):
    def __init__(self, splice: Splice) -> None:
        self.splice = splice

    def connectionMade(self) -> None:
        self.splice.agent = self.transport

    def dataReceived(self, data: bytes) -> None:
        self.splice.client.write(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.splice.agent_lost()



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
        return d.addCallback(_delivered)

    def settle(self) -> defer.Deferred[None]:
        return defer.succeed(None)

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


def _delivered(answer: dict[str, Any]) -> None:
    status = answer["status"]
    if status == "ok":
        return
    if status == "refused":
        raise StoreRefused(answer["text"])
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
    delivery.special = RemoteSpecial(store)
    delivery.expander.forward_reader = forward_reader(store)
    delivery.expander.include_reader = include_reader(store, cfg.mail.alias_maps)
    return top


class MasterLink(Channel):
    """The network process's end of its channel to the master (whose going ends us)."""

    top: Any = None  # the network process's services
    reactor: Any = None

    @wire.NewLog.responder
    def new_log(self, fd: int) -> dict[str, Any]:
        self.top.maillog.adopt(fd)
        return {}

    @wire.Hibernate.responder
    def hibernate(self, session: bytes, state: int, watch: int, received: int) -> Any:
        return self.top.dorm.hibernate(session, state, watch, received)

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
    maillog = maillog_on(fds.pop("maillog", None), cfg.mail.myhostname, reactor)
    link = MasterLink(on_lost=lambda _: stop(reactor))
    link.reactor = reactor
    adopt_stream(reactor, fds.pop("channel"), Once(lambda: link))
    tls_fds = (fds.pop("tls_cert", None), fds.pop("tls_key", None))
    top = link.top = build_network(cfg, reactor, maillog, link, fds, tls_fds)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    run(reactor)

