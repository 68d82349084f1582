"""The network process's side of hibernated IMAP sessions (imap/hibernate.py): the dormitory.

Every session spliced to an agent is known here by the name the master gave it. When its agent
gives it up (wire.Hibernate, relayed by the master), the session's ``Splice`` gets a
``Sleeper``: it keeps the client's connection and the snapshot, answers nothing but
``* OK Still here`` every two minutes, and watches the mailbox through the agent's inotify
descriptor. The first byte from the client or the first change to the mailbox thaws the
session (wire.Thaw): the master puts it into an agent of its account again, which sends what
changed; what the client sent meanwhile is that agent's first input. Hibernation is refused
when the client has sent bytes that the agent has not read yet (they would be lost).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from twisted.internet import abstract
from twisted.logger import Logger

from mailsuite.fsutil import pread_all, write_all
from mailsuite.imap.hibernate import MAX_STATE
from mailsuite.imap.idle import IDLE_KEEPALIVE
from mailsuite.privsep import wire

log = Logger()

#: bytes a hibernated session's client may send before its agent reads them (a thaw is
#: under way; more pauses the client)
MAX_EARLY = 64 * 1024


class Dorm:
    """The sessions of the network process by name (wire.CheckPassword's ``session``)."""

    def __init__(self, master: Any, reactor: Any, maillog: Any) -> None:
        self.master = master
        self.reactor = reactor
        self.maillog = maillog
        self.splices: dict[bytes, Any] = {}
        self.watches: dict[frozenset[str], _Watch] = {}

    def watch(self, fd: int, sleeper: Sleeper) -> _Watch | None:
        """The watch ``sleeper`` joins: the one of its mailbox if there is one (``fd`` is
        closed: the older watch has seen every change since), else ``fd``'s; none for a
        session with no mailbox selected (nothing to watch)."""
        key = watched(fd)
        found = self.watches.get(key) if key else None
        if found is None and key:
            found = self.watches[key] = _Watch(self, fd, key)
        else:
            os.close(fd)
        if found is not None:
            found.sleepers.add(sleeper)
        return found

    def add(self, name: bytes, splice: Any, user: str, rip: str, lip: str) -> None:
        self.splices[name] = splice
        splice.key, splice.user, splice.rip, splice.lip = name, user, rip, lip
        splice.on_end = lambda: self._ended(name)

    def _ended(self, name: bytes) -> None:
        if self.splices.pop(name, None) is not None:
            self.forget(name)

    def forget(self, name: bytes) -> None:
        d = self.master.callRemote(wire.Forget, session=name)
        d.addErrback(lambda f: None)  # a master that is gone forgets everything

    def hibernate(self, name: bytes, state: int, watch: int, received: int) -> dict[str, Any]:
        """wire.Hibernate: keep the client of ``name``, if the agent has read all it was sent."""
        splice = self.splices.get(name)
        try:
            data = pread_all(state, MAX_STATE + 1, 0)
        finally:
            os.close(state)
        if (splice is None or splice.agent is None or splice.sleeper is not None
                or splice.sent != received or len(data) > MAX_STATE):
            os.close(watch)
            return {"ok": False}
        splice.sleeper = Sleeper(self, splice, data, watch)
        # the client's bytes go to the sleeper now, and the agent's stream ending must not
        # stop the client (a producer registered with a transport is stopped with it)
        splice.agent.unregisterProducer()
        splice.client.resumeProducing()
        return {"ok": True}


class Sleeper:
    """One hibernated session: the client, the snapshot, the watch of its mailbox."""

    def __init__(self, dorm: Dorm, splice: Any, state: bytes, watch: int) -> None:
        self.dorm = dorm
        self.splice = splice
        self.state = state
        self.early = b""  # what the client sent since: the thawed session reads it first
        self.draining = True  # the agent's stream still has bytes for the client
        self.thawing = False
        self.watch: _Watch | None = dorm.watch(watch, self)
        self._keepalive: Any = dorm.reactor.callLater(IDLE_KEEPALIVE, self._still_here)

    def up(self, data: bytes) -> None:
        self.early += data
        if len(self.early) > MAX_EARLY:
            self.splice.client.pauseProducing()
        self.thaw()

    def agent_gone(self) -> None:
        """The agent's stream is drained and closed: the session sleeps here now (a thaw
        asked for meanwhile starts now, so the new agent's bytes follow the old one's)."""
        self.draining = False
        if self.thawing:
            self._thaw()

    def _still_here(self) -> None:
        self._keepalive = None
        if not self.draining and not self.thawing:
            self.splice.client.write(b"* OK Still here\r\n")
        self._keepalive = self.dorm.reactor.callLater(IDLE_KEEPALIVE, self._still_here)

    def thaw(self) -> None:
        if self.thawing:
            return
        self.thawing = True
        self._unwatch()
        if not self.draining:
            self._thaw()

    def _thaw(self) -> None:
        s = self.splice
        fd = os.memfd_create("imap-state", os.MFD_CLOEXEC)
        try:
            write_all(fd, self.state)
        except BaseException:
            os.close(fd)
            raise
        d = self.dorm.master.callRemote(wire.Thaw, session=s.key, state=fd,
                                        secure=s.secure, rip=s.rip, lip=s.lip)

        def close(result: Any) -> Any:
            os.close(fd)
            return result

        d.addBoth(close)
        d.addCallbacks(self._thawed, self._not_thawed)

    def _thawed(self, answer: dict[str, Any]) -> None:
        s = self.splice
        self._done()
        if s.lost:
            os.close(answer["fd"])
            return
        s.connect(answer["fd"], self.early)

    def _not_thawed(self, failure: Any) -> None:
        s = self.splice
        log.failure("thawing the IMAP session of {user} failed", failure, user=s.user)
        self._done()
        s.client.write(b"* BYE [UNAVAILABLE] Temporary failure, log in again.\r\n")
        s.client.loseConnection()

    def client_lost(self) -> None:
        """The client went while hibernated: its log line, as the agent would have written."""
        s = self.splice
        self._done()
        if self.thawing:
            return  # the thawed agent's session (or its failure) says it
        with contextlib.suppress(Exception):
            counts = _counts(self.state)
            self.dorm.maillog.write(
                f"imap({s.user})", "Disconnected: Connection closed (IDLE hibernated) "
                f"in={counts[0]} out={counts[1]}, user=<{s.user}>, rip={s.rip}")

    def _done(self) -> None:
        if self.splice.sleeper is self:
            self.splice.sleeper = None
        self._unwatch()
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _unwatch(self) -> None:
        if self.watch is not None:
            self.watch.leave(self)
            self.watch = None


def _counts(state: bytes) -> tuple[int, int]:
    import json
    data = json.loads(state)
    return int(data["in"]), int(data["out"])


def watched(fd: int) -> frozenset[str]:
    """What an inotify descriptor watches (``ino:... sdev:...`` of each watch, from fdinfo):
    the watches of the sleepers of one mailbox are one (the kernel allows a user only
    fs.inotify.max_user_instances of them, 128 by default)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset({f"fd:{fd}"})  # no fdinfo: shared with no one
    out = set()
    for line in lines:
        if line.startswith("inotify "):
            fields = dict(part.split(":", 1) for part in line.split()[1:] if ":" in part)
            out.add(f"{fields.get('ino')}/{fields.get('sdev')}")
    return frozenset(out)


class _Watch(abstract.FileDescriptor):
    """An inotify descriptor that the sleepers of one mailbox share: any event (or its end)
    thaws them all."""

    def __init__(self, dorm: Dorm, fd: int, key: frozenset[str]) -> None:
        super().__init__(dorm.reactor)
        self.dorm = dorm
        self.fd = fd
        self.key = key
        self.sleepers: set[Sleeper] = set()
        self.connected = True
        self.startReading()

    def leave(self, sleeper: Sleeper) -> None:
        self.sleepers.discard(sleeper)
        if not self.sleepers:
            if self.dorm.watches.get(self.key) is self:
                del self.dorm.watches[self.key]
            self.close()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.fd, 65536)
        for sleeper in list(self.sleepers):
            sleeper.thaw()

    def close(self) -> None:
        if self.fd >= 0:
            self.stopReading()
            os.close(self.fd)
            self.fd = -1

    def connectionLost(self, reason: Any) -> None:
        self.close()
