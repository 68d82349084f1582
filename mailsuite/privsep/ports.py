"""Listening sockets across the process boundary of privilege separation: the master binds
(as root: ports below 1024) and stops reading them; the network process adopts them."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from twisted.application import service


class AdoptedPort(service.Service):
    """A listener on a socket that another process bound (the master of privsep)."""

    def __init__(self, fd: int, factory: Any, reactor: Any) -> None:
        self.fd, self.factory, self.reactor = fd, factory, reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        family = socket.socket(fileno=os.dup(self.fd))
        try:
            kind = family.family
        finally:
            family.close()
        if kind != socket.AF_UNIX:
            self.port = self.reactor.adoptStreamPort(self.fd, kind, self.factory)
            os.close(self.fd)  # the port holds its own copy
            self.fd = -1
            return
        from twisted.internet import unix
        port = unix.Port._fromListeningDescriptor(self.reactor, self.fd, self.factory)
        # the socket file is the master's: Twisted would chmod it at start and unlink it at
        # stop (through a directory this process may not even search); a name outside the
        # file system (an abstract one) makes it do neither
        port._bindPath = b"\0" + os.fsencode(port._bindPath)
        port.startListening()
        os.close(self.fd)  # the port holds its own copy
        self.fd = -1
        self.port = port

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        if self.fd >= 0:  # never started (a reload that failed part-way): our socket goes
            os.close(self.fd)
            self.fd = -1
        return None


def held_socket(svc: Any) -> int:
    """The listening socket of a bound endpoint service, no longer read by this reactor."""
    port = svc._waitingForPort.result  # bound synchronously by privilegedStartService
    port.stopReading()
    return int(port.fileno())


class SocketFiles(service.Service):
    """The master's unix socket files, removed when it stops (the network process that
    listens on them cannot: the files and their directories are the master's)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def stopService(self) -> Any:
        super().stopService()
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
