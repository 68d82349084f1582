"""Small network facts every protocol needs the same way."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet import tcp


def host_of(address: Any) -> str:
    """The IP of a Twisted address, as logs and mynetworks want it.

    A dual-stack (``::``) listener sees IPv4 clients as ``::ffff:a.b.c.d``; they are reported as
    plain ``a.b.c.d``, as Postfix and Dovecot do, so fail2ban and network lists match.
    """
    host = str(getattr(address, "host", "") or "")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return host


def default_hostname() -> str:
    """myhostname's default, as Postfix finds it: the host name, made fully qualified when the
    resolver knows a dotted name for it (and that name is not a ``localhost`` alias)."""
    name = socket.gethostname()
    if "." not in name:
        fqdn = socket.getfqdn(name)
        if "." in fqdn and not fqdn.lower().startswith("localhost"):
            name = fqdn
    return name


#: Replies left unsent past which no more commands are read until the client reads them (S5: a
#: client that sends without reading costs no memory, as Dovecot reads no input while its
#: output buffer is full); how often a held connection looks again.
MAX_UNSENT = 256 * 1024
UNSENT_POLL = 0.05


def unsent(t: Any) -> int:
    """Bytes written to ``t`` and not sent yet: what a TLS layer holds back and what the TCP
    connection under it buffers (Twisted's own attributes, as imap.server's _idle_tcp; 0 for
    any other transport)."""
    total = sum(map(len, getattr(t, "_appSendBuffer", None) or ()))
    if not isinstance(t, tcp.Connection):
        t = getattr(t, "transport", None)
    if isinstance(t, tcp.Connection):
        total += len(t.dataBuffer) - t.offset + t._tempDataLen
    return total


class UnsentWait:
    """Looks every UNSENT_POLL until no more than MAX_UNSENT is unsent on ``transport``, then
    calls ``then`` (the protocol reads on). ``cancel`` when the connection is lost."""

    def __init__(self, transport: Any, call_later: Any, then: Any) -> None:
        self.transport, self.call_later, self.then = transport, call_later, then
        self.call: Any = call_later(UNSENT_POLL, self._look)

    def _look(self) -> None:
        if unsent(self.transport) > MAX_UNSENT:
            self.call = self.call_later(UNSENT_POLL, self._look)
        else:
            self.call = None
            self.then()

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None
