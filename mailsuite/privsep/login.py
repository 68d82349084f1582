"""The logins of the network process: the password check through the master, and the
hand-over of a logged-in IMAP or POP3 session to the user's agent.

``RemoteChecker`` is the portal's password checker: for an IMAP or POP3 login the master's
answer (wire.CheckPassword) brings the stream of an agent of the user, already serving the
session (``Opened``); ``NetRealm`` makes it the avatar (``Handoff``), and the login's protocol
hands the client over to it: ``Splice`` then passes the bytes of the client, TLS already
removed, between the two.
"""

from __future__ import annotations

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

from mailsuite.auth.checker import LOGIN_FAILED, login_of
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.net import write_now
from mailsuite.privsep import wire
from mailsuite.privsep.common import Once, adopt_stream
from mailsuite.privsep.dorm import Dorm
from mailsuite.realm import Avatar, MailRealm

log = Logger()


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
            write_now(self.agent, data, producer_ok=True)

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
        write_now(self.splice.client, data, producer_ok=True)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.splice.agent_lost()



