"""Port 25's front door against the real server, from a network namespace (loopback is never
screened): a client that talks before the greeting is dropped with 521 and logged PREGREET; one
that waits gets the multi-line greeting and, next time, the greeting at once (PASS NEW, PASS
OLD). postscreen_greet_wait is 1 s here (6 s by default)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.netns import Namespace, can_run

# Runs inside the namespace: each step connects, and prints what the server sent (repr).
CLIENT = r"""
import socket, sys, time
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def session(early):
    s = socket.create_connection((host, port), timeout=20, source_address=(source, 0))
    t0 = time.monotonic()
    got = b""
    if early:
        s.sendall(b"EHLO early.example\r\n")
    while b"\n220 " not in b"\n" + got and b"521 " not in got:
        data = s.recv(4096)
        if not data:
            break
        got += data
    waited = time.monotonic() - t0
    if not early and got:
        s.sendall(b"QUIT\r\n")
        while b"221 " not in got:
            data = s.recv(4096)
            if not data:
                break
            got += data
    rest = s.recv(4096) if early else b""
    s.close()
    print(repr((got, round(waited, 2), rest)))

session(early=True)
session(early=False)
session(early=False)
"""


class FrontDoorSite(Site):
    def __init__(self, testcase: unittest.TestCase, host: str) -> None:
        self.host = host
        super().__init__(testcase, mail_extra="postscreen_greet_wait = 1s")

    def ini(self) -> str:
        return super().ini().replace(
            "inet_interfaces = 127.0.0.1", f"inet_interfaces = 127.0.0.1, {self.host}")


class FrontDoorTests(unittest.TestCase):
    skip = can_run()

    def test_pregreet_dropped_then_pass_new_and_old(self) -> None:
        """Talking first: 521 5.5.1 and closed, no greeting; waiting: "220-" then, after the
        wait, "220 "; the next connection is greeted at once. The maillog says so as
        postscreen does."""
        ns = Namespace(self)
        site = FrontDoorSite(self, ns.host)
        site.start()
        out = subprocess.run(
            ["ip", "netns", "exec", ns.name, sys.executable, "-c", CLIENT, ns.host,
             str(site.ports["smtp"]), ns.client],
            capture_output=True, text=True, timeout=60, env=dict(os.environ))
        self.assertEqual(out.returncode, 0, out.stderr)
        early, first, second = (ast.literal_eval(line) for line in out.stdout.splitlines())
        teaser = b"220-mail.example.test ESMTP mailsuite\r\n"
        greeting = b"220 mail.example.test ESMTP mailsuite\r\n"
        self.assertEqual(early[0], teaser + b"521 5.5.1 Protocol error\r\n")
        self.assertEqual(early[2], b"")  # closed
        self.assertTrue(first[0].startswith(teaser + greeting), first)
        self.assertGreaterEqual(first[1], 0.9)
        self.assertTrue(second[0].startswith(greeting), second)
        self.assertLess(second[1], 0.5)
        log = site.maillog_text()
        self.assertRegex(log, rf"postscreen\[\d+\]: PREGREET 20 after 0\.\d\d from "
                              rf"\[{ns.client}\]:\d+: EHLO early.example\\r\\n")
        self.assertRegex(log, rf"PASS NEW \[{ns.client}\]:\d+")
        self.assertRegex(log, rf"PASS OLD \[{ns.client}\]:\d+")
        self.assertEqual(log.count(f"DISCONNECT [{ns.client}]"), 1)
