"""The daemon's control socket, ``queue_directory/public/control`` (Postfix's ``public/``).

Commands (``sendmail -q``, ``postqueue -f``, and ``sendmail`` after dropping a message) talk to
the running daemon here: one line in, one line out (``ok ...`` or ``error ...``)::

    pickup     scan maildrop/ now
    flush      scan maildrop/ and retry every deferred message now (postqueue -f)
    delete ID  forget and remove one queued or held message (postsuper -d): "ok removed" /
               "ok not found"
    hold ID    put a queued message on hold (postsuper -h): "ok held" / "ok not found"
    release ID release a held message, tried at once (postsuper -H): "ok released" / ...
    requeue ID look its recipients up again and try it now (postsuper -r): "ok requeued" / ...

The socket is mode 0666 (any local user may ask for a flush, as with Postfix); the commands
that change the queue (``ADMIN``) are Postfix's postsuper's, for root only: the peer's uid
(SO_PEERCRED) must be root's or the daemon's own, else "error permission denied". When the
daemon is not running, ``ask`` raises ``MailSystemDown``.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import ITransport
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()

Handler = Callable[..., Any]  # called with the words after the command name

#: The commands only root (or the daemon's own user) may give.
ADMIN = frozenset({"delete", "hold", "release", "requeue"})


def control_path(queue_directory: str) -> str:
    return os.path.join(queue_directory, "public", "control")


class MailSystemDown(Exception):
    """No daemon answers on the control socket."""


class _ControlProtocol(LineOnlyReceiver):
    factory: ControlFactory
    transport: ITransport  # set by makeConnection before any line arrives
    MAX_LENGTH = 1024

    def lineReceived(self, line: bytes) -> None:
        command, *args = line.decode("ascii", "replace").split()  or [""]
        handler = self.factory.commands.get(command.lower())
        if handler is None:
            self._answer(f"error unknown command {command!r}")
            return
        if command.lower() in ADMIN and peer_uid(self.transport) not in (0, os.getuid()):
            self._answer("error permission denied")
            return
        d = defer.maybeDeferred(handler, *args)
        d.addCallbacks(lambda result: self._answer(f"ok {result or ''}".rstrip()),
                       self._failed)

    def _failed(self, failure: Any) -> None:
        log.failure("control command failed", failure)
        self._answer(f"error {failure.getErrorMessage()}")

    def _answer(self, text: str) -> None:
        self.sendLine(text.encode("utf-8", "replace"))
        self.transport.loseConnection()


def peer_uid(transport: Any) -> int | None:
    """The uid of the process at the other end of a unix socket connection (None: unknown)."""
    try:
        creds = transport.getHandle().getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    return int(struct.unpack("3i", creds)[1])


class ControlFactory(protocol.ServerFactory[_ControlProtocol]):
    protocol = _ControlProtocol

    def __init__(self, commands: dict[str, Handler]) -> None:
        self.commands = commands


def queue_commands(queue: Any) -> dict[str, Handler]:
    """``hold``, ``release`` and ``requeue`` on a mailsuite.mta.queue.Queue."""

    def run(done: defer.Deferred[bool], word: str) -> defer.Deferred[str]:
        return done.addCallback(lambda found: word if found else "not found")

    return {
        "hold": lambda queue_id: run(queue.put_on_hold(queue_id), "held"),
        "release": lambda queue_id: run(queue.release(queue_id), "released"),
        "requeue": lambda queue_id: run(queue.release(queue_id, requeue=True), "requeued"),
    }


def ensure_public(queue_directory: str) -> str:
    """Create ``public/`` (0755) so the socket can be reached by every user."""
    path = os.path.dirname(control_path(queue_directory))
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def ask(queue_directory: str, command: str, timeout: float = 60.0) -> str:
    """Send one command to the running daemon (blocking, for the commands); its answer line."""
    path = control_path(queue_directory)
    if not os.path.exists(path):  # (a path too long for a socket address is not there either)
        raise MailSystemDown(f"{path}: no such socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise MailSystemDown(f"{path}: {e.strerror}") from e
        s.sendall(command.encode("ascii") + b"\r\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode("utf-8", "replace").strip()
