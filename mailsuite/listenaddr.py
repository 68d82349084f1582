"""The addresses the listeners bind: Postfix's ``inet_interfaces`` (all, loopback-only, or
addresses and host names, a name standing for all its addresses) and the endpoint of one.
Read once at start, before twistd logs (the host names through getaddrinfo, as Postfix).
"""

from __future__ import annotations

import socket

from mailsuite.startup import StartupError


def _can_bind(family: int, address: str) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def listen_addresses(inet_interfaces: list[str]) -> list[str]:
    """Addresses to bind for Postfix's inet_interfaces (all, loopback-only, or a list of
    addresses and host names: a name stands for all its addresses, as in Postfix)."""
    if inet_interfaces == ["all"]:
        # An IPv6 wildcard socket on Linux also takes IPv4 (bindv6only=0 is the default).
        return ["::"] if _can_bind(socket.AF_INET6, "::") else ["0.0.0.0"]
    if inet_interfaces == ["loopback-only"]:
        out = ["127.0.0.1"]
        if _can_bind(socket.AF_INET6, "::1"):
            out.append("::1")
        return out
    out = []
    for word in inet_interfaces:
        out.extend([word] if _is_address(word) else _resolve(word))
    return list(dict.fromkeys(out))


def _is_address(word: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in word else socket.AF_INET, word)
    except OSError:
        return False
    return True


def _resolve(name: str) -> list[str]:
    """The addresses of a host name of inet_interfaces (IPv6 ones only where IPv6 works)."""
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StartupError(f"[mail] inet_interfaces: cannot resolve host name {name}:"
                           f" {reason}") from None
    ipv6 = _can_bind(socket.AF_INET6, "::1")
    return [str(info[4][0]) for info in found if info[0] == socket.AF_INET
            or (info[0] == socket.AF_INET6 and ipv6)]


def tcp_endpoint(port: int, address: str) -> str:
    """The strports description of a TCP listener on ``address`` (IPv6 escaped)."""
    escaped = address.replace(":", r"\:")
    return f"tcp:{port}:interface={escaped}"
