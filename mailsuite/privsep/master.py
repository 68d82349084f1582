"""The master: the only root process left once the server runs.

It binds the ports, opens the maillog and reads the TLS key (tap.py), then starts the
zygote and, through it, the network process; afterwards it reads nothing from the network
and runs no protocol. What it does for the other processes is narrow (wire.py):

- ``CheckPassword``: the password check (shadow or PAM, with the auth cache); for an IMAP or
  POP3 login a success also opens the session: a stream to an agent of that account (started
  on demand, with the account's uid, gid and groups) that runs the rest of it;
- ``OpenDelivery``: a stream to an account's agent that takes mail for its INBOX;
- ``OpenDropped``: a file of maildrop/ opened for the pickup (sendmail's files are their
  writers' own, mode 0600).

A network process that dies is started again (after a second); the master exits when it is
stopped, and every other process follows it (their channels end).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.accounts import Account
from mailsuite.mta.forward import default_privs_uid, read_forward_file
from mailsuite.privsep import wire, zygote
from mailsuite.privsep.common import Channel, ChildOutput, Once
from mailsuite.store.safepath import mail_gid
from mailsuite.threads import InPool

log = Logger()

SESSIONS_PER_NAME = 4096  # IMAP and POP3 sessions of an account at once, sleeping ones too
ACCOUNTS_KEPT = 10000  # accounts whose look-up account_of keeps
#: descriptors answered and not yet sent on the network process's channel, at most: our copy
#: is closed only once Twisted has sent it (a number closed earlier could be reused for
#: something else before it leaves); past this, requests are refused
MAX_UNSENT_FDS = 256


class MasterService(service.Service):
    """Runs the zygote, the network process and the agents; answers the network process."""

    def __init__(self, cfg: Any, reactor: Any, checker: Any, accounts: Any, maillog: Any,
                 listeners: dict[str, int], tls_files: tuple[str, str] | None,
                 owner: tuple[int, int]) -> None:
        self.cfg = cfg
        self.reactor = reactor
        self.checker = checker
        self.accounts = accounts
        self.maillog = maillog
        self.listeners = listeners
        self.tls_files = tls_files
        self.owner = owner
        self.zygote: socket.socket | None = None
        self.zygote_pid = 0
        self.lifelines: list[int] = []
        self.net: Channel | None = None
        self.agents: dict[str, Channel] = {}
        #: agents that take no new stream (retiring, full) and still serve theirs
        self.aside: set[Channel] = set()
        self._unsent: list[tuple[Channel, int]] = []
        #: the IMAP and POP3 sessions of agents (CheckPassword's name of one -> its account):
        #: a session is hibernated and thawed only as the account it was opened for
        self.sessions: dict[bytes, str] = {}
        self._sessions_of: collections.Counter[str] = collections.Counter()
        self._accounts: dict[tuple[bool, str], tuple[Any, float]] = {}  # account_of's
        self._sweeper: Any = None
        self.stopping = False
        self.reload: Callable[[], None] | None = None  # set by tap.build_master

    # -- processes --
    def startService(self) -> None:
        super().startService()
        self._new_zygote()
        self._start_net()

    def _new_zygote(self) -> None:
        started = zygote.start()
        self.zygote_pid, self.zygote = started.pid, started.sock
        self.lifelines.append(started.lifeline)
        ChildOutput(started.output, self.reactor)

    def stopService(self) -> Any:
        """Every other process ends (the zygote's socket closed: it exits, and its children
        get SIGTERM and stop as they would); fires once they are all gone (at most 10 s), so
        that a server started next finds the ports free."""
        self.stopping = True
        super().stopService()
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
        if self.net is not None and self.net.transport is not None:
            self.net.transport.loseConnection()
        lifelines, self.lifelines = self.lifelines, []
        pid = self.zygote_pid

        def wait() -> None:
            zygote.wait_gone(lifelines, 10.0)
            zygote.reap(pid, 2.0)

        return InPool(self.reactor)(wait)

    def _spawn(self, spawn: zygote.Spawn, extra: list[tuple[str, int]],
               responder: Callable[[], Channel]) -> Channel:
        """Start a child with a channel to us (its first descriptor) and ``extra`` ones."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spawn.fds = ["channel", "maillog"] + [name for name, _ in extra]
        fds = [theirs.fileno(), self.maillog.fileno()] + [fd for _, fd in extra]
        try:
            pidfd = self._send_spawn(spawn, fds)
        finally:
            theirs.close()
        transport = self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                                       Once(responder))
        ours.close()
        channel: Channel = transport.protocol
        channel.pidfd = pidfd
        return channel

    def kill(self, channel: Channel) -> None:
        """A child that did not answer in time (wire.timeout_of): SIGKILL (through its pidfd:
        never another process that took its pid) and forgotten at once, so that the next
        request of its account starts a new agent (a network process: started again)."""
        log.error("a child did not answer in time: killed")
        if channel.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(channel.pidfd, signal.SIGKILL)
        for name, known in list(self.agents.items()):
            if known is channel:
                del self.agents[name]
        self.aside.discard(channel)
        if channel.transport is not None:
            channel.transport.abortConnection()  # type: ignore[attr-defined]

    def _send_spawn(self, spawn: zygote.Spawn, fds: list[int]) -> int:
        """To the zygote; one that died (killed, out of memory) is started again, once."""
        for attempt in range(2):
            try:
                if self.zygote is None:
                    raise BrokenPipeError("no zygote")
                return zygote.send(self.zygote, spawn, fds)
            except OSError:
                if attempt or self.stopping:
                    raise
                log.warn("the zygote is gone: starting it again")
                if self.zygote is not None:
                    self.zygote.close()
                self._new_zygote()
        raise AssertionError("not reached")

    def _start_net(self) -> None:
        if self.stopping:
            return
        extra = list(self.listeners.items())
        opened = []
        if self.tls_files is not None:
            for name, path in zip(("tls_cert", "tls_key"), self.tls_files, strict=True):
                fd = _memfd_copy(path)
                opened.append(fd)
                extra.append((name, fd))
        uid, gid = self.owner
        spawn = zygote.Spawn("net", uid, gid, [gid], {"cfg": self.cfg}, title="network")
        try:
            self.net = self._spawn(spawn, extra, lambda: NetChannel(self))
        except OSError as e:  # no zygote, no descriptors: try again, the ports stay bound
            log.error("cannot start the network process: {error}; again in 5 s", error=e)
            self.reactor.callLater(5.0, self._start_net)
        finally:
            for fd in opened:
                os.close(fd)

    def sent(self, channel: Channel | None, fd: int) -> None:
        """``fd`` goes out in an answer on ``channel``: closed once it has left (sweep)."""
        if len(self._unsent) >= MAX_UNSENT_FDS:
            self._close_sent()  # (a burst of logins: the timer's sweep may not have run)
        if channel is None or len(self._unsent) >= MAX_UNSENT_FDS:
            os.close(fd)
            raise wire.Refused("too many descriptors not read yet")
        self._unsent.append((channel, fd))
        if self._sweeper is None or not self._sweeper.active():
            self._sweeper = self.reactor.callLater(0.2, self._sweep)

    def _sweep(self) -> None:
        self._close_sent()
        self._sweeper = self.reactor.callLater(0.2, self._sweep) if self._unsent else None

    def _close_sent(self) -> None:
        """Close our copies of the descriptors that Twisted has sent (its _sendmsgQueue holds
        those it has not) or that can no longer be sent (the channel is gone)."""
        keep = []
        for channel, fd in self._unsent:
            transport = channel.transport
            queued = getattr(transport, "_sendmsgQueue", ()) if transport is not None else ()
            if fd in queued and getattr(transport, "connected", False):
                keep.append((channel, fd))
            else:
                os.close(fd)
        self._unsent = keep

    def hup(self) -> None:
        """``kill -HUP``: the maillog reopened (logrotate), for every process; mail.ini read
        again; the TLS files read again (a renewal) and given to the network process."""
        self.maillog.reopen()
        channels = [ch for ch in (self.net, *self.agents.values(), *self.aside)
                    if ch is not None]
        for channel in channels:
            d = channel.callRemote(wire.NewLog, fd=self.maillog.fileno())
            d.addErrback(lambda f: log.failure("maillog not handed over", f))
        if self.reload is not None:
            self.reload()  # mail.ini read again (privsep.reloading)
        if self.tls_files is None or self.net is None:
            return
        try:
            fds = [_memfd_copy(path) for path in self.tls_files]
        except OSError as e:
            log.error("TLS certificate not reloaded, the old one stays in use: {why}", why=e)
            return
        d = self.net.callRemote(wire.NewTLS, cert=fds[0], key=fds[1])

        def close(result: Any) -> Any:
            for fd in fds:
                os.close(fd)
            return result

        d.addBoth(close).addErrback(lambda f: log.failure("TLS reload failed", f))

    def net_lost(self, _: Any) -> None:
        self.net = None
        self.sessions.clear()  # their clients went with the network process
        self._sessions_of.clear()
        if not self.stopping:
            log.warn("the network process ended: starting it again")
            self.reactor.callLater(1.0, self._start_net)

    def agent_for(self, account: Account, privs: bool = False) -> defer.Deferred[Channel]:
        """The channel to ``account``'s agent, started now if it has none. ``privs``: an agent
        for alias commands and files only (its primary group alone, as Postfix). Never one of
        mail_owner: its home is the network process's to write (a ~/.forward there would run
        commands with that agent's groups)."""
        if account.uid == self.owner[0]:
            raise wire.Refused(f"no agent for mail_owner ({account.name})")
        channel = self.agents.get(account.name)
        if channel is None:
            groups = [account.gid] if privs else _groups(account)
            spawn = zygote.Spawn("agent", account.uid, account.gid, groups,
                                 {"cfg": self.cfg, "name": account.name, "home": account.home,
                                  "privs": privs},
                                 title=f"privs {_user_name(account.uid)}" if privs
                                 else f"agent {account.name}")

            def gone(lost: Channel) -> None:
                self.aside.discard(lost)
                if self.agents.get(account.name) is lost:
                    del self.agents[account.name]

            channel = self._spawn(spawn, [], lambda: AgentChannel(self, account, privs, gone))
            self.agents[account.name] = channel
        return defer.succeed(channel)

    def root_forward(self, channel: AgentChannel) -> defer.Deferred[dict[str, Any]]:
        """Root's ``~/.forward``, read by us, for the agent of default_privs that runs its
        commands and files (it cannot read root's home): it checks a target is in it."""
        if not channel.privs or channel.uid != default_privs_uid(self.cfg.mail.default_privs):
            raise wire.Refused("only the agent of default_privs runs root's ~/.forward")

        def read() -> dict[str, Any]:
            root = self.accounts.recipient("root")  # (the network process's "root" too)
            if root is None or root.uid != 0:
                return {"path": "", "items": []}
            return {"path": os.path.join(root.home, ".forward"),
                    "items": [t.text for t in read_forward_file(root)]}

        return InPool(self.reactor)(read)

    def retire(self, name: str, channel: Channel) -> None:
        self.set_aside(name, channel)

    def set_aside(self, name: str, channel: Channel) -> None:
        """``channel``'s agent (retiring, or full) takes no more streams; it still serves
        what it has (and gets the maillog at HUP) until it exits."""
        if self.agents.get(name) is channel:
            del self.agents[name]
            self.aside.add(channel)

    # -- what the network process may ask --
    def check_password(self, user: str, password: bytes, service: str = "", rip: str = "",
                       session: dict[str, Any] | None = None) -> defer.Deferred[dict[str, Any]]:
        """The verdict on ``user``'s password; with ``session`` (the fields of an IMAP or POP3
        login: wire.CheckPassword's ``tag``...), a success opens that session too."""
        creds = UsernamePassword(user.encode("utf-8"), password)
        if rip:
            creds.client_ip = rip  # type: ignore[attr-defined]  # PAM_RHOST (auth.pam)
        d = defer.maybeDeferred(self.checker.requestAvatarId, creds)

        def ok(avatar_id: bytes) -> Any:
            name = avatar_id.decode("utf-8")
            if session is None:
                return {"verdict": "ok", "name": name}
            opened = defer.maybeDeferred(self.open_session, name, service, rip=rip, **session)
            return opened.addCallbacks(lambda answer: {"verdict": "ok", "name": name, **answer},
                                       unopened, errbackArgs=(name,))

        def refused(failure: Any) -> dict[str, Any]:
            if failure.check(UnauthorizedLogin, LoginFailed):
                return {"verdict": "fail", "name": ""}
            log.failure("password check of {user} failed", failure, user=user)
            return {"verdict": "temp", "name": ""}

        def unopened(failure: Any, name: str) -> dict[str, Any]:
            log.failure("the {service} session of {name} was not opened", failure,
                        service=service, name=name)
            return {"verdict": "temp", "name": ""}

        return d.addCallbacks(ok, refused)

    @defer.inlineCallbacks
    def open_stream(self, name: str, role: str, **fields: Any) -> Any:
        """A stream to ``name``'s agent for ``role``: a session of a login account (the
        ticket was checked), or the delivery channel of any account mail is delivered to
        (root's agent takes deliveries only: it never runs a protocol or a command)."""
        account = yield self.account_of(name, delivery=role == "delivery")
        if account is None:
            raise wire.Refused(f"no such account: {name}")
        return (yield self.open_agent(account, role, **fields))

    def account_of(self, name: str, delivery: bool = False) -> defer.Deferred[Any]:
        """The account (NSS, in a thread), kept ``[auth] auth_cache_ttl`` (as Dovecot's userdb)."""
        key = (delivery, name)
        now = self.reactor.seconds()
        known = self._accounts.get(key)
        if known is not None and known[1] > now:
            return defer.succeed(known[0])
        lookup = self.accounts.recipient if delivery else self.accounts.lookup

        def keep(account: Any) -> Any:
            if account is not None:
                if len(self._accounts) >= ACCOUNTS_KEPT:
                    del self._accounts[next(iter(self._accounts))]
                self._accounts[key] = (account, now + self.cfg.auth.auth_cache_ttl)
            return account

        return InPool(self.reactor)(lookup, name).addCallback(keep)

    @defer.inlineCallbacks
    def open_agent(self, account: Account, role: str, privs: bool = False,
                   **fields: Any) -> Any:
        """A stream to an agent of ``account`` that serves it as ``role`` (``revive``: a
        hibernated IMAP session, wire.Revive with ``fields``; else wire.Attach)."""
        if role != "revive":
            fields = {"tag": b"", "method": "", "secure": False, "rip": "", "lip": "",
                      "role": role, **fields}
        command = wire.Revive if role == "revive" else wire.Attach
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for attempt in range(2):
                channel = yield self.agent_for(account, privs)
                try:
                    yield channel.callRemote(command, fd=theirs.fileno(), **fields)
                    break
                except wire.Full:  # default_client_limit: a new agent takes the next ones
                    if attempt:
                        raise wire.Refused(f"the agents of {account.name} are full") from None
                    self.set_aside(account.name, channel)
                except defer.TimeoutError:  # (killed: Channel.on_timeout)
                    raise wire.Refused(f"the agent of {account.name} did not answer") from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        fd = ours.detach()
        self.sent(self.net, fd)
        return {"fd": fd}

    def open_privs(self, uid: int) -> Any:
        """An agent with the rights alias commands and files run with (mta.forward's
        _default_privs and _owner_privs): default_privs, or an alias file's owner."""
        import pwd

        default = default_privs_uid(self.cfg.mail.default_privs)
        owners = set()
        for path in self.cfg.mail.alias_maps:
            with contextlib.suppress(OSError):
                owners.add(os.stat(path).st_uid)
        if uid == 0 or (uid != default and uid not in owners):
            raise wire.Refused(f"uid {uid} runs no alias command")
        try:
            pw = pwd.getpwuid(uid)
            account = Account(f"uid:{uid}", uid, pw.pw_gid, pw.pw_dir)
        except KeyError:
            account = Account(f"uid:{uid}", uid, uid, "/nonexistent")
        return self.open_agent(account, "delivery", privs=True)

    def open_session(self, name: str, service: str, **fields: Any) -> defer.Deferred[Any]:
        """A stream to an agent of ``name`` (whose password was right) for its IMAP or POP3
        session, and the session's name."""
        if service not in ("imap", "pop3"):
            raise wire.Refused(f"no session of service {service!r}")
        if self._sessions_of[name] >= SESSIONS_PER_NAME:
            raise wire.Refused(f"{name} has {SESSIONS_PER_NAME} sessions")
        session = os.urandom(18)
        self.sessions[session] = name
        self._sessions_of[name] += 1
        d = self.open_stream(name, service, session=session, **fields)

        def opened(answer: dict[str, Any]) -> dict[str, Any]:
            return {**answer, "session": session}

        def failed(failure: Any) -> Any:
            self.forget(session)
            return failure

        return d.addCallbacks(opened, failed)

    def forget(self, session: bytes) -> None:
        name = self.sessions.pop(session, None)
        if name is not None:
            self._sessions_of[name] -= 1
            if self._sessions_of[name] <= 0:
                del self._sessions_of[name]

    def hibernate(self, name: str, session: bytes, state: int, watch: int,
                  received: int) -> defer.Deferred[dict[str, Any]]:
        """An agent of ``name`` gives up an IMAP session: only one of its own account goes on
        to the network process (which closes nothing it was not given)."""
        if self.sessions.get(session) != name or self.net is None:
            for fd in (state, watch):
                os.close(fd)
            raise wire.Refused("no such session of this account")
        d = self.net.callRemote(wire.Hibernate, session=session, state=state, watch=watch,
                                received=received)
        return d.addBoth(_closing, state, watch)

    def thaw(self, session: bytes, state: int, **fields: Any) -> Any:
        """The network process brings a hibernated session back: into an agent of the account
        the session was opened for."""
        name = self.sessions.get(session)
        if name is None:
            os.close(state)
            raise wire.Refused("no such session")

        d = self.open_stream(name, "revive", session=session, state=state, **fields)
        return d.addBoth(_closing, state)

    def open_dropped(self, queue_id: str) -> dict[str, int]:
        """A regular file with one link in maildrop/, reached from the root-owned queue
        directory (startup.give_queue) without following a symbolic link anywhere."""
        if not queue_id.isalnum():
            raise wire.Refused(f"bad queue id {queue_id!r}")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        top = os.open(self.cfg.mail.queue_directory, flags | os.O_DIRECTORY)
        try:
            drop = os.open("maildrop", flags | os.O_DIRECTORY, dir_fd=top)
        finally:
            os.close(top)
        try:
            if os.fstat(drop).st_uid not in (0, self.owner[0]):
                raise wire.Refused("maildrop/ is not mail_owner's")
            fd = os.open(queue_id, flags | os.O_NONBLOCK, dir_fd=drop)
        finally:
            os.close(drop)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise wire.Refused(f"maildrop/{queue_id}: not a regular file with one link")
        self.sent(self.net, fd)
        return {"fd": fd}


def _user_name(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _groups(account: Account) -> list[int]:
    """The account's groups (NSS), and the mail group for the spool's dotlocks (Dovecot's
    mail_privileged_group = mail, as Debian sets it)."""
    try:
        groups = os.getgrouplist(account.name, account.gid)
    except (OSError, KeyError):
        groups = [account.gid]
    gid = mail_gid()
    if gid is not None and gid not in groups:
        groups.append(gid)
    return groups


def _closing(result: Any, *fds: int) -> Any:
    """Our copies of descriptors passed on, closed once the call that carried them is over."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    return result


def _memfd_copy(path: str) -> int:
    """A file's bytes in a memfd (the network process reads the key from it, not the file)."""
    fd = os.memfd_create("tls", os.MFD_CLOEXEC)
    with open(path, "rb") as f:
        data = f.read()
    os.write(fd, data)
    return fd



def _refused(failure: Any, keep: tuple[type[Exception], ...] = ()) -> Any:
    """Any error but Refused (and ``keep``, which the command declares) becomes Refused
    (logged), so the channel stays up."""
    if failure.check(wire.Refused, *keep):
        return failure
    log.failure("request of the network process failed", failure)
    raise wire.Refused(failure.getErrorMessage())


def _answer(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args, **kwargs).addErrback(_refused)


class NetChannel(Channel):
    """The master's end of the network process's channel: its four commands."""

    def __init__(self, master: MasterService) -> None:
        super().__init__(on_lost=master.net_lost, reactor=master.reactor,
                         on_timeout=master.kill)
        self.master = master

    @wire.CheckPassword.responder
    def check_password(self, user: str, password: bytes, service: str, rip: str,
                       tag: bytes | None = None, method: str | None = None,
                       secure: bool | None = None, lip: str | None = None) -> Any:
        session = None
        if tag is not None:
            session = {"tag": tag, "method": method or "", "secure": bool(secure),
                       "lip": lip or ""}
        return _answer(self.master.check_password, user, password, service, rip, session)

    @wire.Thaw.responder
    def thaw(self, session: bytes, state: int, secure: bool, rip: str, lip: str) -> Any:
        return _answer(self.master.thaw, session, state, secure=secure, rip=rip, lip=lip)

    @wire.Forget.responder
    def forget(self, session: bytes) -> dict[str, Any]:
        self.master.forget(session)
        return {}

    @wire.OpenDelivery.responder
    def open_delivery(self, user: str) -> Any:
        return _answer(self.master.open_stream, user, "delivery")

    @wire.OpenPrivs.responder
    def open_privs(self, uid: int) -> Any:
        return _answer(self.master.open_privs, uid)

    @wire.OpenDropped.responder
    def open_dropped(self, queue_id: str) -> Any:
        # a file taken meanwhile (FileNotFoundError) is the pickup's to skip, not an error
        d = defer.maybeDeferred(self.master.open_dropped, queue_id)
        return d.addErrback(_refused, (FileNotFoundError,))


class AgentChannel(Channel):
    """The master's end of an agent's channel: the agent may only say it retires, give up one
    of its IMAP sessions (Hibernate), and (the agent of default_privs) ask for root's
    ~/.forward."""

    def __init__(self, master: MasterService, account: Account, privs: bool,
                 gone: Callable[[Channel], None]) -> None:
        super().__init__(on_lost=gone, reactor=master.reactor, on_timeout=master.kill)
        self.master = master
        self.name, self.uid, self.privs = account.name, account.uid, privs

    @wire.Retire.responder
    def retire(self) -> dict[str, Any]:
        self.master.retire(self.name, self)
        return {}

    @wire.Hibernate.responder
    def hibernate(self, session: bytes, state: int, watch: int, received: int) -> Any:
        return _answer(self.master.hibernate, self.name, session, state, watch, received)

    @wire.RootForward.responder
    def root_forward(self) -> Any:
        return _answer(self.master.root_forward, self)
