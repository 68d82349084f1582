"""SMTP restrictions against the real server (issue 12 items 9 and 10):

- greylisting by Debian's postgrey (the real /usr/sbin/postgrey on a loopback port, its db in
  a temp dir, ``--delay=2``) through ``check_policy_service``: the first try gets 450, the
  retry after the delay is taken with postgrey's X-Greylist header;
- ``reject_rbl_client`` against a twisted.names server on loopback (tests/fakemx), the
  loopback client outside mynetworks (the harness's default): a DNSBL that answers SERVFAIL
  is passed over, a listing is refused with Postfix's reply and the TXT reason;
- postscreen's DNSBL score from a network namespace (loopback is never screened): the listed
  address gets 550 at RCPT under ``enforce``, the other address of the namespace passes.

The DNS server runs on this process's reactor, so those clients run in threads.
"""

from __future__ import annotations

import ast
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.names import dns
from twisted.trial import unittest

from tests import fakemx
from tests.integration import netns
from tests.integration.harness import Site, free_port, wait_group
from tests.integration.test_end_to_end import message

POSTGREY = "/usr/sbin/postgrey"


def start_postgrey(case: unittest.TestCase, delay: int) -> int:
    """The real postgrey on 127.0.0.1 (its db in a temp dir); its port. Stopped at cleanup."""
    if not os.path.exists(POSTGREY):
        raise unittest.SkipTest("needs Debian's postgrey (apt-get install postgrey)")
    db = tempfile.mkdtemp(prefix="pg-", dir="/tmp")
    case.addCleanup(shutil.rmtree, db, True)
    if os.geteuid() == 0:  # postgrey drops to its own user, who must own the db
        os.chown(db, pwd.getpwnam("postgrey").pw_uid, -1)
    port = free_port()
    log = open(os.path.join(db, "postgrey.log"), "wb")  # noqa: SIM115 (closed at cleanup)
    case.addCleanup(log.close)
    process = subprocess.Popen(
        [POSTGREY, f"--inet=127.0.0.1:{port}", f"--dbdir={db}", f"--delay={delay}",
         "--hostname=grey.example.test", "--auto-whitelist-clients=0",
         "--whitelist-clients=/dev/null", "--whitelist-recipients=/dev/null"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop() -> None:  # SIGTERM, then whatever is left of its group is killed
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        wait_group(process.pid)

    case.addCleanup(stop)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"postgrey exited {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return port
        except OSError:
            time.sleep(0.1)
    raise AssertionError("postgrey did not start")


def send(site: Site, rcpt: str, subject: str, sender: str = "friend@remote.test") -> Any:
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
        return s.sendmail(sender, [rcpt], message(subject, "hello\n", sender=sender, to=rcpt))


class PostgreyTests(unittest.TestCase):
    timeout = 120

    def test_greylisted_then_accepted(self) -> None:
        """450 on the first try (postgrey's DEFER_IF_PERMIT, Postfix's wording), the same
        message 2 s later is delivered with postgrey's X-Greylist header first."""
        port = start_postgrey(self, delay=2)
        site = Site(self, mail_extra="smtpd_recipient_restrictions = reject_unauth_destination,"
                    f" check_policy_service inet:127.0.0.1:{port}\n")
        site.start()
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as refused:
            send(site, "boss@example.test", "grey one")
        code, text = refused.exception.recipients["boss@example.test"]
        self.assertEqual(code, 450)
        # postgrey gives DSN 4.2.0 to a Postfix that sends etrn_domain (2.3 and later)
        self.assertRegex(text.decode(), r"^4\.2\.0 <boss@example.test>: Recipient address"
                         r" rejected: Greylisted, see https?://postgrey")
        time.sleep(3)
        send(site, "boss@example.test", "grey two")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"grey two" not in self._inbox(site):
            time.sleep(0.1)
        box = self._inbox(site)
        self.assertIn(b"Subject: grey two", box)
        self.assertRegex(box, rb"\nX-Greylist: delayed [2-9] seconds by postgrey-[\d.]+ at"
                         rb" grey.example.test; [^\n]+\nReceived: from ")
        self.assertNotIn(b"grey one", box)
        self.assertRegex(site.maillog_text(), r"NOQUEUE: reject: RCPT from localhost\[127.0.0.1\]:"
                         r" 450 4.2.0 <boss@example.test>: Recipient address rejected: Greylisted")

    def _inbox(self, site: Site) -> bytes:
        try:
            with open(site.inbox("boss"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""


class TableStartTests(unittest.TestCase):
    def test_broken_table_stops_the_start(self) -> None:
        """A table entry that is no access(5) action: the start fails with one line naming
        the key, file and line (checked by the root master: the network process could not
        say it)."""
        table = os.path.join(tempfile.mkdtemp(prefix="acc-", dir="/tmp"), "access")
        self.addCleanup(shutil.rmtree, os.path.dirname(table), True)
        with open(table, "w") as f:
            f.write("# senders\nspam.example REJECT\nham.example MAYBE\n")
        site = Site(self, mail_extra=f"smtpd_sender_restrictions = check_sender_access"
                    f" hash:{table}\n")
        with self.assertRaises(AssertionError) as failed:
            site.start()
        self.assertIn(f"mailsuite: [mail] smtpd_sender_restrictions: {table}:3: 'MAYBE' is not"
                      " an access(5) action", str(failed.exception))


class BrokenZone(fakemx.ZoneResolver):
    """broken.example answers SERVFAIL (the server turns any DomainError into NXDOMAIN)."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        if name.decode().lower().rstrip(".").endswith("broken.example"):
            return defer.fail(RuntimeError("broken zone"))
        return super()._lookup(name, cls, type, timeout)


def listing(ip: str) -> dict[tuple[str, int], list[Any]]:
    name = ".".join(reversed(ip.split("."))) + ".zen.example"
    return {(name, dns.A): [dns.Record_A("127.0.0.2")],
            (name, dns.TXT): [dns.Record_TXT(b"listed for the test")]}


class DNSBLCase(unittest.TestCase):
    timeout = 120

    def dns(self, records: dict[tuple[str, int], list[Any]]) -> str:
        resolver = BrokenZone(records)
        factory = fakemx.server.DNSServerFactory(authorities=[resolver])
        udp = fakemx.reactor.listenUDP(0, dns.DNSDatagramProtocol(factory),
                                       interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        self.addCleanup(self.flushLoggedErrors, RuntimeError)  # the server logs each SERVFAIL
        return f"127.0.0.1:{udp.getHost().port}"


class RBLClientTests(DNSBLCase):
    @defer.inlineCallbacks
    def test_rbl_client_refused_broken_dnsbl_passed_over(self) -> Any:
        server = self.dns(listing("127.0.0.1"))
        site = Site(self, mail_extra=f"dns_resolver = {server}\nsmtpd_client_restrictions ="
                    " reject_rbl_client broken.example, reject_rbl_client zen.example\n")
        site.start()
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as refused:
            yield threads.deferToThread(send, site, "boss@example.test", "rbl")
        code, text = refused.exception.recipients["boss@example.test"]
        self.assertEqual((code, text.decode()), (554, "5.7.1 Service unavailable; Client host"
                         " [127.0.0.1] blocked using zen.example; listed for the test"))
        log = site.maillog_text()
        self.assertIn("warning: dnsblog_query: lookup error for DNS query broken.example", log)
        self.assertIn("NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 554 5.7.1 Service"
                      " unavailable; Client host [127.0.0.1] blocked using zen.example", log)


# Runs inside the namespace: one session from each address, what RCPT got (repr).
CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for source in sys.argv[3:]:
    s = socket.create_connection((host, port), timeout=20, source_address=(source, 0))
    f = s.makefile("rb")
    while not f.readline().startswith(b"220 "):
        pass
    replies = []
    for line in (b"HELO c.example", b"MAIL FROM:<a@remote.test>", b"RCPT TO:<boss@example.test>"):
        s.sendall(line + b"\r\n")
        replies.append(f.readline().decode().strip())
    s.sendall(b"QUIT\r\n")
    s.close()
    print(repr(replies))
"""


class NamespaceSite(Site):
    """Listening on the host side of the namespace's veth pair too."""

    def __init__(self, testcase: unittest.TestCase, host: str, mail: str) -> None:
        self.host = host
        super().__init__(testcase, mail_extra=mail)

    def ini(self) -> str:
        return super().ini().replace(
            "inet_interfaces = 127.0.0.1", f"inet_interfaces = 127.0.0.1, {self.host}")


class PostscreenDNSBLTests(DNSBLCase):
    skip = netns.can_run()

    @defer.inlineCallbacks
    def test_enforce_refuses_the_listed_address_only(self) -> Any:
        ns = netns.Namespace(self)
        server = self.dns(listing(ns.client))
        site = NamespaceSite(self, ns.host, f"dns_resolver = {server}\n"
                             "postscreen_greet_wait = 1s\n"
                             "postscreen_dnsbl_sites = zen.example*2, broken.example*5\n"
                             "postscreen_dnsbl_threshold = 2\npostscreen_dnsbl_action = enforce\n")
        site.start()
        out = yield threads.deferToThread(
            subprocess.run, ["ip", "netns", "exec", ns.name, sys.executable, "-c", CLIENT,
                             ns.host, str(site.ports["smtp"]), ns.client, ns.second],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        listed, clean = (ast.literal_eval(line) for line in out.stdout.splitlines())
        self.assertEqual(listed[2], f"550 5.7.1 Service unavailable; client [{ns.client}]"
                         " blocked using zen.example")
        self.assertEqual(clean[2], "250 2.1.5 Ok")
        log = site.maillog_text()
        self.assertRegex(log, rf"postscreen\[\d+\]: DNSBL rank 2 for \[{ns.client}\]:\d+")
        self.assertRegex(log, rf"PASS NEW \[{ns.second}\]:\d+")
