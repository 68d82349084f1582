"""The real server over TLS with real TLS clients: openssl s_client, swaks, curl, Python's ssl,
imaplib, poplib and smtplib. STARTTLS on 25/587/143/110, implicit TLS on 465/993/995, the
first-start self-signed certificate, TLS 1.1 refused, SNI with a trailing dot, HUP reload with an
open connection surviving it, and ssl = required on submission."""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time
from typing import ClassVar

from cryptography import x509
from twisted.trial import unittest

from mailsuite import tls
from tests.integration.harness import Site

TIMEOUT = 20


def run(args: list[str], data: bytes = b"") -> tuple[int, str]:
    """Run a client program; (exit code, stdout + stderr as text)."""
    proc = subprocess.run(args, input=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=TIMEOUT, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def s_client(port: int, *options: str, data: bytes = b"") -> str:
    """openssl s_client to 127.0.0.1:port, sending ``data`` (LF -> CRLF) after the handshake."""
    _, out = run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-crlf", "-ign_eof",
                  "-nocommands", *options], data)
    return out


def message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\nhello\r\n").encode()


class TLSSiteCase(unittest.TestCase):
    site_options: ClassVar[dict[str, str]] = {}

    def setUp(self) -> None:
        self.site = Site(self, tls=True, **self.site_options)
        self.site.start()

    def context(self) -> ssl.SSLContext:
        """Trusts exactly the site's self-signed certificate (host name not checked: the
        clients connect to 127.0.0.1)."""
        ctx = ssl.create_default_context(cafile=self.site.cert)
        ctx.check_hostname = False
        return ctx

    def port(self, name: str) -> int:
        return self.site.ports[name]

    def inbox(self, user: str) -> bytes:
        try:
            with open(self.site.inbox(user), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def wait_for(self, user: str, text: bytes) -> None:
        deadline = time.monotonic() + TIMEOUT
        while text not in self.inbox(user):
            if time.monotonic() > deadline:
                self.fail(f"{text!r} never reached {user}")
            time.sleep(0.05)


class CertificateTests(TLSSiteCase):
    def test_self_signed_made_at_first_start(self) -> None:
        """No certificate files: the first start makes one for myhostname, both files mode
        0600 in a directory it created, and logs where; a restart keeps them."""
        for path in (self.site.cert, self.site.key):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertIn(f"made a self-signed TLS certificate for mail.example.test: {self.site.cert}",
                      self.site.log())
        with open(self.site.cert, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem)
        self.assertEqual(cert.subject.rfc4514_string(), "CN=mail.example.test")
        self.site.restart()
        with open(self.site.cert, "rb") as f:
            self.assertEqual(f.read(), pem)

    def test_hostname_verifies(self) -> None:
        """A client that trusts the certificate and checks the name mail.example.test succeeds;
        the session is TLS 1.3."""
        ctx = ssl.create_default_context(cafile=self.site.cert)
        raw = socket.create_connection(("127.0.0.1", self.port("imaps")), timeout=TIMEOUT)
        with ctx.wrap_socket(raw, server_hostname="mail.example.test") as s:
            self.assertEqual(s.version(), "TLSv1.3")
            self.assertTrue(s.recv(100).startswith(b"* OK [CAPABILITY IMAP4rev1"))

    def test_sni_trailing_dot(self) -> None:
        """SNI "mail.example.test." (trailing dot, as some clients send it) is accepted by the
        server, from openssl s_client and from Python's ssl."""
        out = s_client(self.port("imaps"), "-servername", "mail.example.test.", "-brief",
                       data=b"a LOGOUT\n")
        self.assertIn("a OK Logout completed.", out)
        raw = socket.create_connection(("127.0.0.1", self.port("pop3s")), timeout=TIMEOUT)
        with self.context().wrap_socket(raw, server_hostname="mail.example.test.") as s:
            self.assertEqual(s.recv(100), b"+OK mailsuite ready.\r\n")

    def test_tls_versions(self) -> None:
        """TLS 1.2 and 1.3 are accepted; TLS 1.1 and 1.0 are refused with a protocol_version
        alert (the client offering them at security level 0, so the refusal is the server's)."""
        for option, version in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
            out = s_client(self.port("smtps"), option, "-brief", data=b"QUIT\n")
            self.assertIn(f"Protocol version: {version}", out)
            self.assertIn("221 2.0.0 Bye", out)
        for option in ("-tls1_1", "-tls1"):
            out = s_client(self.port("imaps"), option, "-cipher", "DEFAULT:@SECLEVEL=0",
                           data=b"a LOGOUT\n")
            self.assertIn("alert protocol version", out)
            self.assertNotIn("* OK", out)

    def test_hup_reloads_certificate_open_connection_survives(self) -> None:
        """kill -HUP with a new certificate in place: new connections get it, a connection
        opened before keeps working (no connection is dropped)."""
        before = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=self.context(),
                                   timeout=TIMEOUT)
        before.login("boss", "secret")
        # (for myhostname: a self-signed one for another name would be remade at the reload,
        # as at start)
        cert_pem, key_pem = tls.self_signed("mail.example.test")
        for path, data in ((self.site.key, key_pem), (self.site.cert, cert_pem)):
            with open(path, "wb") as f:
                f.write(data)
        assert self.site.process is not None
        self.site.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while "TLS certificate reloaded" not in self.site.log():
            self.assertLess(time.monotonic(), deadline, self.site.log())
            time.sleep(0.05)
        pem = ssl.get_server_certificate(("127.0.0.1", self.port("imaps")))
        self.assertEqual(pem.encode().strip(), cert_pem.strip())
        self.assertEqual(before.noop()[0], "OK")
        self.assertEqual(before.select("INBOX")[0], "OK")
        before.logout()


class OpenSSLClientTests(TLSSiteCase):
    def test_starttls_every_protocol(self) -> None:
        """openssl s_client -starttls smtp (25 and 587), imap (143), pop3 (110): TLS 1.3, and the
        post-TLS capability lists offer the logins (and no STARTTLS any more)."""
        out = s_client(self.port("smtp"), "-starttls", "smtp", "-brief", data=b"EHLO x\nQUIT\n")
        self.assertIn("Protocol version: TLSv1.3", out)
        self.assertIn("250-AUTH PLAIN LOGIN", out)
        self.assertNotIn("STARTTLS", out.split("Protocol version")[1])
        out = s_client(self.port("submission"), "-starttls", "smtp", "-brief",
                       data=b"EHLO x\nAUTH PLAIN AGJvc3MAc2VjcmV0\nQUIT\n")
        self.assertIn("235 2.7.0 Authentication successful", out)
        out = s_client(self.port("imap"), "-starttls", "imap", "-brief",
                       data=b"a CAPABILITY\nb AUTHENTICATE PLAIN AGJvc3MAc2VjcmV0\nc LOGOUT\n")
        self.assertIn("AUTH=PLAIN AUTH=LOGIN", out)
        self.assertNotIn("STARTTLS", out.split("Protocol version")[1])
        self.assertIn("b OK [CAPABILITY IMAP4rev1", out)
        out = s_client(self.port("pop3"), "-starttls", "pop3", "-brief",
                       data=b"CAPA\nAUTH PLAIN AGJvc3MAc2VjcmV0\nQUIT\n")
        self.assertIn("SASL PLAIN LOGIN", out)
        self.assertIn("+OK Logged in.", out)

    def test_implicit_tls_every_protocol(self) -> None:
        """s_client straight to 465, 993 and 995: the greeting comes over TLS."""
        self.assertIn("220 mail.example.test ESMTP mailsuite",
                      s_client(self.port("smtps"), "-brief", data=b"QUIT\n"))
        self.assertIn("* OK [CAPABILITY IMAP4rev1",
                      s_client(self.port("imaps"), "-brief", data=b"a LOGOUT\n"))
        self.assertIn("+OK mailsuite ready.",
                      s_client(self.port("pop3s"), "-brief", data=b"QUIT\n"))


class SwaksTests(TLSSiteCase):
    def swaks(self, *args: str) -> tuple[int, str]:
        return run(["swaks", "--server", *args, "--from", "boss@example.test",
                    "--to", "carol@example.test", "--timeout", str(TIMEOUT)])

    def test_submission_starttls_auth(self) -> None:
        """swaks --tls on 587 with AUTH PLAIN and AUTH LOGIN: delivered to carol."""
        for mech in ("PLAIN", "LOGIN"):
            code, out = self.swaks(f"127.0.0.1:{self.port('submission')}", "--tls", "--auth", mech,
                                   "--auth-user", "boss", "--auth-password", "secret",
                                   "--header", f"Subject: swaks {mech}")
            self.assertEqual(code, 0, out)
            self.assertIn("235 2.7.0 Authentication successful", out)
            self.wait_for("carol", f"Subject: swaks {mech}".encode())

    def test_smtps_implicit_auth_and_failure(self) -> None:
        """swaks --tlsc on 465: a wrong password is 535 5.7.8, the right one delivers."""
        code, out = self.swaks(f"127.0.0.1:{self.port('smtps')}", "--tlsc", "--auth", "LOGIN",
                               "--auth-user", "boss", "--auth-password", "wrong")
        self.assertNotEqual(code, 0)
        self.assertIn("535 5.7.8 Error: authentication failed", out)
        self.assertIn("SASL LOGIN authentication failed", self.site.maillog_text())
        code, out = self.swaks(f"127.0.0.1:{self.port('smtps')}", "--tlsc", "--auth", "PLAIN",
                               "--auth-user", "boss", "--auth-password", "secret",
                               "--header", "Subject: swaks smtps")
        self.assertEqual(code, 0, out)
        self.wait_for("carol", b"Subject: swaks smtps")

    def test_port25_starttls_without_auth(self) -> None:
        """swaks --tls on 25 without AUTH: MX traffic for a local domain is delivered."""
        code, out = self.swaks(f"127.0.0.1:{self.port('smtp')}", "--tls",
                               "--header", "Subject: swaks mx")
        self.assertEqual(code, 0, out)
        self.wait_for("carol", b"Subject: swaks mx")
        self.assertIn(b"with ESMTPS id", self.inbox("carol"))


class CurlTests(TLSSiteCase):
    def curl(self, url: str, *args: str) -> tuple[int, str]:
        return run(["curl", "-sS", "-k", "--max-time", str(TIMEOUT), "-u", "boss:secret",
                    *args, url])

    def test_smtp_then_pop3_and_imap(self) -> None:
        """curl --ssl-reqd smtp:// (587, STARTTLS) and smtps:// (465) send; pop3:// (STLS),
        pop3s://, imap:// (STARTTLS) and imaps:// read boss's mailbox."""
        path = os.path.join(self.site.dir, "curl.eml")
        for url, subject in ((f"smtp://127.0.0.1:{self.port('submission')}", "curl 587"),
                             (f"smtps://127.0.0.1:{self.port('smtps')}", "curl 465")):
            with open(path, "wb") as f:
                f.write(message("boss@example.test", "boss@example.test", subject))
            extra = ["--ssl-reqd"] if url.startswith("smtp:") else []
            code, out = self.curl(url, *extra, "--mail-from", "boss@example.test",
                                  "--mail-rcpt", "boss@example.test", "-T", path)
            self.assertEqual(code, 0, out)
        self.wait_for("boss", b"Subject: curl 465")
        for url in (f"pop3://127.0.0.1:{self.port('pop3')}/",
                    f"pop3s://127.0.0.1:{self.port('pop3s')}/"):
            code, out = self.curl(url, *(["--ssl-reqd"] if url.startswith("pop3:") else []))
            self.assertEqual(code, 0, out)
            self.assertEqual(len(out.split()), 4, out)  # "1 size", "2 size"
        code, out = self.curl(f"pop3s://127.0.0.1:{self.port('pop3s')}/2")
        self.assertIn("Subject: curl 465", out)
        for url in (f"imap://127.0.0.1:{self.port('imap')}/",
                    f"imaps://127.0.0.1:{self.port('imaps')}/"):
            code, out = self.curl(url, *(["--ssl-reqd"] if url.startswith("imap:") else []))
            self.assertEqual(code, 0, out)
            self.assertIn('"/" INBOX', out)
        code, out = self.curl(f"imaps://127.0.0.1:{self.port('imaps')}/INBOX;UID=1")
        self.assertEqual(code, 0, out)
        self.assertIn("Subject: curl 587", out)


class PythonClientTests(TLSSiteCase):
    def test_imaplib(self) -> None:
        """IMAP4_SSL on 993 and IMAP4.starttls() on 143, then LOGIN."""
        m = imaplib.IMAP4_SSL("127.0.0.1", self.port("imaps"), ssl_context=self.context(),
                              timeout=TIMEOUT)
        self.assertEqual(m.login("boss", "secret")[0], "OK")
        m.logout()
        m = imaplib.IMAP4("127.0.0.1", self.port("imap"), timeout=TIMEOUT)
        self.assertIn("STARTTLS", m.capabilities)
        m.starttls(ssl_context=self.context())
        self.assertNotIn("STARTTLS", m.capabilities)
        self.assertIn("AUTH=PLAIN", m.capabilities)
        self.assertEqual(m.authenticate("PLAIN", lambda _: b"\0boss\0secret")[0], "OK")
        m.logout()

    def test_poplib(self) -> None:
        """POP3_SSL on 995 and POP3.stls() on 110."""
        p = poplib.POP3_SSL("127.0.0.1", self.port("pop3s"), context=self.context(),
                            timeout=TIMEOUT)
        p.user("boss")
        self.assertTrue(p.pass_("secret").startswith(b"+OK"))
        p.quit()
        p = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=TIMEOUT)
        self.assertIn("STLS", p.capa())
        p.stls(context=self.context())
        self.assertNotIn("STLS", p.capa())
        p.user("boss")
        p.pass_("secret")
        self.assertEqual(p.stat(), (0, 0))
        p.quit()

    def test_smtplib(self) -> None:
        """SMTP_SSL on 465 and SMTP.starttls() on 587, login, send."""
        with smtplib.SMTP_SSL("127.0.0.1", self.port("smtps"), context=self.context(),
                              timeout=TIMEOUT) as s:
            s.login("boss", "secret")
            s.sendmail("boss@example.test", ["carol@example.test"],
                       message("boss@example.test", "carol@example.test", "smtplib 465"))
        with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=TIMEOUT) as s:
            s.starttls(context=self.context())
            s.ehlo()
            self.assertEqual(s.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
            s.login("boss", "secret")
            s.sendmail("boss@example.test", ["carol@example.test"],
                       message("boss@example.test", "carol@example.test", "smtplib 587"))
        self.wait_for("carol", b"Subject: smtplib 587")
        self.wait_for("carol", b"Subject: smtplib 465")


class RequiredTests(TLSSiteCase):
    site_options: ClassVar[dict[str, str]] = {"ssl": "required"}

    def test_submission_requires_starttls(self) -> None:
        """ssl = required: 587 refuses MAIL and AUTH before STARTTLS (even from loopback) and
        does not offer AUTH; after STARTTLS it works. Port 25 still takes mail in clear."""
        with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=TIMEOUT) as s:
            s.ehlo()
            self.assertNotIn("auth", s.esmtp_features)
            self.assertEqual(s.mail("boss@example.test"),
                             (530, b"5.7.0 Must issue a STARTTLS command first"))
            s.starttls(context=self.context())
            s.ehlo()
            s.login("boss", "secret")
            s.sendmail("boss@example.test", ["carol@example.test"],
                       message("boss@example.test", "carol@example.test", "required 587"))
        with smtplib.SMTP("127.0.0.1", self.port("smtp"), timeout=TIMEOUT) as s:
            s.sendmail("x@remote.test", ["carol@example.test"],
                       message("x@remote.test", "carol@example.test", "clear 25"))
        self.wait_for("carol", b"Subject: clear 25")
        self.wait_for("carol", b"Subject: required 587")
