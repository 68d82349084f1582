"""IDLE (RFC 2177): ``IdleCommands``, the command for ``IMAPServer``; and its refresh: mail
other programs write (mutt, procmail, a second server) reaches the IDLE sessions of a mailbox
within ``IDLE_POLL`` seconds, by one ``refresh`` a second per mailbox however many sessions
idle on it (the store's listener pushes the rest at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.logger import Logger

from mailsuite.imap.parser import Cursor
from mailsuite.imap.session import states

if TYPE_CHECKING:  # pragma: no cover - a Protocol is no base class at run time
    from mailsuite.imap.session import Session as _Base
else:
    _Base = object

log = Logger()

IDLE_POLL = 1.0  # mail written by other programs reaches IDLE sessions within this
IDLE_KEEPALIVE = 120.0  # OUTLOOK.md 17: at least every 2 minutes


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


class IdleCommands(_Base):
    """IDLE (RFC 2177) for ``IMAPServer``: only DONE ends it; ``* OK Still here`` every
    ``IDLE_KEEPALIVE`` seconds and no autologout while idling; new mail pushed by the store
    listener, mail written by other programs noticed by the shared ``IdlePoller``."""

    _idle_tag: bytes | None  # the IDLE command's tag while idling (set in IMAPServer.__init__)
    _keepalive: Any  # the ``* OK Still here`` timer

    @states("auth", "select")
    def cmd_IDLE(self, tag: bytes, args: Cursor) -> None:
        args.end()
        self._idle_tag = tag
        self.parseState = "idle"
        self.setTimeout(None)
        self.sendContinuationRequest(b"idling")
        self.flush_updates()
        if self.view is not None:
            self.view.on_change = self.flush_updates
            self.idle_poller.add(self.view.mailbox, self, self.clock)
            self.view.mailbox.refresh().addErrback(lambda f: log.failure("IDLE refresh failed", f))
        self._keepalive = self.callLater(IDLE_KEEPALIVE, self._still_here)
        self._resume_reading()

    def _still_here(self) -> None:
        self._keepalive = None
        if self._idle_tag is not None and not self._lost:
            self.sendLine(b"* OK Still here")
            self._keepalive = self.callLater(IDLE_KEEPALIVE, self._still_here)

    def _idle_line(self, line: bytes) -> None:
        if line.strip().upper() != b"DONE":
            self.sendLine(b"* BAD Expected DONE.")
            return
        tag = self._idle_tag
        self._stop_idle()
        self.parseState = "command"
        self.setTimeout(self.POSTAUTH_TIMEOUT)
        self.sendPositiveResponse(tag, b"Idle completed.")

    def _stop_idle(self) -> None:
        if self._idle_tag is None:
            return
        self._idle_tag = None
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        if self.view is not None:
            self.view.on_change = self._resting_on_change()
            self.idle_poller.remove(self.view.mailbox, self)

    def _resting_on_change(self) -> Any:
        """The view's ``on_change`` outside IDLE (NOTIFY's, notify.py, when it is on)."""
        return None
