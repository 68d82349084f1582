"""Retry a local delivery as soon as the mailbox lock that deferred it goes away.

A delivery deferred because another program held the INBOX's dotlock for longer than the lock
timeout (``LockTimeout``) would otherwise wait for the queue's back-off (5 minutes and more).
The queue registers the dotlock here; every ``interval`` seconds the watched locks are looked
at (in a thread: ``lstat`` and, for a lock that is still there, whether it is stale, as the
delivery would judge it), and the callbacks of each one that is gone or stale are called, once.
A watch lasts at most ``lifetime`` seconds (the queue retries by itself anyway).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mailsuite.store.locking import DEFAULT_STALE_AFTER, stale_dotlock

log = Logger()


def _free(paths: list[str], stale_after: float) -> list[str]:
    """The ``paths`` whose dotlock is gone or stale (blocking: stats and small reads)."""
    return [p for p in paths if not os.path.lexists(p) or stale_dotlock(p, stale_after)]


class LockWatch:
    """``watch(lock_path, key, callback)``: ``callback(key)`` once the lock is free."""

    def __init__(
        self,
        clock: Any,
        blocking: Callable[..., defer.Deferred[Any]],
        interval: float = 1.0,
        lifetime: float = 3600.0,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.clock, self.blocking = clock, blocking
        self.interval, self.lifetime, self.stale_after = interval, lifetime, stale_after
        self._watched: dict[str, dict[str, tuple[float, Callable[[str], None]]]] = {}
        self._loop: task.LoopingCall | None = None
        self._looking = False

    def watch(self, lock_path: str, key: str, callback: Callable[[str], None]) -> None:
        self._watched.setdefault(lock_path, {})[key] = (self.clock.seconds(), callback)
        if self._loop is None:
            self._loop = task.LoopingCall(self._look)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def forget(self, key: str) -> None:
        """``key`` needs no call any more (it is being retried)."""
        for path in list(self._watched):
            self._watched[path].pop(key, None)
            if not self._watched[path]:
                del self._watched[path]
        self._stop_if_idle()

    def stop(self) -> None:
        self._watched.clear()
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if not self._watched and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _look(self) -> defer.Deferred[None] | None:
        if self._looking:
            return None
        now = self.clock.seconds()
        for path in list(self._watched):
            keys = self._watched[path]
            for key in [k for k, (since, _) in keys.items() if now - since > self.lifetime]:
                del keys[key]
            if not keys:
                del self._watched[path]
        if not self._watched:
            self._stop_if_idle()
            return None
        self._looking = True
        d = self.blocking(_free, list(self._watched), self.stale_after)
        d.addCallback(self._freed)
        d.addErrback(lambda f: log.failure("looking at mailbox locks failed", f))
        d.addBoth(self._looked)
        return None

    def _looked(self, _: Any) -> None:
        self._looking = False

    def _freed(self, paths: list[str]) -> None:
        for path in paths:
            for key, (_, callback) in self._watched.pop(path, {}).items():
                callback(key)
        self._stop_if_idle()
