"""The agent's side of hibernating an IMAP session (mailsuite/imap/hibernate.py, docs/privsep.rst):
``Sleep.plan`` after IDLE starts, ``Sleep.go`` when the session has idled for
``[imap] imap_hibernate_timeout``: the snapshot and a watch of the mailbox go to the network
process (through the master, wire.Hibernate), and the session ends here without a word to the
client or a maillog line. ``Sleep.wake`` is the other end: a thawed session (wire.Revive)
reopens its mailbox, takes up the snapshot and goes on in IDLE, sending what changed."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.fsutil import write_all
from mailsuite.imap import hibernate
from mailsuite.imap.idle import IDLE_KEEPALIVE
from mailsuite.privsep import wire
from mailsuite.store.interfaces import StoreError

log = Logger()


class Sleep:
    """Hibernation of one agent IMAP session (``session``: an AgentIMAP)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.received = 0  # bytes read from the stream (the network process counts its own)
        self.going = False  # a Hibernate is in flight: nothing more is told to the client
        self.gone = False  # it went: the session ends here, silently
        self._call: Any = None

    def plan(self) -> None:
        s = self.session
        wait = s.agent.cfg.imap.imap_hibernate_timeout
        if wait > 0 and s.params.get("session") and self._call is None and not self.going:
            self._call = s.clock.callLater(wait, self.go)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def go(self) -> None:
        self._call = None
        s = self.session
        master = s.agent.master
        if master is None or s.agent.retiring or not hibernate.hibernatable(s):
            if not s._lost and s._idle_tag is not None:
                self.plan()  # output still unsent, say: later
            return
        paths = tuple(hibernate.watch_paths(s.view)) if s.view is not None else ()
        try:
            watch = _WATCHES.take(paths)
        except OSError as e:  # the file went, too many watches: the session stays, for now
            log.info("IMAP session of {user} not hibernated: {e}", user=s.user, e=e)
            self.plan()
            return
        state = _memfd(hibernate.snapshot(s))
        self.going = True
        d = master.callRemote(wire.Hibernate, session=s.params["session"], state=state,
                              watch=watch, received=self.received)
        d.addBoth(_closing, state)
        d.addBoth(_WATCHES.give_back, paths)
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, answer: dict[str, Any]) -> None:
        s = self.session
        if not answer["ok"]:  # the client spoke meanwhile: its bytes are on their way here
            self._stay()
            return
        self.gone = True
        s._logged_out = True  # the session goes on elsewhere: no "Disconnected" line here
        s._stop_idle()
        s._close_view()
        s.transport.loseConnection()

    def _failed(self, failure: Any) -> None:
        if not failure.check(wire.Refused):
            log.failure("hibernating an IMAP session failed", failure)
        self._stay()

    def _stay(self) -> None:
        self.going = False
        s = self.session
        if not s._lost:
            s.flush_updates()
            self.plan()

    def wake(self, avatar: Any, state: dict[str, Any]) -> None:
        """Take the session up from ``state`` (hibernate.decode's), then read on."""
        s = self.session
        s.account, s._onLogout, s.user = avatar, avatar.logout, s.agent.account.name
        s.state = "auth"
        s._bytes_in, s._bytes_out = state["in"], state["out"]
        s.enabled = set(state.get("enabled", ()))  # ENABLE's, CONDSTORE and QRESYNC too
        s._command = b"IDLE"
        d = defer.ensureDeferred(self._reopen(avatar, state))
        d.addErrback(self._not_reopened)

    async def _reopen(self, avatar: Any, state: dict[str, Any]) -> None:
        s = self.session
        if state["box"] is not None:
            view = await avatar.open_view(state["box"], state["ro"], s.recent, state["next"])
            if s._lost:
                avatar.close_view(view)
                return
            if view.uid_validity != state["uv"]:
                avatar.close_view(view)
                s.sendLine(b"* BYE [UNAVAILABLE] The mailbox was recreated (UIDVALIDITY).")
                s.transport.loseConnection()
                return
            view.resume(state["told"], state["recent"], state["keywords"])
            view.condstore = b"CONDSTORE" in s.enabled  # UID and MODSEQ in its FETCH
            view.qresync = b"QRESYNC" in s.enabled  # VANISHED for EXPUNGE
            s.view, s.state = view, "select"
        if s._lost:
            return
        s._idle_tag, s.parseState = state["tag"], "idle"
        s.setTimeout(None)
        if s.view is not None:
            s.view.on_change = s.flush_updates
            s.idle_poller.add(s.view.mailbox, s, s.clock)
        s._keepalive = s.callLater(IDLE_KEEPALIVE, s._still_here)
        s.flush_updates()
        s._resume_reading()
        self.plan()

    def _not_reopened(self, failure: Any) -> None:
        s = self.session
        if not failure.check(StoreError):
            log.failure("thawing the IMAP session of {user} failed", failure, user=s.user)
        if not s._lost:
            s.sendLine(b"* BYE [UNAVAILABLE] The mailbox cannot be opened now.")
            s.transport.loseConnection()


class _Watches:
    """The inotify descriptors of this agent's mailboxes while sessions hand them over: the
    sessions of one mailbox that go to hibernate together pass one (the kernel allows a user
    fs.inotify.max_user_instances, 128 by default; the network process keeps one a mailbox)."""

    def __init__(self) -> None:
        self._held: dict[tuple[tuple[str, bool], ...], list[int]] = {}  # paths -> [fd, uses]

    def take(self, paths: tuple[tuple[str, bool], ...]) -> int:
        held = self._held.get(paths)
        if held is None:
            held = self._held[paths] = [hibernate.watch(list(paths)), 0]
        held[1] += 1
        return held[0]

    def give_back(self, result: Any, paths: tuple[tuple[str, bool], ...]) -> Any:
        held = self._held.get(paths)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del self._held[paths]
                os.close(held[0])
        return result


_WATCHES = _Watches()


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("imap-state", os.MFD_CLOEXEC)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _closing(result: Any, *fds: int) -> Any:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    return result
