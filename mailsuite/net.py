"""Small network facts every protocol needs the same way."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from twisted.internet import tcp

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` names (an IPv6 zone, ``%eth0``, dropped), None if it is not one.

    A dual-stack (``::``) listener sees IPv4 clients as ``::ffff:a.b.c.d``: such an address is
    the IPv4 address ``a.b.c.d``, as for Postfix and Dovecot, so IPv4 network lists match it.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(ip: str, networks: Iterable[Network], loopback: bool = False) -> bool:
    """Whether ``ip`` (see parse_ip) is in one of ``networks`` (or, with ``loopback``, is a
    loopback address); False when it is not an IP."""
    address = parse_ip(ip)
    if address is None:
        return False
    return (loopback and address.is_loopback) or any(address in net for net in networks)


def host_of(address: Any) -> str:
    """The IP of a Twisted address, as logs and mynetworks want it: an IPv4 client of a
    dual-stack listener (``::ffff:a.b.c.d``) as plain ``a.b.c.d`` (see parse_ip), so fail2ban
    and network lists match; any other host as Twisted gives it."""
    host = str(getattr(address, "host", "") or "")
    ip = parse_ip(host)
    mapped = isinstance(ip, ipaddress.IPv4Address) and ":" in host
    return str(ip) if mapped else host


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
    connection under it buffers (Twisted's own attributes, as idle_tcp; 0 for
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


def idle_tcp(t: Any, producer_ok: bool = False) -> bool:
    """``t`` is a plain TCP or UNIX stream connection (no TLS layer) with nothing queued:
    bytes sent straight to its socket keep their order. ``producer_ok``: also when a producer
    is registered with it (a splice's flow control). (Twisted's own buffer attributes; any
    other transport, or another Twisted, gets False and its ``write``.)"""
    return bool(
        isinstance(t, tcp.Connection)
        and t.TLS is False
        and t.connected
        and not t.disconnecting
        and (producer_ok or t.producer is None)
        and getattr(t, "_tempDataLen", None) == 0
        and getattr(t, "offset", None) == len(getattr(t, "dataBuffer", b"?"))
    )


def write_now(t: Any, data: bytes, producer_ok: bool = False) -> None:
    """``t.write(data)``, but straight to the socket when ``idle_tcp``: no reactor turn (a
    poll for writability and two epoll_ctl) before the bytes leave. What the kernel does not
    take, and every other transport, goes through ``t.write``."""
    if idle_tcp(t, producer_ok):
        try:
            sent = t.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error the transport finds itself
        data = data[sent:]
    if data:
        t.write(data)
