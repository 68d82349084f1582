"""An agent: the process that holds one user's mail, running with that user's uid and groups.

The master starts one per account on demand (through the zygote) and hands it streams: the
logged-in IMAP and POP3 sessions of the account (the network process only passes their bytes
on, TLS included) and delivery channels (the network process's queue manager writing the
account's mail). Everything it opens, it opens with the account's rights: a symlink or hard
link the user planted leads nowhere the user could not go. All sessions of an account share
the agent, so \\Recent, IDLE pushes and the open mailboxes are shared as before.

An agent with nothing attached for ``IDLE_EXIT`` seconds retires: it tells the master (which
starts a new one for the next request), serves what is still attached, and exits.
"""

from __future__ import annotations

import itertools
import os
import stat
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols import amp

from mailsuite.accounts import Account
from mailsuite.fsutil import pread_all
from mailsuite.imap import hibernate
from mailsuite.imap.idle import IdlePoller
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.recent import RecentTracker
from mailsuite.imap.server import IMAPServer
from mailsuite.imap.session import states
from mailsuite.mta import forward
from mailsuite.mta.asuser import Privileges
from mailsuite.pop3.mailbox import open_pop3_mailbox
from mailsuite.pop3.server import POP3Server
from mailsuite.privsep import wire
from mailsuite.privsep.sleep import Sleep
from mailsuite.privsep.common import (
    Channel,
    Once,
    adopt_stream,
    fresh_reactor,
    maillog_on,
    run,
    start_logging,
    stop,
)
from mailsuite.store.interfaces import StoreRefused
from mailsuite.store.locking import LockTimeout
from mailsuite.store.mbox import MboxStore
from mailsuite.store.quota import QuotaExceeded
from mailsuite.threads import InPool

log = Logger()

#: Dovecot's idle_kill of a mail process: an agent with nothing attached exits after this.
IDLE_EXIT = 60.0
#: ... and after its last IMAP session went to hibernate (imap/hibernate.py)
HIBERNATED_EXIT = 5.0
#: the most bytes one Deliver may carry (the queue's group commits are far smaller; a
#: message is at most message_size_limit plus the headers delivery adds)
MAX_DELIVER = 256 * 1024 * 1024


class Agent:
    """The state of one agent: its account, store and sessions."""

    def __init__(self, reactor: Any, cfg: Any, account: Account, maillog: Any) -> None:
        self.reactor = reactor
        self.cfg = cfg
        self.account = account
        self.maillog = maillog
        self.store = MboxStore(cfg.mailbox, InPool(reactor), hostname=cfg.mail.myhostname)
        self.recent = RecentTracker()
        self.idle_poller = IdlePoller()
        self.attached = 0
        self.privs = False  # an agent for alias commands and files only (master.open_privs)
        self.prepared = False  # a login here has made the special-use folders (prepare_session)
        self.master: Channel | None = None
        self.retiring = False
        self._idle_call: Any = None

    # -- life --
    def hold(self) -> None:
        self.attached += 1
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def release(self, _: Any = None, hibernated: bool = False) -> None:
        """A stream is done; the last one starts the wait before the agent retires (a short
        one when it was an IMAP session gone to hibernate: its client is idle, and the agent
        is what the hibernation is there to save)."""
        self.attached -= 1
        if self.attached <= 0:
            self.attached = 0
            if self.retiring:
                self._exit()
            else:
                wait = HIBERNATED_EXIT if hibernated else IDLE_EXIT
                self._idle_call = self.reactor.callLater(wait, self._retire)

    def _retire(self) -> None:
        self._idle_call = None
        if self.attached or self.master is None:
            return
        self.retiring = True
        d = self.master.callRemote(wire.Retire)
        d.addBoth(lambda _: self._exit() if not self.attached else None)

    def _exit(self) -> None:
        d = self.store.settle()
        d.addBoth(lambda _: stop(self.reactor))

    def master_lost(self, _: Any) -> None:
        """The master is gone (stopped or killed): finish nothing new, exit."""
        self.master = None
        self.retiring = True
        if not self.attached:
            self._exit()

    # -- attachments --
    def attach(self, role: str, fd: int, params: dict[str, Any]) -> None:
        if (self.account.uid == 0 or self.privs) and role != "delivery":
            os.close(fd)
            raise wire.Refused("this agent takes deliveries only")
        if self.attached >= self.cfg.mail.default_client_limit:
            os.close(fd)
            raise wire.Full(f"{self.attached} streams (default_client_limit)")
        self.hold()
        if role == "imap":
            factory: Any = Once(lambda: self._imap(params))
        elif role == "pop3":
            factory = Once(lambda: self._pop3(params))
        else:
            factory = Once(lambda: DeliveryChannel(self))
        adopt_stream(self.reactor, fd, factory)

    def revive(self, fd: int, params: dict[str, Any]) -> None:
        """Serve a thawed IMAP session (wire.Revive): its state is checked before anything."""
        if self.account.uid == 0 or self.privs:
            os.close(fd)
            raise wire.Refused("this agent takes deliveries only")
        if self.attached >= self.cfg.mail.default_client_limit:
            os.close(fd)
            raise wire.Full(f"{self.attached} streams (default_client_limit)")
        try:
            params["resume"] = hibernate.decode(params.pop("state"))
        except hibernate.BadState as e:
            os.close(fd)
            raise wire.Refused(f"not a session state: {e}") from None
        self.hold()
        adopt_stream(self.reactor, fd, Once(lambda: self._imap(params)))

    def _imap(self, p: dict[str, Any]) -> protocol.Protocol:
        return AgentIMAP(self, p)  # type: ignore[abstract]  # see IMAPFactory.buildProtocol

    def _pop3(self, p: dict[str, Any]) -> protocol.Protocol:
        return AgentPOP3(self, p)



class _NoDeadlines:
    """The login deadlines of a session that starts logged in (the network process had them)."""

    def command(self) -> None:
        pass

    def stop(self) -> None:
        pass


class AgentIMAP(IMAPServer):  # type: ignore[misc]
    """The rest of an IMAP session whose LOGIN the network process took: it starts in the
    authenticated state and answers the login's tag (capabilities after login)."""

    CAN_UNAUTHENTICATE = False  # it runs as the user: no other login (imap/unauthenticate.py)

    def __init__(self, agent: Agent, p: dict[str, Any]) -> None:
        super().__init__(agent.cfg, None, agent.maillog, agent.reactor, agent.recent,
                         agent.idle_poller)
        self.agent = agent
        self.params = p
        self.secure = p["secure"]
        self._sleep = Sleep(self)

    def connectionMade(self) -> None:
        self.tags = {}  # type: ignore[assignment]  # what IMAP4Server.connectionMade sets
        self.canStartTLS = False
        self._login_deadlines = _NoDeadlines()  # type: ignore[assignment]
        # the LOGIN is the command in flight until its tagged OK: what the client pipelined
        # behind it is read after that, as in one process (a thawed session: its IDLE)
        self._in_flight = True
        self._command = b"LOGIN"
        self._pause_while_busy()
        avatar = ImapAccount(self.agent.store, self.agent.account)
        if "resume" in self.params:
            self._sleep.wake(avatar, self.params["resume"])
            return
        self.resume_session(self.params["tag"], self.agent.account.name, avatar, avatar.logout)

    async def prepare_session(self, avatar: Any) -> None:
        """The special-use folders, made at the first login this agent serves (not at every
        one: a folder removed meanwhile is made again by the next LIST, as before)."""
        if not self.agent.prepared:
            await super().prepare_session(avatar)
            self.agent.prepared = True

    def dataReceived(self, data: bytes) -> None:
        self._sleep.received += len(data)
        super().dataReceived(data)

    @states("auth", "select")
    def cmd_IDLE(self, tag: bytes, args: Any) -> None:
        super().cmd_IDLE(tag, args)
        self._sleep.plan()

    def _stop_idle(self) -> None:
        self._sleep.cancel()
        super()._stop_idle()

    def flush_updates(self, allow_expunge: bool = True) -> None:
        if not self._sleep.going:  # the snapshot sent is what the client was told
            super().flush_updates(allow_expunge)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.agent.release(hibernated=self._sleep.gone)

    def _rip(self) -> str:
        return str(self.params["rip"])

    def _lip(self) -> str:
        return str(self.params["lip"])


class AgentPOP3(POP3Server):
    """The rest of a POP3 session after PASS / AUTH: the maildrop is opened (and locked) here,
    then ``+OK Logged in.``; a maildrop that cannot be opened ends the session."""

    def __init__(self, agent: Agent, p: dict[str, Any]) -> None:
        super().__init__()
        self.agent = agent
        self.params = p
        self.config, self.maillog, self.clock = agent.cfg, agent.maillog, agent.reactor
        self.secure = p["secure"]

    def connectionMade(self) -> None:
        self.init_session()
        self._login_deadlines = _NoDeadlines()  # type: ignore[assignment]
        self.rip, self.lip = self.params["rip"], self.params["lip"]
        self._login_user = self.agent.account.name
        self._login_method = self.params["method"]
        self.setTimeout(self.timeOut)
        account = self.agent.account
        self._busy = d = open_pop3_mailbox(self.agent.store, account)
        d.addCallbacks(self._opened, self._not_opened)
        d.addBoth(self._done)

    def _opened(self, box: Any) -> None:
        if self._lost:
            box.logout()
            return
        self.mbox, self._logout = box, box.logout
        self.reply(b"+OK Logged in.")

    def _not_opened(self, failure: Any) -> None:
        log.failure("POP3: opening the INBOX of {user} failed", failure,
                    user=self.agent.account.name)
        self.reply(b"-ERR [SYS/TEMP] Temporary authentication failure.")
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.agent.release()

    def _finish(self) -> None:
        if self.mbox is not None:  # the network process logged everything before the login
            super()._finish()


class DeliveryChannel(amp.AMP):
    """The network process's channel for the account's incoming mail."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.agent.release()

    @wire.Deliver.responder
    def deliver(self, data: int, sizes: list[int], senders: list[str]) -> Any:
        if self.agent.privs:
            os.close(data)
            raise wire.Refused("no mailbox here")
        try:
            items = _split(data, sizes, senders)
        finally:
            os.close(data)
        d = defer.maybeDeferred(self.agent.store.deliver_many, self.agent.account, items)
        d.addCallbacks(lambda _: {"status": "ok", "text": "", "lock_path": ""}, _verdict)
        return d

    @wire.Quota.responder
    def quota(self) -> Any:
        d = self.agent.store.quota_report(self.agent.account)
        if d is None or self.agent.privs:
            return {"on": False, "storage": 0, "messages": 0, "storage_limit": 0,
                    "messages_limit": 0}
        return d.addCallback(lambda r: {"on": True, "storage": r[0].storage,
                                        "messages": r[0].messages, "storage_limit": r[1].storage,
                                        "messages_limit": r[1].messages})

    @wire.DeliverSpecial.responder
    def deliver_special(self, kind: str, target: str, origin: str, data: int, sender: str,
                        original: str, final: str, when: float) -> Any:
        try:
            (message, _), = _split(data, [os.fstat(data).st_size], [sender])
        finally:
            os.close(data)
        account = self.agent.account
        if account.uid == 0:  # Postfix runs root's commands as default_privs: not here
            raise wire.Refused("no command or file is run as root")
        if self.agent.privs and origin not in self.agent.cfg.mail.alias_maps:
            listed = self._in_root_forward(origin, kind, target)
        elif self.agent.privs:
            listed = self.agent.store.blocking(_in_alias_file, origin, account.uid, kind, target,
                                               self.agent.cfg.mail.default_privs)
        else:
            listed = self.agent.store.blocking(_in_forward, account, kind, target)
        d = listed.addCallback(lambda _: self.agent.store.blocking(
            _special, account, kind, target, message, sender, original, final, when))
        return d.addCallbacks(lambda text: {"status": "sent", "permanent": False, "dsn": "2.0.0",
                                            "text": text}, _special_failed)


    def _in_root_forward(self, origin: str, kind: str, target: str) -> defer.Deferred[None]:
        """The target is in root's ``~/.forward`` (``origin``), which the master reads for
        us (the agent of default_privs): as _in_forward."""
        if self.agent.master is None:
            return defer.fail(wire.Refused("no master"))

        def check(answer: dict[str, Any]) -> None:
            from mailsuite.mta.aliases import Target
            items = [Target(text, answer["path"], 0) for text in answer["items"]]
            if origin != answer["path"] or not _listed(items, kind, target):
                raise forward.TargetFailed(False, "4.7.1", f"{target!r} is not (or no longer)"
                                           f" in {answer['path']}")

        return self.agent.master.callRemote(wire.RootForward).addCallback(check)

    @wire.ReadInclude.responder
    def read_include(self, path: str, start: int, via: list[str]) -> Any:
        if self.agent.account.uid == 0:
            raise wire.Refused("root's agent reads no :include: file")
        return self.agent.store.blocking(_read_include, self.agent, path, start, tuple(via))

    @wire.ReadForward.responder
    def read_forward(self) -> Any:
        account = self.agent.account
        d = self.agent.store.blocking(forward.read_forward_file, account)
        return d.addCallback(lambda items: {
            "path": os.path.join(account.home, ".forward"),
            "items": [t.text for t in items], "lines": [t.lineno for t in items]})


def _read_include(agent: Agent, path: str, start: int,
                  via: tuple[str, ...]) -> dict[str, Any]:
    """Blocking: a piece of an :include: file the agent may read (see wire.ReadInclude)."""
    if not _include_named(agent, path, via):
        raise wire.Refused(f"{path} is not named where this agent reads from")
    try:
        mode, owner, text = forward.read_include_file(path, None)  # (as this agent's user)
    except OSError as e:
        return {"errno": e.errno or 5, "mode": 0, "owner": 0, "text": "", "more": False}
    end = start + wire.INCLUDE_PIECE
    return {"errno": 0, "mode": mode, "owner": owner, "text": text[start:end],
            "more": len(text) > end}


def _include_named(agent: Agent, path: str, via: tuple[str, ...]) -> bool:
    """Blocking: ``via`` (wire.ReadInclude) starts where the agent's rights come from (its
    account's ~/.forward; an alias file of its rights for an agent of OpenPrivs; or an
    :include: file its user owns, whose owner's rights Postfix gives what it names), each of
    its files names the next (read again, with the agent's rights), and the last names
    ``path``; at most MAX_INCLUDE_DEPTH :include: files, none twice."""
    from mailsuite.mta.aliases import parse_list, read_file
    files = [*via, path]
    if not via or len(files) > forward.MAX_INCLUDE_DEPTH + 1 or len(set(files)) != len(files):
        return False
    top, uid = via[0], agent.account.uid
    links, own_top = files[1:], False
    try:
        if agent.privs:
            if top not in agent.cfg.mail.alias_maps:
                return False
            table, _, _, owner = read_file(top)
            if owner != uid or not any(_names(items, files[1]) for items in table.values()):
                return False
        elif top == os.path.join(agent.account.home, ".forward"):
            if not _names(forward.read_forward_file(agent.account), files[1]):
                return False
        else:  # an :include: file of our user's, named with root's rights
            links, own_top = files, True
        for i, (here, there) in enumerate(itertools.pairwise(links)):
            mode, owner, text = forward.read_include_file(here, None)
            if (own_top and i == 0 and owner != uid) or not stat.S_ISREG(mode) or (
                    mode & stat.S_IWOTH) or not _names(parse_list(text, here), there):
                return False
    except OSError:
        return False
    return True


def _names(items: Any, path: str) -> bool:
    """Whether list file items name ``path`` as an :include:."""
    want = os.path.normpath(path)
    return any(t.kind == "include" and os.path.normpath(
        t.text[len(":include:"):].strip()) == want for t in items)


def _listed(items: list[Any], kind: str, target: str) -> bool:
    for item in items:
        if kind == "program" and item.kind == "program" and item.text[1:].strip() == target:
            return True
        if kind == "file" and item.kind == "file" and os.path.normpath(item.text) == target:
            return True
    return False


def _in_forward(account: Account, kind: str, target: str) -> None:
    """Blocking: the target is in the account's ``~/.forward`` (read again, as the account)."""
    if not _listed(forward.read_forward_file(account), kind, target):
        raise forward.TargetFailed(False, "4.7.1", f"{target!r} is not (or no longer) in"
                                   f" ~{account.name}/.forward")


def _in_alias_file(path: str, uid: int, kind: str, target: str,
                   default_privs: str = "") -> None:
    """Blocking: the target is in alias file ``path``, whose commands run as ``uid`` (its owner,
    or default_privs for a root-owned file)."""
    from mailsuite.mta.aliases import read_file
    table, _, _, owner = read_file(path)
    default = forward.default_privs_uid(default_privs)
    rights = default if owner == 0 else owner  # as Expander._owner_privs / _default_privs
    if uid != rights or not any(_listed(t, kind, target) for t in table.values()):
        raise forward.TargetFailed(False, "4.7.1", f"{target!r} is not (or no longer) in {path}")


def _special(account: Account, kind: str, target: str, message: bytes, sender: str,
             original: str, final: str, when: float) -> str:
    """Blocking: one copy to a command or file (checked to be where it came from)."""
    privs = Privileges(account.name, account.uid, account.gid, account.home)
    dest = (forward.Program(target, privs, "") if kind == "program"
            else forward.File(target, privs, ""))
    return forward.deliver_special(dest, message, sender, original, final, when)


def _special_failed(failure: Any) -> dict[str, Any]:
    e = failure.value
    if isinstance(e, forward.TargetFailed):
        return {"status": "failed", "permanent": e.permanent, "dsn": e.dsn, "text": e.text}
    log.failure("command or file delivery failed", failure)
    return {"status": "failed", "permanent": False, "dsn": "4.3.0", "text": str(e)}


def _split(fd: int, sizes: list[int], senders: list[str]) -> list[tuple[bytes, str]]:
    """The messages of a Deliver, read with pread from the sealed memfd (so a sender that
    changed it would be refused, not read half-changed)."""
    import fcntl
    total = sum(sizes)
    sealed = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK
    if (len(sizes) != len(senders) or any(n < 0 for n in sizes) or total > MAX_DELIVER
            or fcntl.fcntl(fd, fcntl.F_GET_SEALS) & sealed != sealed
            or os.fstat(fd).st_size < total):
        raise ValueError("malformed Deliver")
    out, at = [], 0
    for n, sender in zip(sizes, senders, strict=True):
        data = pread_all(fd, n, at)
        if len(data) != n:
            raise ValueError("short Deliver")
        out.append((data, sender))
        at += n
    return out


def _verdict(failure: Any) -> dict[str, str]:
    e = failure.value
    if isinstance(e, StoreRefused):  # over quota: store/quota.py
        return {"status": "overquota" if isinstance(e, QuotaExceeded) else "refused",
                "text": str(e), "lock_path": ""}
    if isinstance(e, LockTimeout):
        return {"status": "locked", "text": str(e), "lock_path": e.lock_path}
    log.failure("delivery failed", failure)
    return {"status": "error", "text": str(e) or type(e).__name__, "lock_path": ""}


class MasterChannel(Channel):
    """The agent's end of its channel to the master."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(on_lost=agent.master_lost, reactor=agent.reactor)
        self.agent = agent

    @wire.Attach.responder
    def attach(self, role: str, fd: int, tag: bytes, method: str, secure: bool, rip: str,
               lip: str, session: bytes | None = None) -> dict[str, Any]:
        self.agent.attach(role, fd, {"tag": tag, "method": method, "secure": secure,
                                     "rip": rip, "lip": lip, "session": session})
        return {}


    @wire.Revive.responder
    def revive(self, fd: int, session: bytes, state: int, secure: bool, rip: str,
               lip: str) -> dict[str, Any]:
        try:
            data = pread_all(state, hibernate.MAX_STATE + 1, 0)
        finally:
            os.close(state)
        self.agent.revive(fd, {"tag": b"", "method": "", "secure": secure, "rip": rip,
                               "lip": lip, "session": session, "state": data})
        return {}

    @wire.NewLog.responder
    def new_log(self, fd: int) -> dict[str, Any]:
        self.agent.maillog.adopt(fd)
        return {}


def main(spawn: Any, fds: dict[str, int]) -> None:
    """The agent process (the zygote has given it the account's rights)."""
    start_logging(spawn.title)
    reactor = fresh_reactor()
    p = spawn.params
    cfg = p["cfg"]
    account = Account(p["name"], spawn.uid, spawn.gid, p["home"])
    agent = Agent(reactor, cfg, account, maillog_on(fds.get("maillog"), cfg.mail,
                                                     reactor))
    agent.privs = bool(p.get("privs"))
    transport = adopt_stream(reactor, fds["channel"], Once(lambda: MasterChannel(agent)))
    agent.master = transport.protocol
    agent.hold()
    reactor.callWhenRunning(agent.release)
    run(reactor)
