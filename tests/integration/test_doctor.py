"""``mailsuite doctor`` against the real server on loopback and a DNS server on 127.0.0.1 with
a good zone (every check passes: exit 0) and broken ones (SPF missing or not authorizing our
address, a DKIM key other than the configured one, no DMARC, the MX on another host, a PTR
naming another name: each a FAIL line naming the problem and its fix, exit 1). The relay test
connects from 127.0.0.1, outside this site's mynetworks (192.0.2.0/24), and gets 554 5.7.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, threads
from twisted.names import dns
from twisted.trial import unittest

from mailsuite.dkimcmd import new_key
from mailsuite.dkimconf import parse_key, txt_record
from tests import fakemx
from tests.fakedns_dnssec import make_cert
from tests.integration import netns
from tests.integration.harness import Site
from tests.integration.test_dkim_real import keygen, mailsuite

HOST, DOMAIN = "mail.example.test", "example.test"
PTR = "1.0.0.127.in-addr.arpa"


def write_certificate(site: Site) -> None:
    """A certificate from a test CA for myhostname (what a real CA gives; the first start
    would otherwise make a self-signed one, which the doctor rightly FAILs)."""
    ca = make_cert("Doctor Test CA", [], ca=True)
    leaf = make_cert(HOST, [HOST], issuer=ca, days=(-1, 90))
    os.makedirs(os.path.dirname(site.cert), exist_ok=True)
    with open(site.cert, "wb") as f:
        f.write(leaf.pem() + ca.pem())
    with open(os.open(site.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(leaf.key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def lines(output: str) -> dict[str, tuple[str, str, str]]:
    """{check: (status, found, fix)} of the doctor's --json output."""
    return {r["check"]: (r["status"], r["found"], r["fix"]) for r in json.loads(output)}


class DoctorTests(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.records: dict[tuple[str, int], list[Any]] = {}
        self.dns_port, _, ports = fakemx.start_dns(self.records)
        for port in ports:
            self.addCleanup(port.stopListening)
        self.site = Site(self, tls=True,
                         mail_extra=f"dns_resolver = 127.0.0.1:{self.dns_port}")
        write_certificate(self.site)
        name, strings, line = keygen(self.site, DOMAIN, "doc")  # type: ignore[arg-type]
        with open(self.site.config, "a") as f:
            f.write(f"\n[dkim]\n{line}\n")
        self.records.update({
            (HOST, dns.A): [dns.Record_A("127.0.0.1")],
            (DOMAIN, dns.MX): [dns.Record_MX(10, HOST.encode())],
            (DOMAIN, dns.TXT): [dns.Record_TXT(b"v=spf1 mx -all")],
            (name, dns.TXT): [dns.Record_TXT(*[s.encode() for s in strings])],
            (f"_dmarc.{DOMAIN}", dns.TXT): [dns.Record_TXT(b"v=DMARC1; p=quarantine")],
            (PTR, dns.PTR): [dns.Record_PTR(HOST.encode())],
        })
        self.dkim_name = name
        self.site.start()

    def doctor(self, *argv: str) -> defer.Deferred[Any]:
        """The command in a subprocess (a thread waits for it: the DNS server answers on this
        reactor meanwhile)."""
        return threads.deferToThread(mailsuite, "doctor", "-C", self.site.config, *argv)

    @defer.inlineCallbacks
    def test_good_zone_passes(self) -> Any:
        """Every check passes (warnings only for what loopback cannot be: a public address):
        exit 0; the ports listen on 127.0.0.1 and greet, TLS ones after a handshake; the relay
        is closed to 127.0.0.1 (outside mynetworks)."""
        p = yield self.doctor()
        if os.environ.get("DOCTOR_SHOW"):
            print(p.stdout)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("FAIL  ", p.stdout)
        self.assertNotIn("Traceback", p.stderr)
        p = yield self.doctor("--json")
        got = lines(p.stdout)
        statuses = {check: status for check, (status, _, _) in got.items()}
        for check in ("myhostname", f"MX {DOMAIN}", "PTR 127.0.0.1", f"SPF {DOMAIN}",
                      f"DKIM {self.dkim_name}", f"DMARC {DOMAIN}", "relay", "certificate",
                      "mail spool", "queue", "aliases", "tables access"):
            self.assertEqual(statuses.get(check), "ok", (check, got.get(check)))
        self.assertEqual(statuses[f"A/AAAA {HOST}"], "warn")  # 127.0.0.1: not public
        for name in ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"):
            status, found, _ = got[f"port {name} {self.site.ports[name]}"]
            self.assertEqual(status, "ok", (name, found))
            self.assertIn("127.0.0.1", found)
        self.assertIn("answers '220 ", got[f"port smtps {self.site.ports['smtps']}"][1])
        self.assertIn("answers '* OK", got[f"port imaps {self.site.ports['imaps']}"][1])
        self.assertRegex(got["relay"][1], r"from 127\.0\.0\.1 \(not in mynetworks\): 554 5\.7\.1")

    @defer.inlineCallbacks
    def test_broken_zones_fail_with_fixes(self) -> Any:
        """SPF not authorizing us, another DKIM key, no DMARC, the MX elsewhere, a PTR naming
        another host: each a FAIL naming it, with the record to publish; exit 1. Then SPF
        missing: FAIL with a record to publish."""
        other = parse_key(new_key(False, 1024))
        self.records[(DOMAIN, dns.TXT)] = [dns.Record_TXT(b"v=spf1 ip4:192.0.2.9 -all")]
        self.records[(self.dkim_name, dns.TXT)] = [dns.Record_TXT(txt_record(other).encode())]
        del self.records[(f"_dmarc.{DOMAIN}", dns.TXT)]
        self.records[(DOMAIN, dns.MX)] = [dns.Record_MX(10, b"mx.elsewhere.test")]
        self.records[(PTR, dns.PTR)] = [dns.Record_PTR(b"localhost")]
        p = yield self.doctor("--skip", "ports", "--skip", "relay", "--skip", "files")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        text = p.stdout
        self.assertRegex(text, r"FAIL  SPF example\.test +\"v=spf1 ip4:192\.0\.2\.9 -all\""
                         r" gives fail for 127\.0\.0\.1")
        self.assertIn('fix: publish example.test. IN TXT "v=spf1 ip4:192.0.2.9 ip4:127.0.0.1'
                      ' -all"', text)
        self.assertRegex(text, rf"FAIL  DKIM {re.escape(self.dkim_name)} +p= is not the"
                         " public key of")
        self.assertRegex(text, rf"fix: publish {re.escape(self.dkim_name)}\. IN TXT"
                         r' "v=DKIM1; k=rsa; p=')
        self.assertRegex(text, r"FAIL  DMARC example\.test +no v=DMARC1 record")
        self.assertIn('fix: publish _dmarc.example.test. IN TXT "v=DMARC1; p=quarantine;'
                      ' rua=mailto:postmaster@example.test"', text)
        self.assertRegex(text, r"FAIL  MX example\.test +10 mx\.elsewhere\.test: not"
                         r" mail\.example\.test")
        self.assertIn("fix: publish example.test. IN MX 10 mail.example.test.", text)
        self.assertRegex(text, r"FAIL  PTR 127\.0\.0\.1 +localhost, not mail\.example\.test")
        self.assertIn("set its reverse DNS (PTR) to mail.example.test", text)
        self.records[(DOMAIN, dns.TXT)] = [dns.Record_TXT(b"some-verification=1")]
        p = yield self.doctor("--skip", "ports", "--skip", "relay", "--skip", "files")
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stdout, r"FAIL  SPF example\.test +no v=spf1 TXT record")
        self.assertIn('fix: publish example.test. IN TXT "v=spf1 ip4:127.0.0.1 -all"', p.stdout)

    @defer.inlineCallbacks
    def test_stopped_server(self) -> Any:
        """The server stopped: each port FAILs with "nothing listens"; the relay test cannot
        run (a warning). Every line is a verdict, never a traceback."""
        self.site.stop()
        p = yield self.doctor("--skip", "host", "--skip", "records", "--skip", "files")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stdout, rf"FAIL  port smtp {self.site.ports['smtp']} +nothing"
                         " listens")
        self.assertRegex(p.stdout, r"warn  relay +could not run")
        self.assertNotIn("Traceback", p.stdout + p.stderr)


def veth_address(case: unittest.TestCase) -> str:
    """A second address of this host: the host end of a veth pair into a namespace of ours
    (``doctor<pid>``, 198.51.100.240/28), removed at cleanup."""
    reason = netns.can_run()
    if reason:
        raise unittest.SkipTest(reason)
    pid = os.getpid()
    name, outside, inside = f"doctor{pid}", f"doc{pid % 100000}h", f"doc{pid % 100000}n"
    try:
        netns.ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        raise unittest.SkipTest(f"cannot create a network namespace: {e.stderr!r}") from e
    case.addCleanup(netns.ip, "netns", "del", name)
    netns.ip("link", "add", outside, "type", "veth", "peer", "name", inside)
    case.addCleanup(subprocess.run, ["ip", "link", "del", outside], capture_output=True)
    host = f"198.51.100.{241 + 4 * (pid % 4)}"
    netns.ip("link", "set", inside, "netns", name)
    netns.ip("addr", "add", f"{host}/30", "dev", outside)
    netns.ip("link", "set", outside, "up")
    return host


class RelayFromStrangerTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_relay_test_uses_an_address_outside_mynetworks(self) -> Any:
        """Loopback trusted, the host with a second address outside mynetworks: the relay
        test goes from a non-loopback address of the host and gets 554 5.7.1 (what it does
        on a real server, whose public address is not in mynetworks)."""
        address = veth_address(self)
        site = Site(self, mail_extra="mynetworks = 127.0.0.0/8")  # loopback trusted
        with open(site.config) as f:  # listening on the second address too
            ini = f.read().replace("inet_interfaces = 127.0.0.1",
                                   f"inet_interfaces = 127.0.0.1, {address}")
        with open(site.config, "w") as f:
            f.write(ini)
        site.start()
        p = yield threads.deferToThread(mailsuite, "doctor", "-C", site.config, "--json",
                                        "--skip", "host", "--skip", "records")
        status, found, _ = lines(p.stdout)["relay"]
        self.assertEqual(status, "ok", found)
        source = re.search(r"from (\S+) \(not in mynetworks\): 554 5\.7\.1", found)
        self.assertIsNotNone(source, found)
        self.assertFalse(source.group(1).startswith("127."), found)  # type: ignore[union-attr]
