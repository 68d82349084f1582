"""A time limit that incoming bytes do not push back (issue 11 item 3).

Twisted's TimeoutMixin restarts its timer at every read: a client that sends one byte every
few seconds holds its connection forever. A ``Deadline`` is a point in time instead: it moves
only when the protocol says a request is complete (``start``) or, for a message body, by the
bytes that arrived at a minimum rate (``extend``, Postfix's ``smtpd_min_data_rate``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Deadline:
    """Calls ``expired()`` once the deadline passes; ``clock`` is an IReactorTime."""

    def __init__(self, clock: Any, expired: Callable[[], None]) -> None:
        self.clock = clock
        self.expired = expired
        self._call: Any = None

    @property
    def active(self) -> bool:
        return self._call is not None and self._call.active()

    def start(self, seconds: float) -> None:
        """The deadline is ``seconds`` from now (replacing any earlier one)."""
        if self.active:
            self._call.reset(seconds)
        else:
            self._call = self.clock.callLater(seconds, self._fire)

    def extend(self, seconds: float, cap: float) -> None:
        """Move the deadline ``seconds`` later, but never more than ``cap`` seconds from now."""
        if not self.active:
            return
        now = self.clock.seconds()
        self._call.reset(min(self._call.getTime() + seconds, now + cap) - now)

    def stop(self) -> None:
        if self.active:
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.expired()


class LoginDeadlines:
    """The time limits before login (IMAP, POP3), as Dovecot's login processes: ``idle``
    seconds without a complete command (``command()`` starts them again) and ``total`` seconds
    for the whole login, however busy the client keeps it. ``stop()`` at login."""

    def __init__(self, clock: Any, idle: float, total: float, expired: Callable[[], None]) -> None:
        self.idle_seconds = idle
        self.expired = expired
        self.idle = Deadline(clock, self._expired)
        self.total = Deadline(clock, self._expired)
        self.idle.start(idle)
        self.total.start(total)

    def command(self) -> None:
        if self.total.active:
            self.idle.start(self.idle_seconds)

    def stop(self) -> None:
        self.idle.stop()
        self.total.stop()

    def _expired(self) -> None:
        self.stop()  # the other one must not fire too (the connection closes after a write)
        self.expired()
