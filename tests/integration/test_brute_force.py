"""Brute force from a non-exempt address against the real server (issue 9, S6): wrong passwords
sent at once, over many connections or pipelined in one, with the right one last, for IMAP,
POP3 and SMTP AUTH.

Loopback is exempt from the login policy, so the attacker runs in a network namespace of its
own, joined to the host by a veth pair with addresses in 198.51.100.0/24 (TEST-NET-2): the
server listens on the host side, the attacker (tests/integration/brute_client.py, run with
``ip netns exec``) connects from the namespace side. Root and iproute2 only; the namespace is
removed in the test's cleanup.
"""

from __future__ import annotations

import json
import os
import re
from typing import ClassVar

from twisted.trial import unittest

from tests.integration import netns
from tests.integration.harness import Site

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "brute_client.py")
#: What the test configures: a short penalty so the run stays short, a low limit.
DELAY, LIMIT = 1, 3
WRONG = 30


class Namespace(netns.Namespace):
    def attack(
        self, proto: str, port: int, mode: str, source: str, passwords: list[str]
    ) -> list[dict]:
        out = self.run(CLIENT, proto, self.host, str(port), mode, source, *passwords)
        return [json.loads(line) for line in out.splitlines()]


class BruteSite(Site):
    def __init__(self, testcase: unittest.TestCase, host: str) -> None:
        self.host = host
        super().__init__(testcase)

    def ini(self) -> str:
        text = super().ini().replace(
            "inet_interfaces = 127.0.0.1", f"inet_interfaces = 127.0.0.1, {self.host}")
        return text.replace("[auth]\n", f"[auth]\nauth_failure_delay = {DELAY}s\n"
                            f"login_max_failures = {LIMIT}\nlogin_block_time = 10m\n", 1)


class BruteForceTests(unittest.TestCase):
    skip = netns.can_run()
    #: The temporary error of a blocked address, and the success reply, per protocol.
    BLOCKED: ClassVar[dict[str, str]] = {
        "imap": "NO [UNAVAILABLE]", "pop3": "-ERR [SYS/TEMP]", "smtp": "454 4.7.0"}
    CHECKED: ClassVar[dict[str, str]] = {
        "imap": "NO [AUTHENTICATIONFAILED]", "pop3": "-ERR [AUTH]", "smtp": "535 5.7.8"}

    def setUp(self) -> None:
        self.ns = Namespace(self)
        self.site = BruteSite(self, self.ns.host)
        self.site.start()

    def failure_lines(self, source: str) -> list[str]:
        return [line for line in self.site.maillog_text().splitlines()
                if " dovecot: auth: " in line and f",{source}," in line]

    def check_burst(self, proto: str, results: list[dict], source: str) -> None:
        """Only LIMIT passwords were checked, with the penalties between them; every other
        login, the right one last among them, got the temporary error; the block was logged
        before the last checked password's verdict."""
        replies = [r["reply"] or "" for r in results]
        checked = [r for r in results if self.CHECKED[proto] in (r["reply"] or "")]
        blocked = [r for r in results if self.BLOCKED[proto] in (r["reply"] or "")]
        self.assertEqual(len(checked), LIMIT, replies)
        self.assertEqual(len(blocked), len(results) - LIMIT, replies)
        self.assertIn(self.BLOCKED[proto], replies[-1])
        times = sorted(r["t"] for r in checked)
        self.assertGreaterEqual(times[-1] - times[0], DELAY + 2 * DELAY - 0.2, times)
        log = self.site.maillog_text()
        self.assertEqual(len(self.failure_lines(source)), LIMIT, log)
        self.assertNotIn("Login: user=<boss>", log)  # IMAP and POP3 successes
        self.assertNotIn("sasl_method=", log)  # an SMTP AUTH success (Postfix's client= line)
        block = re.search(rf"rip={re.escape(source)}: {LIMIT} login attempts", log)
        self.assertIsNotNone(block, log)
        assert block is not None
        self.assertLess(block.start(), log.index(self.failure_lines(source)[-1]))

    def burst(self, proto: str, mode: str, source: str, wrong: int = WRONG) -> None:
        passwords = [f"wrong{i}" for i in range(wrong)] + ["secret"]
        results = self.ns.attack(proto, self.site.ports[proto], mode, source, passwords)
        self.assertEqual(len(results), len(passwords), results)
        self.check_burst(proto, results, source)

    def test_imap(self) -> None:
        """IMAP LOGIN: 30 connections at once, then 31 LOGINs pipelined in one connection from
        another address of the namespace."""
        self.burst("imap", "parallel", self.ns.client)
        self.burst("imap", "pipelined", self.ns.second)

    def test_pop3(self) -> None:
        """POP3 USER/PASS over 30 connections at once (one connection closes after three
        failures, so pipelining cannot try more)."""
        self.burst("pop3", "parallel", self.ns.client)

    def test_smtp_auth(self) -> None:
        """SMTP AUTH PLAIN on port 25: 30 connections at once, then 16 AUTHs pipelined in one
        (more would end at Postfix's error limit, 20, before the right password)."""
        self.burst("smtp", "parallel", self.ns.client)
        self.burst("smtp", "pipelined", self.ns.second, wrong=15)
