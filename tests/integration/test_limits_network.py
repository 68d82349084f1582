"""Limits as a remote client sees them (issue 11 item 2): the real server, a client in a network
namespace (tests/integration/netns.py, 198.51.100.0/24) outside mynetworks, and the same client
program on loopback, which this server's mynetworks holds.

- SMTP's anvil limits (connection count and rate) refuse the remote client with 421 4.7.0,
  log it once, keep serving another address, and never touch loopback (in
  smtpd_client_event_limit_exceptions = $mynetworks, as in Postfix);
- Dovecot's mail_max_userip_connections holds for IMAP and POP3 from both, loopback included
  (Dovecot exempts nobody).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial import unittest

from tests.integration import netns
from tests.integration.harness import Site

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "limits_client.py")


class LimitSite(Site):
    def __init__(self, testcase: unittest.TestCase, host: str, mail: str, sections: str = ""):
        self.host, self.sections = host, sections
        # no front-door wait (smtp/postscreen.py): these clients read the greeting's first line
        super().__init__(testcase, mail_extra="mynetworks = 127.0.0.0/8\n"
                         "postscreen_greet_wait = 0s\n" + mail)

    def ini(self) -> str:
        text = super().ini().replace(
            "inet_interfaces = 127.0.0.1", f"inet_interfaces = 127.0.0.1, {self.host}")
        return text.replace("[tls]\n", self.sections + "\n[tls]\n", 1)


def results(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


class LimitNetworkTests(unittest.TestCase):
    skip = netns.can_run()

    def start(self, mail: str = "", sections: str = "") -> None:
        self.ns = netns.Namespace(self)
        self.site = LimitSite(self, self.ns.host, mail, sections)
        self.site.start()

    def remote(self, service: str, n: int, *options: str) -> list[dict]:
        port = str(self.site.ports[service])
        return results(self.ns.run(CLIENT, self.ns.host, port, self.ns.client, str(n), *options))

    def local(self, service: str, n: int, *options: str) -> list[dict]:
        port = str(self.site.ports[service])
        out = subprocess.run([sys.executable, CLIENT, "127.0.0.1", port, "127.0.0.1", str(n),
                              *options], capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        return results(out.stdout)

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.site.maillog_text().splitlines() if text in line]

    def test_smtp_connection_count(self) -> None:
        """smtpd_client_connection_count_limit = 3: a remote client's 4th and 5th connections
        at once get 421 4.7.0 (logged once), a second remote address is greeted meanwhile;
        loopback (mynetworks) holds 6 at once."""
        self.start("smtpd_client_connection_count_limit = 3\n")
        out = self.remote("smtp", 5, "--then", self.ns.second)
        greetings = [r["greeting"] or "" for r in out]
        self.assertTrue(all(g.startswith("220 ") for g in greetings[:3]), greetings)
        refusal = f"421 4.7.0 mail.example.test Error: too many connections from {self.ns.client}"
        self.assertEqual(greetings[3:5], [refusal, refusal])
        self.assertTrue(greetings[5].startswith("220 "), greetings)
        (line,) = self.log_lines("limit exceeded")
        self.assertIn(f"warning: Connection concurrency limit exceeded: 4 from"
                      f" unknown[{self.ns.client}] for service smtp", line)
        local = self.local("smtp", 6)
        self.assertTrue(all((r["greeting"] or "").startswith("220 ") for r in local), local)

    def test_smtp_connection_rate(self) -> None:
        """smtpd_client_connection_rate_limit = 4 per anvil_rate_time_unit: the remote client's
        5th connection within the minute is refused though the others were closed; loopback
        connects 8 times."""
        self.start("smtpd_client_connection_rate_limit = 4\n")
        out = self.remote("smtp", 6, "--send", "QUIT", "--close-each")
        greetings = [r["greeting"] or "" for r in out]
        self.assertTrue(all(g.startswith("220 ") for g in greetings[:4]), greetings)
        self.assertTrue(all(g.startswith("421 4.7.0") for g in greetings[4:]), greetings)
        self.assertEqual(len(self.log_lines("warning: Connection rate limit exceeded: 5 from")),
                         1)
        local = self.local("smtp", 8, "--send", "QUIT", "--close-each")
        self.assertTrue(all((r["greeting"] or "").startswith("220 ") for r in local), local)

    def test_userip_imap_and_pop3(self) -> None:
        """mail_max_userip_connections = 2 for [imap] and [pop3]: the 3rd login of boss from
        one address gets * BYE / -ERR [IN-USE], from the remote address and from loopback
        alike; another address logs in meanwhile."""
        self.start(sections="[imap]\nmail_max_userip_connections = 2\n\n"
                            "[pop3]\nmail_max_userip_connections = 2\n")
        bye = ("* BYE Maximum number of connections from user+IP exceeded"
               " (mail_max_userip_connections=2)")
        for run in (self.remote, self.local):
            out = run("imap", 3, "--send", "a LOGIN boss secret", *(
                ["--then", self.ns.second] if run == self.remote else []))
            replies = [r["reply"][0] if r["reply"] else None for r in out]
            self.assertTrue(all(r and r.startswith("a OK") for r in replies[:2]), replies)
            self.assertEqual(replies[2], bye)
            if run == self.remote:
                self.assertTrue(replies[3] and replies[3].startswith("a OK"), replies)
            out = run("pop3", 3, "--send", "USER boss\\nPASS secret", "--lines", "2")
            self.assertEqual([r["reply"][-1] for r in out],
                             ["+OK Logged in.", "+OK Logged in.", "-ERR [IN-USE]" + bye[5:]])
        for program in ("imap-login", "pop3-login"):
            lines = [x for x in self.log_lines("user+IP exceeded") if f" dovecot: {program}: " in x]
            self.assertEqual(len(lines), 2, lines)  # once per address
