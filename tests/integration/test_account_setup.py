"""The real server (twistd) with real clients for issue 4 items 5 and 6: failed logins over
IMAP, POP3 and SMTP AUTH leave lines that fail2ban's own stock filters (fail2ban-regex with
/etc/fail2ban/filter.d/dovecot.conf and postfix.conf[mode=auth]) count, and curl fetches the
Thunderbird autoconfig and Outlook autodiscover answers over HTTP and HTTPS."""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import ssl
import subprocess
from xml.etree import ElementTree

from twisted.trial import unittest

from mailsuite import autoconfig
from tests.integration.harness import START_TIMEOUT, Site, free_port, wait_ports

TIMEOUT = 20
FILTERS = "/etc/fail2ban/filter.d"


def run(args: list[str], data: bytes = b"") -> tuple[int, str]:
    proc = subprocess.run(args, input=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


class AutoconfigSite(Site):
    """A TLS site that also serves autoconfig (HTTP) and autoconfigs (HTTPS)."""

    def __init__(self, testcase) -> None:
        self.web_ports = {"autoconfig": free_port(), "autoconfigs": free_port()}
        super().__init__(testcase, tls=True)

    def ini(self) -> str:
        extra = "".join(f"{name} = {port}\n" for name, port in self.web_ports.items())
        return super().ini().replace("[listen]\n", "[listen]\n" + extra, 1)

    def start(self) -> None:
        super().start()
        wait_ports(self.web_ports.values(), START_TIMEOUT, "autoconfig", self.log)


class Fail2banTests(unittest.TestCase):
    if not shutil.which("fail2ban-regex") or not os.path.exists(f"{FILTERS}/dovecot.conf"):
        skip = "fail2ban is not installed (scripts/setup-debian.sh test installs it)"

    def setUp(self) -> None:
        self.site = Site(self, tls=True)
        self.site.start()
        self.context = ssl.create_default_context(cafile=self.site.cert)
        self.context.check_hostname = False

    def test_failed_logins_of_every_protocol_are_counted_by_stock_filters(self) -> None:
        """Two failed IMAP logins, one failed POP3 login and one failed SMTP AUTH (465) give
        seven hits for the stock dovecot filter (the auth line of each password, as Dovecot's
        auth_verbose = yes writes it, and the login process's ``Aborted login``/``Disconnected
        (auth failed, ...)`` line of each IMAP and POP3 connection) and one for
        postfix[mode=auth], all for the client's address; the successful login gives none.
        The clients see AUTHENTICATIONFAILED, -ERR [AUTH] and 535 5.7.8."""
        for _ in range(2):
            with imaplib.IMAP4_SSL("127.0.0.1", self.site.ports["imaps"],
                                   ssl_context=self.context, timeout=TIMEOUT) as imap, \
                    self.assertRaisesRegex(imaplib.IMAP4.error, "AUTHENTICATIONFAILED"):
                imap.login("boss", "wrong")
        pop = poplib.POP3_SSL("127.0.0.1", self.site.ports["pop3s"], context=self.context,
                              timeout=TIMEOUT)
        pop.user("carol")
        with self.assertRaisesRegex(poplib.error_proto, r"\[AUTH\]"):
            pop.pass_("wrong")
        pop.quit()
        with smtplib.SMTP_SSL("127.0.0.1", self.site.ports["smtps"], context=self.context,
                              timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            client.user, client.password = "boss", "wrong"
            with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                client.auth("PLAIN", client.auth_plain)  # login() would retry with LOGIN
            self.assertEqual(caught.exception.smtp_code, 535)
        with imaplib.IMAP4_SSL("127.0.0.1", self.site.ports["imaps"], ssl_context=self.context,
                               timeout=TIMEOUT) as imap:
            imap.login("boss", "secret")  # loopback is exempt: no delay, no block

        dovecot = self.fail2ban(f"{FILTERS}/dovecot.conf")
        postfix = self.fail2ban(f"{FILTERS}/postfix.conf[mode=auth]")
        self.assertEqual(dovecot, ["127.0.0.1"] * 7, self.site.maillog_text())
        self.assertEqual(postfix, ["127.0.0.1"], self.site.maillog_text())

    def fail2ban(self, filter_spec: str) -> list[str]:
        """The address of every line fail2ban-regex matched, as fail2ban itself reads them."""
        code, out = run(["fail2ban-regex", "--out", "ip", self.site.maillog, filter_spec])
        self.assertEqual(code, 0, out)
        return out.split()


class CurlTests(unittest.TestCase):
    if not shutil.which("curl"):
        skip = "curl is not installed"

    def setUp(self) -> None:
        self.site = AutoconfigSite(self)
        self.site.start()

    def curl(self, url: str, *options: str) -> bytes:
        proc = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--max-time", "20",
                               *options, url], capture_output=True, timeout=60, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode() + self.site.log())
        return proc.stdout

    def test_thunderbird_over_http(self) -> None:
        """curl GETs the Thunderbird file: the site's real ports, SSL first, then STARTTLS."""
        port = self.site.web_ports["autoconfig"]
        body = self.curl(f"http://127.0.0.1:{port}/.well-known/autoconfig/mail/config-v1.1.xml"
                         "?emailaddress=boss%40example.test")
        root = ElementTree.fromstring(body)
        servers = [(s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
                   for s in root.iter() if s.tag in ("incomingServer", "outgoingServer")]
        ports = self.site.ports
        self.assertEqual(servers, [
            ("imap", ports["imaps"], "SSL"), ("imap", ports["imap"], "STARTTLS"),
            ("pop3", ports["pop3s"], "SSL"), ("pop3", ports["pop3"], "STARTTLS"),
            ("smtp", ports["smtps"], "SSL"), ("smtp", ports["submission"], "STARTTLS")])

    def test_outlook_over_https(self) -> None:
        """curl --ssl-reqd POSTs Outlook's request to autodiscover.xml on the HTTPS port (the
        mail certificate): IMAP on the imaps port with SSL, login name boss."""
        port = self.site.web_ports["autoconfigs"]
        request = (b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="'
                   + autoconfig.REQUEST_NS.encode() + b'"><Request><EMailAddress>boss@example.test'
                   b"</EMailAddress><AcceptableResponseSchema>" + autoconfig.OUTLOOK_NS.encode()
                   + b"</AcceptableResponseSchema></Request></Autodiscover>")
        body = self.curl(f"https://mail.example.test:{port}/Autodiscover/Autodiscover.xml",
                         "--ssl-reqd", "--cacert", self.site.cert, "--resolve",
                         f"mail.example.test:{port}:127.0.0.1", "-H", "Content-Type: text/xml",
                         "--data-binary", request)
        ns = "{" + autoconfig.OUTLOOK_NS + "}"
        imap = next(p for p in ElementTree.fromstring(body).iter(ns + "Protocol")
                    if p.findtext(ns + "Type") == "IMAP")
        self.assertEqual((imap.findtext(ns + "Port"), imap.findtext(ns + "SSL"),
                          imap.findtext(ns + "LoginName")),
                         (str(self.site.ports["imaps"]), "on", "boss"))
