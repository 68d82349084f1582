"""The name of an SMTP client, as Postfix's smtpd finds it: the forward-confirmed reverse DNS
name of its address, or ``unknown``."""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns

from mailsuite.mta.dns import MXResolver
from mailsuite.net import IPAddress, parse_ip

REVERSE_TIMEOUT = (1, 3)  # seconds per try of a client's PTR look-up


def reverse_lookup(ip: str, names: MXResolver) -> defer.Deferred[str]:
    """The client's forward-confirmed reverse DNS name, or ``unknown`` (Postfix's rule).

    The look-ups go through twisted.names (``names``, tap.py's), bounded by REVERSE_TIMEOUT, and
    use no thread: a crowd of clients whose PTR look-ups time out must not fill the thread pool
    that password checks and mailbox I/O need (issue 11 item 3). The host itself (any loopback
    address) is ``localhost``, without a look-up."""
    address = parse_ip(ip)
    if address is None:
        return defer.succeed("unknown")
    if address.is_loopback:
        return defer.succeed("localhost")
    return defer.ensureDeferred(_dns_name(address, names))


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
