"""Small network facts every protocol needs the same way."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any


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
