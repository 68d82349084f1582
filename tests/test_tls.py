"""mailsuite.tls: the server context (versions, ciphers, SNI), the first-start self-signed
certificate, reload without dropping connections. Handshakes run in memory (no sockets)."""

from __future__ import annotations

import os
import stat

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite import threads, tls
from tests.configs import real_config


def make_pair(case: unittest.TestCase, host: str = "mail.example.test") -> tuple[str, str]:
    d = os.path.abspath(case.mktemp())
    cert, key = os.path.join(d, "tls", "cert.pem"), os.path.join(d, "tls", "key.pem")
    tls.ensure_certificate(host, cert, key)
    return cert, key


def handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """Run a TLS handshake between two memory-BIO connections; raise SSL.Error on failure."""
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(20):
        done = 0
        for me, other in ((client, server), (server, client)):
            try:
                me.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
            try:
                data = me.bio_read(65536)
            except SSL.WantReadError:
                data = b""
            if data:
                other.bio_write(data)
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def client_conn(sni: bytes | None = None, version: int | None = None) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if version is not None:
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    conn = SSL.Connection(ctx, None)
    if sni is not None:
        conn.set_tlsext_host_name(sni)
    return conn


class CertificateTests(unittest.TestCase):
    def test_self_signed_made_once(self) -> None:
        """Neither file present: a certificate for myhostname is made, both files 0600, their
        directory created; a second call (same myhostname) leaves them alone."""
        cert, key = make_pair(self)
        for path in (cert, key):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        with open(cert, "rb") as f:
            pem = f.read()
        parsed = x509.load_pem_x509_certificate(pem)
        self.assertEqual(parsed.subject.rfc4514_string(), "CN=mail.example.test")
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["mail.example.test"])
        self.assertFalse(tls.ensure_certificate("mail.example.test", cert, key))
        with open(cert, "rb") as f:
            self.assertEqual(f.read(), pem)
        self.assertFalse([n for n in os.listdir(os.path.dirname(cert)) if n.endswith(".tmp")])

    def test_self_signed_remade_for_new_hostname(self) -> None:
        """myhostname changed since the self-signed certificate was made: the old pair moves
        to .old and a certificate for the new name is made; a certificate from a CA (issuer
        not the subject) for another name is left alone."""
        cert, key = make_pair(self)
        with open(cert, "rb") as f:
            old = f.read()
        self.assertTrue(tls.ensure_certificate("mx.example.test", cert, key))
        with open(cert + ".old", "rb") as f:
            self.assertEqual(f.read(), old)
        self.assertTrue(os.path.exists(key + ".old"))
        with open(cert, "rb") as f:
            parsed = x509.load_pem_x509_certificate(f.read())
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["mx.example.test"])
        tls.build_context(cert, key)  # the new pair matches
        from tests.acmefakes import ca_signed
        with open(cert, "wb") as f:
            f.write(ca_signed(["mail.example.test"])[0])
        self.assertFalse(tls.ensure_certificate("mx.example.test", cert, key))

    def test_one_file_missing_is_an_error(self) -> None:
        """Only a key (or only a certificate): refused, naming both, nothing overwritten."""
        cert, key = make_pair(self)
        os.unlink(cert)
        with self.assertRaises(tls.TLSSetupError) as caught:
            tls.ensure_certificate("mail.example.test", cert, key)
        self.assertIn(cert, str(caught.exception))
        self.assertIn(key, str(caught.exception))
        self.assertFalse(os.path.exists(cert))

    def test_broken_files_named(self) -> None:
        """A missing, garbage or mismatched file is a TLSSetupError naming the file."""
        cert, key = make_pair(self)
        _, other_key = make_pair(self)
        with self.assertRaises(tls.TLSSetupError) as caught:
            tls.build_context(cert, other_key)
        self.assertIn("does not match", str(caught.exception))
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not pem\n")
        for c, k, named in [(garbage, key, garbage), (cert, garbage, garbage),
                            ("/nonexistent/c.pem", key, "/nonexistent/c.pem")]:
            with self.assertRaises(tls.TLSSetupError) as caught:
                tls.build_context(c, k)
            self.assertIn(named, str(caught.exception))

    def test_server_tls_of_config(self) -> None:
        """ssl = no: no TLS at all; yes: the certificate is made for myhostname and loaded."""

        files = {"ssl_cert": os.path.abspath(self.mktemp()),
                 "ssl_key": os.path.abspath(self.mktemp())}
        off = real_config("mx.example.test", tls={"ssl": "no", **files})
        self.assertIsNone(tls.server_tls(off))
        self.assertFalse(os.path.exists(files["ssl_cert"]))
        server = tls.server_tls(real_config("mx.example.test", tls={"ssl": "yes", **files}))
        self.assertIsInstance(server, tls.ServerTLS)
        self.assertTrue(os.path.exists(files["ssl_cert"]))


class HandshakeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.cert, self.key = make_pair(self)
        self.server = tls.ServerTLS(self.cert, self.key)

    def test_tls13_and_tls12(self) -> None:
        """TLS 1.3 and 1.2 handshakes succeed; 1.2 gets an ECDHE AEAD suite."""
        for version in (SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION):
            server = self.server.serverConnectionForTLS(None)
            client = client_conn(version=version)
            handshake(server, client)
            self.assertEqual(server.get_protocol_version(), version)
        cipher = server.get_cipher_name()
        self.assertTrue(cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA" in cipher),
                        cipher)

    def test_old_versions_refused(self) -> None:
        """TLS 1.1 and 1.0 clients fail the handshake."""
        for version in (SSL.TLS1_1_VERSION, SSL.TLS1_VERSION):
            with self.assertRaises(SSL.Error):
                handshake(self.server.serverConnectionForTLS(None), client_conn(version=version))

    def test_sni_trailing_dot(self) -> None:
        """An SNI name with a trailing dot is accepted; the connection remembers the name."""
        for name in (b"mail.example.test.", b"MAIL.example.test", b"unknown.invalid."):
            server = self.server.serverConnectionForTLS(None)
            handshake(server, client_conn(sni=name))
            self.assertEqual(server.get_app_data(), name.decode().rstrip(".").lower())

    def test_reload_keeps_open_connections(self) -> None:
        """reload(): new connections get the new certificate; one made before keeps working."""
        before = self.server.serverConnectionForTLS(None)
        old_client = client_conn()
        handshake(before, old_client)
        os.unlink(self.cert)
        os.unlink(self.key)
        tls.ensure_certificate("renewed.example.test", self.cert, self.key)

        def check(ok: bool) -> None:
            self.assertTrue(ok)
            after = self.server.serverConnectionForTLS(None)
            client = client_conn()
            handshake(after, client)
            cn = client.get_peer_certificate().get_subject().CN
            self.assertEqual(cn, "renewed.example.test")
            old_client.send(b"still here")
            before.bio_write(old_client.bio_read(65536))
            self.assertEqual(before.recv(100), b"still here")

        return self.server.reload(threads.InPool(reactor)).addCallback(check)

    def test_broken_reload_keeps_old_certificate(self) -> None:
        """A reload with a broken file logs, fires False and keeps serving the old certificate."""
        context = self.server.context
        with open(self.key, "w") as f:
            f.write("garbage\n")

        def check(ok: bool) -> None:
            self.assertFalse(ok)
            self.assertIs(self.server.context, context)
            self.assertEqual(len(self.flushLoggedErrors()), 0)

        return self.server.reload(threads.InPool(reactor)).addCallback(check)

    def test_implicit_wraps_factory(self) -> None:
        """implicit(factory): a TLS wrapper whose connections count as TLS (is_tls)."""
        wrapped = self.server.implicit(Factory.forProtocol(Protocol))
        proto = wrapped.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.assertTrue(tls.is_tls(proto.wrappedProtocol.transport))
        self.assertFalse(tls.is_tls(StringTransport()))
