"""MTA-STS over a real network: the policy server listens on port 443 inside a network namespace
of its own (``mtasts<pid>``, a veth pair in 198.51.100.0/24) with a certificate for
``mta-sts.*.example.test`` made now and signed by a test CA; a twisted.names server on
127.0.0.1 holds the ``_mta-sts`` TXT records and points the ``mta-sts.`` names at the
namespace. mailsuite.mta.mtastsfetch fetches through that resolver (never getaddrinfo: the
names exist nowhere else) and checks the certificate against the test CA (``smtp_tls_CAfile``).
And the inbound side: the real server's autoconfig site serves our policy to curl."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.names import dns
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver
from mailsuite.mta.mtasts import parse_policy
from mailsuite.mta.mtastscache import MtaSts, cache_path
from mailsuite.mta.mtastsfetch import FetchError, PolicyFetcher
from mailsuite.threads import InPool
from tests import fakemx
from tests.integration.netns import can_run, ip
from tests.integration.test_account_setup import AutoconfigSite

HERE = os.path.dirname(os.path.abspath(__file__))
POLICY = "version: STSv1\nmode: enforce\nmx: mx.good.example.test\nmax_age: 86400\n"
#: the names the server's certificate covers (not mta-sts.wrongname.example.test)
NAMES = ("good", "redirect", "ctype", "big", "change", "slow", "wrongname-not")


def make_certificates(directory: str) -> tuple[str, str, str]:
    """(CA file, server cert, server key) under ``directory``: a test CA and a server
    certificate it signed for mta-sts.NAME.example.test of every NAME in NAMES."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailsuite MTA-STS test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(f"mta-sts.{n}.example.test") for n in NAMES]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                        "mta-sts.good.example.test")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths  # type: ignore[return-value]


class StsNamespace:
    """``mtasts<pid>`` with a veth pair ``mtasts<n>h`` (here) / ``mtasts<n>n`` (inside), in
    the first /29 of 198.51.100.0/24 from a choice by pid whose addresses nobody holds."""

    def __init__(self, testcase: unittest.TestCase, prefix: str = "mtasts") -> None:
        """``prefix``: of the namespace and link names (another test file's own)."""
        self.name = f"{prefix}{os.getpid()}"
        try:
            ip("netns", "add", self.name)
        except subprocess.CalledProcessError as e:
            raise unittest.SkipTest(f"cannot create a network namespace: {e.stderr}") from e
        testcase.addCleanup(ip, "netns", "del", self.name)
        used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        for k in range(30):
            n = (os.getpid() + k) % 30
            host, inside = f"198.51.100.{8 * n + 1}", f"198.51.100.{8 * n + 2}"
            if f" {host}/" in used or f" {inside}/" in used:
                continue
            try:
                ip("link", "add", f"{prefix}{n}h", "type", "veth", "peer", "name", f"{prefix}{n}n")
            except subprocess.CalledProcessError:
                continue
            break
        else:
            raise unittest.SkipTest("no free /29 of 198.51.100.0/24 for the namespace")
        testcase.addCleanup(subprocess.run, ["ip", "link", "del", f"{prefix}{n}h"],
                            capture_output=True)
        self.host, self.inside = host, inside
        ip("link", "set", f"{prefix}{n}n", "netns", self.name)
        ip("addr", "add", f"{host}/29", "dev", f"{prefix}{n}h")
        ip("link", "set", f"{prefix}{n}h", "up")
        ip("-n", self.name, "addr", "add", f"{inside}/29", "dev", f"{prefix}{n}n")
        ip("-n", self.name, "link", "set", f"{prefix}{n}n", "up")
        ip("-n", self.name, "link", "set", "lo", "up")

    def start_server(self, testcase: unittest.TestCase, *args: str) -> None:
        """mtasts_https.py inside the namespace on port 443; returns once it listens."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable,
             os.path.join(HERE, "mtasts_https.py"), self.inside, "443", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def stop() -> None:
            proc.terminate()
            proc.wait(timeout=20)

        testcase.addCleanup(stop)
        line = proc.stdout.readline() if proc.stdout else b""
        if line.strip() != b"ready":
            raise AssertionError("the policy server did not start")


class FetchTests(unittest.TestCase):
    """The real fetcher against the real HTTPS server on 443 in the namespace."""

    if can_run():
        skip = can_run()

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca, cert, key = make_certificates(directory)
        self.policies = os.path.join(directory, "policies")
        os.makedirs(self.policies)
        self.write_policy("good.example.test", POLICY)
        self.write_policy("change.example.test", POLICY.replace("good", "change"))
        self.write_policy("wrongname.example.test", POLICY)
        self.write_policy("slow.example.test", POLICY)
        self.net = StsNamespace(self)
        self.net.start_server(self, cert, key, self.policies)
        records: dict[tuple[str, int], list[Any]] = {}
        for name in ("good", "redirect", "ctype", "big", "change", "slow", "wrongname"):
            records[(f"mta-sts.{name}.example.test", dns.A)] = [dns.Record_A(self.net.inside)]
            records[(f"_mta-sts.{name}.example.test", dns.TXT)] = [
                dns.Record_TXT(b"v=STSv1; id=first")]
        port, self.zone, ports = fakemx.start_dns(records)
        for p in ports:
            self.addCleanup(p.stopListening)
        self.names = MXResolver(f"127.0.0.1:{port}", reactor=reactor)

    def write_policy(self, domain: str, text: str) -> None:
        with open(os.path.join(self.policies, domain), "w") as f:
            f.write(text)

    def fetcher(self, cafile: str | None = None, timeout: float = 30.0) -> PolicyFetcher:
        return PolicyFetcher(reactor, self.names, cafile=self.ca if cafile is None else cafile,
                             system_ca=cafile is not None, timeout=timeout)

    @defer.inlineCallbacks
    def failure_of(self, domain: str, fetcher: PolicyFetcher | None = None) -> Any:
        try:
            yield (fetcher or self.fetcher()).fetch(domain)
        except FetchError as e:
            return e
        raise AssertionError(f"the policy of {domain} was fetched")

    @defer.inlineCallbacks
    def test_fetch_through_our_resolver(self) -> None:
        """The policy of good.example.test comes over HTTPS from 198.51.100.x:443, the name
        mta-sts.good.example.test looked up in our DNS server (A query seen there), the
        certificate verified against the test CA."""
        policy = yield self.fetcher().fetch("good.example.test")
        self.assertEqual((policy.mode, policy.mx, policy.max_age),
                         ("enforce", ("mx.good.example.test",), 86400))
        self.assertIn(("mta-sts.good.example.test", dns.A), self.zone.queries)

    @defer.inlineCallbacks
    def test_redirect_not_followed(self) -> None:
        """3.3: a 301 is a failed fetch, not a fetch of where it points."""
        e = yield self.failure_of("redirect.example.test")
        self.assertEqual(e.result_type, "sts-policy-fetch-error")
        self.assertIn("301", e.text)

    @defer.inlineCallbacks
    def test_wrong_name_certificate(self) -> None:
        """A certificate that does not name mta-sts.wrongname.example.test is refused:
        sts-webpki-invalid."""
        e = yield self.failure_of("wrongname.example.test")
        self.assertEqual(e.result_type, "sts-webpki-invalid", e.text)
        self.assertIn("DNSMismatch", e.text)

    @defer.inlineCallbacks
    def test_untrusted_certificate(self) -> None:
        """Without the test CA (system CAs only), the same server is not trusted."""
        e = yield self.failure_of("good.example.test", self.fetcher(cafile=""))
        self.assertEqual(e.result_type, "sts-webpki-invalid", e.text)
        self.assertIn("certificate verify failed", e.text)

    @defer.inlineCallbacks
    def test_content_type_and_size(self) -> None:
        """text/html is refused (sts-policy-invalid), so is a body over 64 KB."""
        e = yield self.failure_of("ctype.example.test")
        self.assertEqual(e.result_type, "sts-policy-invalid")
        self.assertIn("text/html", e.text)
        e = yield self.failure_of("big.example.test")
        self.assertEqual(e.result_type, "sts-policy-invalid")
        self.assertIn("larger", e.text)

    @defer.inlineCallbacks
    def test_timeout(self) -> None:
        """A server that does not answer within the fetch's time limit is a fetch error."""
        e = yield self.failure_of("slow.example.test", self.fetcher(timeout=1.0))
        self.assertEqual(e.result_type, "sts-policy-fetch-error")
        self.assertIn("timed out", e.text)

    @defer.inlineCallbacks
    def test_txt_id_change_refetches(self) -> None:
        """Through MtaSts: the first ask fetches; a changed policy file is not seen while the
        TXT id stays; once the id changes, the new policy is fetched and used."""
        sts = MtaSts(self.names, self.fetcher(), reactor, InPool(reactor),
                     cache_path(self.mktemp()))
        policy = yield sts.policy_for("change.example.test")
        self.assertEqual(policy.mode, "enforce")
        self.write_policy("change.example.test", POLICY.replace("enforce", "testing"))
        policy = yield sts.policy_for("change.example.test")
        self.assertEqual(policy.mode, "enforce")
        self.zone.records[("_mta-sts.change.example.test", dns.TXT)] = [
            dns.Record_TXT(b"v=STSv1; id=second")]
        policy = yield sts.policy_for("change.example.test")
        self.assertEqual(policy.mode, "testing")
        self.assertEqual(sts.entries["change.example.test"].record_id, "second")


class StsSite(AutoconfigSite):
    """The real server with autoconfig on, serving an enforce policy."""

    def ini(self) -> str:
        return super().ini().replace(
            "[mail]\n", "[mail]\nmta_sts_mode = enforce\nmta_sts_max_age = 2w\n", 1)


class ServeTests(unittest.TestCase):
    """The real server (twistd) serves our policy; curl fetches it as a sender would."""

    if not shutil.which("curl"):
        skip = "curl is not installed"

    def curl(self, *args: str) -> bytes:
        proc = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--max-time", "20",
                               *args], capture_output=True, timeout=60, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode() + self.site.log())
        return proc.stdout

    def test_policy_over_http_and_https(self) -> None:
        """GET /.well-known/mta-sts.txt for mta-sts.example.test: the policy (mode
        enforce, mx mail.example.test, max_age 2 weeks) as text/plain over HTTP and over
        HTTPS (the site's certificate); another Host gets 404."""
        self.site = StsSite(self)
        self.site.start()
        port = self.site.web_ports["autoconfig"]
        url = f"http://127.0.0.1:{port}/.well-known/mta-sts.txt"
        body = self.curl("-H", "Host: mta-sts.example.test", url)
        policy = parse_policy(body, "example.test")
        self.assertEqual((policy.mode, policy.mx, policy.max_age),
                         ("enforce", ("mail.example.test",), 1209600))
        head = self.curl("-H", "Host: mta-sts.example.test", "-D", "-", "-o", "/dev/null", url)
        self.assertIn(b"content-type: text/plain", head.lower())
        secure = self.site.web_ports["autoconfigs"]
        body = self.curl("--insecure", "--resolve", f"mta-sts.example.test:{secure}:127.0.0.1",
                         f"https://mta-sts.example.test:{secure}/.well-known/mta-sts.txt")
        self.assertEqual(parse_policy(body).mode, "enforce")
        proc = subprocess.run(["curl", "--silent", "-o", "/dev/null", "-w", "%{http_code}",
                               "-H", "Host: www.example.test", url], capture_output=True,
                              timeout=60, check=False)
        self.assertEqual(proc.stdout, b"404")
