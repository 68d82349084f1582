"""ACME end to end against Debian's pebble (Let's Encrypt's test CA) on loopback: the real
server (twistd; privilege-separated when the tests run as root) gets a certificate for
myhostname and the autoconfig names over http-01 on its HTTP responder, writes it, and its
IMAP and SMTP STARTTLS present it without a restart; and the ACME service with the real client
renews when its clock says the certificate is due, the second one picked up by the running TLS.
acme_server is ``https://acme.test:PORT/dir``, a name only the tests' DNS server knows: the
client looks it up through ``[mail] dns_resolver`` (mailsuite.acme.resolve), not getaddrinfo.
Every wait is bounded."""

from __future__ import annotations

import datetime
import imaplib
import os
import smtplib
import ssl
from typing import Any

from cryptography import x509
from cryptography.x509 import verification
from twisted.internet import defer, reactor, task, threads
from twisted.names import dns
from twisted.trial import unittest

from mailsuite import autoconfig
from mailsuite.acme import certfiles
from mailsuite.acme.service import AcmeService
from mailsuite.config import parse_config
from mailsuite.threads import InPool
from mailsuite.tls import ServerTLS, ensure_certificate
from tests import fakemx
from tests.integration.harness import Site, free_port
from tests.integration.pebble import NAME as PEBBLE_NAME
from tests.integration.pebble import SKIP, Pebble
from tests.test_tls import client_conn, handshake

HOST = "mail.example.test"
NAMES = [HOST, "autoconfig.example.test", "autodiscover.example.test"]
ISSUE_TIMEOUT = 90.0


def dns_for(names: list[str]) -> dict[tuple[str, int], list[Any]]:
    """Every name at 127.0.0.1 (pebble's validation authority connects there)."""
    return {(name, dns.A): [dns.Record_A("127.0.0.1")] for name in names}


@defer.inlineCallbacks
def until(check, timeout: float, what: str, interval: float = 0.25):
    """Poll ``check()`` (run in a thread) until it gives something true, at most ``timeout``
    seconds; the reactor runs meanwhile (the DNS server pebble asks lives on it)."""
    deadline = reactor.seconds() + timeout
    while True:
        result = yield threads.deferToThread(check)
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, interval, lambda: None)


def verify_chain(chain_pem: bytes, root_pem: bytes, name: str) -> x509.Certificate:
    """The leaf of ``chain_pem``, checked (RFC 5280 path, server name) up to ``root_pem``."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    store = verification.Store([x509.load_pem_x509_certificate(root_pem)])
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(
        x509.DNSName(name))
    verifier.verify(certs[0], certs[1:])
    return certs[0]


def presented(context: ssl.SSLContext, kind: str, port: int) -> bytes:
    """(blocking) The DER certificate the server presents after STARTTLS on IMAP or SMTP."""
    if kind == "imap":
        with imaplib.IMAP4("127.0.0.1", port, timeout=10) as imap:
            imap.starttls(ssl_context=context)
            return imap.sock.getpeercert(binary_form=True)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=context)
        return smtp.sock.getpeercert(binary_form=True)


class AcmeSite(Site):
    """A TLS site with the HTTP responder and [tls] acme = yes against ``pebble``."""

    def __init__(self, testcase, http_port: int, acme_lines: str, dns_port: int,
                 one_process: bool = False) -> None:
        self.http_port, self.acme_lines = http_port, acme_lines
        extra = f"dns_resolver = 127.0.0.1:{dns_port}\n"
        super().__init__(testcase, tls=True,
                         mail_extra=extra + ("mail_owner =\n" if one_process else ""))

    def ini(self) -> str:
        text = super().ini().replace("[listen]\n", f"[listen]\nautoconfig = {self.http_port}\n", 1)
        return text.replace("[tls]\n", "[tls]\n" + self.acme_lines, 1)


class PebbleTests(unittest.TestCase):
    skip = SKIP
    timeout = 180

    def setUp(self) -> None:
        self.dns_port, _, ports = fakemx.start_dns(dns_for([*NAMES, PEBBLE_NAME]))
        for p in ports:
            self.addCleanup(p.stopListening)
        self.http_port = free_port()

    def pebble(self, validity: int = 0) -> Pebble:
        ca = Pebble(self, self.http_port, self.dns_port, validity)
        return ca

    def test_server_gets_certificate_and_presents_it(self):
        """acme = yes at the first start: the self-signed certificate is replaced by one from
        pebble for myhostname and the autoconfig names, chaining to pebble's root (fetched
        from its management interface); the key file is 0600; the running server's IMAP
        STARTTLS and SMTP STARTTLS present it (no restart); the maillog says so. (The
        privilege-separated server when the tests run as root: the master's ACME client, the
        network process's HTTP responder and TLS.)"""
        return self.check_server(one_process=False)

    def test_one_process_server_gets_certificate(self):
        """The same with the one-process server (no mail_owner): its own TLS reloads."""
        return self.check_server(one_process=True)

    @defer.inlineCallbacks
    def check_server(self, one_process: bool):
        ca = self.pebble()
        yield threads.deferToThread(ca.wait)
        site = AcmeSite(self, self.http_port, (
            "acme = yes\n"
            f"acme_server = {ca.directory}\n"
            f"acme_ca_file = {ca.tls_ca}\n"
            "acme_email = postmaster@example.test\n"), self.dns_port, one_process)
        yield threads.deferToThread(site.start)

        def issued() -> bytes | None:
            pem = certfiles.read_cert(site.cert) or b""
            now = datetime.datetime.now(datetime.UTC)
            return pem if pem and certfiles.due(pem, NAMES, now, 0) is None else None

        try:
            chain = yield until(issued, ISSUE_TIMEOUT, "the ACME certificate")
        except AssertionError:
            raise AssertionError(f"no certificate:\n{site.maillog_text()}\n{site.log()}"
                                 f"\n{ca.log()}") from None
        root = yield threads.deferToThread(ca.root)
        leaf = verify_chain(chain, root, HOST)
        self.assertEqual(sorted(certfiles.dns_names(leaf)), sorted(NAMES))
        self.assertEqual(os.stat(site.key).st_mode & 0o777, 0o600)
        context = ssl.create_default_context(cadata=root.decode())
        context.check_hostname = False  # we connect to 127.0.0.1; the chain is checked
        der = leaf.public_bytes(serialization_der())
        # Until the server has reloaded it still presents the old certificate, which the
        # verifying context refuses: poll without verification, then verify once it is there.
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        for kind, port in (("imap", site.ports["imap"]), ("smtp", site.ports["submission"])):
            got = yield until(lambda k=kind, p=port: presented(unverified, k, p) == der,
                              20, f"{kind} STARTTLS to present the new certificate")
            self.assertTrue(got)
            verified = yield threads.deferToThread(presented, context, kind, port)
            self.assertEqual(verified, der)
        self.assertIn("installed in", site.maillog_text())
        self.assertIn("acme", site.maillog_text())

    @defer.inlineCallbacks
    def test_renewal_is_issued_and_picked_up(self):
        """The ACME service with the real client, the real HTTP responder and a clock it is
        given: the first check issues (pebble), the TLS reloads it; with the clock moved to
        within acme_renew_before of the expiry the next check issues a second certificate
        (another serial), which the same ServerTLS then serves."""
        ca = self.pebble()
        yield threads.deferToThread(ca.wait)
        d = os.path.abspath(self.mktemp())
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        cfg = parse_config(
            f"[mail]\nmyhostname = {HOST}\nmydomain = example.test\n"
            "mydestination = $myhostname, example.test, localhost\n"
            f"dns_resolver = 127.0.0.1:{self.dns_port}\n"
            f"[listen]\nautoconfig = {self.http_port}\n"
            f"[tls]\nssl_cert = {cert}\nssl_key = {key}\nacme = yes\n"
            f"acme_server = {ca.directory}\nacme_ca_file = {ca.tls_ca}\n", "mail.ini")
        ensure_certificate(HOST, cert, key)
        server_tls = ServerTLS(cert, key)
        port = reactor.listenTCP(self.http_port, autoconfig.build_site(cfg, reactor),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        blocking = InPool(reactor)
        offset = [0.0]

        class Clock:
            def seconds(self) -> float:
                return reactor.seconds() + offset[0]

            def callLater(self, delay, f, *args):
                return reactor.callLater(delay, f, *args)

        acme = AcmeService(cfg, Clock(), blocking, lambda: server_tls.reload(blocking),
                           resolver_reactor=reactor)
        acme.running = True  # checks are driven by the test, not the timer
        self.addCleanup(acme.stopService)

        def serving() -> x509.Certificate:
            """The certificate a new TLS connection gets (a handshake in memory)."""
            server, client = server_tls.serverConnectionForTLS(None), client_conn()
            handshake(server, client)
            return client.get_peer_certificate(as_cryptography=True)

        self.assertTrue((yield acme.check()))
        first = serving()
        self.assertNotEqual(first.issuer, first.subject)  # no longer self-signed
        self.assertFalse((yield acme.check()))  # fresh: nothing to do
        offset[0] = (first.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
                     ).total_seconds() - 86400  # one day before it expires
        self.assertTrue((yield acme.check()))
        second = serving()
        self.assertNotEqual(second.serial_number, first.serial_number)
        root = yield threads.deferToThread(ca.root)
        with open(cert, "rb") as f:
            verify_chain(f.read(), root, HOST)
        self.assertEqual(acme.issued, 2)
        self.assertEqual(os.listdir(os.path.join(d, "acme-challenge")), [])  # withdrawn


def serialization_der():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER
