"""A network namespace joined to the host by a veth pair, so an integration test can talk to the
real server from an address that is not loopback (198.51.100.0/24, TEST-NET-2): the server
listens on the host side, a client run with ``ip netns exec`` connects from the namespace side.
Root and iproute2 only; the namespace and the link are removed in the test's cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial import unittest


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command (apt-get install iproute2)"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def _address_taken(address: str) -> bool:
    """Whether a link of this host already has ``address`` (a namespace of another prefix)."""
    out = subprocess.run(["ip", "-o", "addr", "show", "to", address], capture_output=True,
                         text=True, timeout=20)
    return bool(out.stdout.strip())


class Namespace:
    """A network namespace with a veth pair: ``host`` on our side, ``client`` (and ``second``)
    inside it, in a /29 of 198.51.100.0/24: the first free one from a choice by pid, so two
    runs at once do not collide."""

    def __init__(self, testcase: unittest.TestCase, prefix: str = "msbf") -> None:
        """``prefix`` names the namespace and the veth pair (a test's own, up to 6 letters)."""
        self.prefix = prefix
        self.name = f"{prefix}{os.getpid()}"
        try:
            ip("netns", "add", self.name)
        except subprocess.CalledProcessError as e:
            reason = e.stderr.decode().strip()
            raise unittest.SkipTest(f"cannot create a network namespace: {reason}") from e
        testcase.addCleanup(ip, "netns", "del", self.name)
        n = self._link(os.getpid() % 30)
        outside, inside = f"{prefix}{n}h", f"{prefix}{n}n"
        testcase.addCleanup(subprocess.run, ["ip", "link", "del", outside], capture_output=True)
        base = 8 * n
        self.host, self.client, self.second = (f"198.51.100.{base + k}" for k in (1, 2, 3))
        ip("link", "set", inside, "netns", self.name)
        ip("addr", "add", f"{self.host}/29", "dev", outside)
        ip("link", "set", outside, "up")
        for address in (self.client, self.second):
            ip("-n", self.name, "addr", "add", f"{address}/29", "dev", inside)
        ip("-n", self.name, "link", "set", inside, "up")
        ip("-n", self.name, "link", "set", "lo", "up")

    def _link(self, start: int) -> int:
        """Make the veth pair of the first free slot from ``start`` (another test run may hold
        one: ``ip link add`` of its name fails); the slot number."""
        for k in range(30):
            n = (start + k) % 30
            if _address_taken(f"198.51.100.{8 * n + 1}"):  # another prefix's slot n
                continue
            try:
                ip("link", "add", f"{self.prefix}{n}h", "type", "veth", "peer", "name",
                   f"{self.prefix}{n}n")
                return n
            except subprocess.CalledProcessError:
                continue
        raise unittest.SkipTest(
            f"no free veth pair name ({self.prefix}0h-{self.prefix}29h all taken)")

    def run(self, script: str, *args: str, timeout: float = 120) -> str:
        """``python script args...`` inside the namespace; its stdout (it must exit 0)."""
        out = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, script, *args],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"{os.path.basename(script)} failed: {out.stderr}")
        return out.stdout
