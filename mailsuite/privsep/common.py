"""What every unprivileged process of a privilege-separated server starts with: a reactor of
its own (the zygote never ran one), Twisted's log on stderr, the maillog on the master's
descriptor, and an AMP channel (a connected unix socket it was given)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, defer, fdesc, protocol
from twisted.logger import (
    FileLogObserver,
    Logger,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.protocols import amp
from twisted.python.failure import Failure

from mailsuite.maillog import MailLog
from mailsuite.privsep import wire


#: the zygote's reactor (twisted.mail.smtp imports one): never run, its descriptors closed
#: by the fork; kept referenced so that collecting it never closes a reused descriptor number
_ZYGOTES: list[Any] = []


def fresh_reactor() -> Any:
    """Install and return the epoll reactor of this process (a forked child of the zygote):
    modules that imported the zygote's reactor are pointed at the new one."""
    old = sys.modules.pop("twisted.internet.reactor", None)
    if old is not None:
        _ZYGOTES.append(old)
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor
    if old is not None:
        for module in list(sys.modules.values()):
            if getattr(module, "reactor", None) is old:
                module.reactor = reactor  # type: ignore[attr-defined]
    return reactor


def stop(reactor: Any) -> None:
    """Stop ``reactor`` unless it is stopping already (a SIGTERM and the end of the master's
    channel come together when the server stops: the second stop raised ReactorNotRunning)."""
    if reactor.running and not getattr(reactor, "_stopped", False):
        reactor.stop()


def run(reactor: Any) -> None:
    """Run the child's reactor; SIGTERM (the zygote's, at the server's stop) stops it through
    ``stop``, so that it and the end of the master's channel never stop it twice (Twisted's
    own handler stops it unconditionally: ReactorNotRunning, logged as critical)."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop, reactor))
    reactor.run(installSignalHandlers=False)


def start_logging(label: str) -> None:
    """Twisted's log on stderr (a pipe to the master, which logs each line: ChildOutput),
    each line starting with ``label`` (``network``, ``agent boss``) and no time."""
    observer = FileLogObserver(
        sys.stderr, lambda event: formatEventAsClassicLogText(event, lambda _: label))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class ChildOutput(abstract.FileDescriptor):
    """The master's end of the pipe that is the standard output and error of the zygote and
    its children: each line goes to the master's log (the twistd log), as the child's."""

    MAX_LINE = 16384

    def __init__(self, fd: int, reactor: Any) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.pending = b""
        fdesc.setNonBlocking(fd)
        self.startReading()

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self.fd, self._got)

    def _got(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n")
        if len(self.pending) > self.MAX_LINE:
            lines.append(self.pending)
            self.pending = b""
        for line in lines:
            if line.strip():
                _child_log.info("{line}", line=line.decode("utf-8", "replace").rstrip())

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._got(b"\n")
        os.close(self.fd)


_child_log = Logger(namespace="mailsuite.privsep.child")
_log = Logger()


def maillog_on(fd: int | None, mail: Any, reactor: Any) -> MailLog:
    """The maillog of ``mail`` (``[mail]``) on a descriptor the master opened (the file, or
    syslog socket, is not ours to open)."""
    maillog = MailLog.from_config(mail, reactor, opened_by_master=True)
    if fd is not None:
        maillog.adopt(fd)
    return maillog


def adopt_stream(reactor: Any, fd: int, factory: Any) -> Any:
    """The connected unix socket ``fd`` as a Twisted connection of ``factory``'s protocol (our
    copy of the descriptor is closed: the transport holds its own)."""
    try:
        return reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
    finally:
        os.close(fd)


class Once(protocol.Factory):
    """The factory of one connection (an adopted socket): ``make()`` builds its protocol."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def buildProtocol(self, addr: Any) -> Any:
        return self.make()


class Channel(amp.AMP):
    """An AMP connection whose end is reported to ``on_lost``. With a ``reactor``, every call
    on it is bounded (wire.timeout_of): past it, the call fails with defer.TimeoutError and
    ``on_timeout`` is told (the other process counts as hung)."""

    def __init__(self, locator: Any = None, on_lost: Any = None, reactor: Any = None,
                 on_timeout: Callable[[Channel], None] | None = None) -> None:
        super().__init__(locator=locator)
        self.on_lost = on_lost
        self.reactor = reactor
        self.on_timeout = on_timeout
        #: (the master's) a pidfd of the process at the other end, to kill it; -1: none
        self.pidfd = -1

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        d: defer.Deferred[Any] = super().callRemote(commandType, *a, **kw)
        if self.reactor is None:
            return d
        d.addTimeout(wire.timeout_of(commandType), self.reactor)
        return d.addErrback(self._late, commandType)

    def _late(self, failure: Failure, command: Any) -> Failure:
        failure.trap(defer.TimeoutError)
        _log.error("no answer to {command} in {seconds:g} s", command=command.__name__,
                   seconds=wire.timeout_of(command))
        if self.on_timeout is not None:
            self.on_timeout(self)
        return failure

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.on_lost is not None:
            self.on_lost(self)


class Shared:
    """One result (a channel being opened) for many waiters: ``get()`` is a new Deferred of it
    each time, so no waiter takes the result away from the next."""

    def __init__(self, d: defer.Deferred[Any]) -> None:
        self.result: Any = None
        self.failure: Failure | None = None
        self._waiting: list[defer.Deferred[Any]] = []
        d.addCallbacks(self._done, self._failed)

    def _done(self, result: Any) -> None:
        self.result = result
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.callback(result)

    def _failed(self, failure: Failure) -> None:
        self.failure = failure
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.errback(failure)

    def get(self) -> defer.Deferred[Any]:
        if self.failure is not None:
            return defer.fail(self.failure)
        if self.result is not None:
            return defer.succeed(self.result)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(d)
        return d
