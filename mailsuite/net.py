"""Small network facts every protocol needs the same way."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

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
