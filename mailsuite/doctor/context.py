"""What every check of ``mailsuite doctor`` is given: the configuration, the look-ups, the
addresses of this host (``ip -j addr``; tests give them), the reactor and the time."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailsuite.config import Config
from mailsuite.doctor.resolve import Lookups

#: seconds a connection (greeting, TLS handshake, relay test) may take
CONNECT_TIMEOUT = 15.0  # postscreen_greet_wait (6s) may hold port 25's greeting


class NoAddresses(Exception):
    """The host's addresses could not be listed (the message says why)."""


def host_addresses(run: Callable[..., Any] = subprocess.run) -> list[str]:
    """Every address of this host's interfaces (``ip -j addr``, iproute2's JSON)."""
    try:
        done = run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5,
                   check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise NoAddresses(f"cannot run ip -j addr ({e})") from None
    if done.returncode != 0:
        raise NoAddresses(f"ip -j addr: {done.stderr.strip() or done.returncode}")
    try:
        interfaces = json.loads(done.stdout)
        return [str(ipaddress.ip_address(a["local"])) for i in interfaces
                for a in i.get("addr_info", []) if "local" in a]
    except (ValueError, KeyError, TypeError) as e:
        raise NoAddresses(f"ip -j addr: unreadable output ({e})") from None


def is_public(address: str) -> bool:
    """Reachable from the Internet (not loopback, private, link-local, documentation...)."""
    return ipaddress.ip_address(address).is_global


@dataclass
class Context:
    """``local``: this host's addresses (None: unknown, ``local_problem`` says why);
    ``published``: myhostname's A/AAAA once the host check looked them up."""

    cfg: Config
    lookups: Lookups
    reactor: Any
    local: list[str] | None
    local_problem: str = ""
    now: Callable[[], float] = time.time
    connect_timeout: float = CONNECT_TIMEOUT
    published: list[str] = field(default_factory=list)

    def outbound(self) -> list[str]:
        """The addresses our mail leaves from, for SPF: myhostname's that are this host's (all
        of them behind NAT, when none is), else this host's public ones."""
        mine = [a for a in self.published if self.local is None or a in self.local]
        if mine:
            return mine
        if self.published:
            return list(self.published)
        return [a for a in self.local or [] if is_public(a)]
