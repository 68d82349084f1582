"""IDLE's refresh: mail other programs write (mutt, procmail, a second server) reaches the
IDLE sessions of a mailbox within ``IDLE_POLL`` seconds, by one ``refresh`` a second per mailbox
however many sessions idle on it (the store's listener pushes the rest at once)."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

IDLE_POLL = 1.0  # mail written by other programs reaches IDLE sessions within this


class IdlePoller:
    """One ``refresh`` a second per mailbox that has IDLE sessions (shared by them all: the
    factories own one, tap.py gives the ports 143 and 993 the same)."""

    def __init__(self) -> None:
        self._polls: dict[int, tuple[Any, task.LoopingCall, set[int]]] = {}

    def add(self, mailbox: Any, session: object, clock: Any) -> None:
        key = id(mailbox)
        if key not in self._polls:
            loop = task.LoopingCall(self._poll, key)
            loop.clock = clock
            self._polls[key] = (mailbox, loop, set())
            loop.start(IDLE_POLL, now=False)
        self._polls[key][2].add(id(session))

    def remove(self, mailbox: Any, session: object) -> None:
        entry = self._polls.get(id(mailbox))
        if entry is None:
            return
        entry[2].discard(id(session))
        if not entry[2]:
            entry[1].stop()
            del self._polls[id(mailbox)]

    def _poll(self, key: int) -> None:
        mailbox = self._polls[key][0]
        mailbox.refresh().addErrback(lambda f: log.failure("IDLE refresh failed", f))
