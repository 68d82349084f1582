"""The name of an SMTP client, as Postfix's smtpd finds it: the forward-confirmed reverse DNS
name of its address, or ``unknown``."""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.names import dns

from mailsuite.mta.dns import MXResolver
from mailsuite.net import IPAddress, parse_ip
from mailsuite.threads import Blocking

REVERSE_TIMEOUT = (1, 3)  # seconds per try of a client's PTR look-up


def reverse_lookup(ip: str, blocking: Blocking, names: MXResolver | None = None
                   ) -> defer.Deferred[str]:
    """The client's forward-confirmed reverse DNS name, or ``unknown`` (Postfix's rule).

    With ``names`` (tap.py's), the look-ups of a client on the network go through twisted.names,
    bounded by REVERSE_TIMEOUT, and use no thread: a crowd of clients whose PTR look-ups time
    out must not fill the thread pool that password checks and mailbox I/O need (issue 11 item
    3). The host itself (loopback, or without ``names``) is named by the C library (the hosts
    file: ``localhost``), through ``blocking`` (mailsuite.threads)."""
    address = parse_ip(ip)
    if names is not None and address is not None and not address.is_loopback:
        return defer.ensureDeferred(_dns_name(address, names))

    def look() -> str:
        try:
            name = socket.gethostbyaddr(ip)[0]
            forward = {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            return "unknown"
        return name if ip in forward else "unknown"

    d = blocking(look)
    d.addErrback(lambda _: "unknown")
    return d


async def _dns_name(address: IPAddress, names: MXResolver) -> str:
    try:
        answers, _, _ = await names.resolver.lookupPointer(address.reverse_pointer,
                                                           timeout=REVERSE_TIMEOUT)
        name = next(str(a.payload.name) for a in answers if a.type == dns.PTR)
        forward = await names.addresses(name)
    except defer.CancelledError:
        raise
    except Exception:  # NXDOMAIN, a timeout, no PTR record, a name that is not one
        return "unknown"
    return name if str(address) in forward else "unknown"
