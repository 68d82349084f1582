"""IMAP STARTTLS, AUTHENTICATE PLAIN/LOGIN with SASL-IR, LOGINDISABLED (OUTLOOK.md 3-4)."""

from __future__ import annotations

import base64
import ipaddress

from twisted.internet.address import IPv4Address

from mailsuite.imap.server import IMAPFactory
from tests.fakes import TLSTransport
from tests.test_imap_server import ImapTestCase, Session, make_config

PLAIN_OK = base64.b64encode(b"\0boss\0secret")
PLAIN_BAD = base64.b64encode(b"\0boss\0wrong")
PRIVACY = (b"NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS)"
           b" connections.")


class TLSSession(Session):
    def __init__(self, factory: IMAPFactory, peer: str = "127.0.0.1", host: str = "127.0.0.1"):
        self.proto = factory.buildProtocol(None)
        self.transport = TLSTransport(
            hostAddress=IPv4Address("TCP", host, 143), peerAddress=IPv4Address("TCP", peer, 40000)
        )
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()


class ImapAuthCase(ImapTestCase):
    server_tls = object()
    implicit = False

    def setUp(self) -> None:
        super().setUp()
        self.factory = IMAPFactory(make_config(), self.portal, self.maillog, clock=self.clock,
                                   server_tls=self.server_tls, implicit_tls=self.implicit)

    def session(self, peer: str = "127.0.0.1", host: str = "127.0.0.1") -> TLSSession:
        return TLSSession(self.factory, peer, host)

    def remote(self) -> TLSSession:
        return self.session(peer="192.0.2.7", host="198.51.100.1")

    def caps(self, s: Session) -> list[bytes]:
        out = s.cmd(b"c CAPABILITY")
        lines = out.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"* CAPABILITY ") and lines[1].startswith(b"c OK ")
                        and lines[2:] == [b""], out)
        return out.split(b"\r\n")[0].split()[2:]


class StartTLSTests(ImapAuthCase):
    def test_capabilities_before_and_after_starttls(self) -> None:
        """Remote, plaintext disabled: STARTTLS LOGINDISABLED and no AUTH=; after STARTTLS:
        AUTH=PLAIN AUTH=LOGIN, no STARTTLS, no LOGINDISABLED; after login: none of them."""
        s = self.remote()
        caps = self.caps(s)
        self.assertIn(b"[CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED", s.greeting)
        for present in (b"STARTTLS", b"LOGINDISABLED", b"SASL-IR"):
            self.assertIn(present, caps)
        self.assertFalse([c for c in caps if c.startswith(b"AUTH=")])
        self.assertEqual(s.cmd(b"t STARTTLS"), b"t OK Begin TLS negotiation now.\r\n")
        self.assertIs(s.transport.tls_context, self.server_tls)
        caps = self.caps(s)
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertIn(b"AUTH=LOGIN", caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        out = s.cmd(b"l LOGIN boss secret")
        self.assertIn(b"l OK [CAPABILITY IMAP4rev1", out)
        for absent in (b"AUTH=", b"STARTTLS", b"LOGINDISABLED", b"SASL-IR"):
            self.assertNotIn(absent, out)
        self.assertIn("rip=192.0.2.7, lip=198.51.100.1, TLS", self.maillog.lines[-1])

    def test_login_refused_before_tls_accepted_after(self) -> None:
        """LOGIN and AUTHENTICATE PLAIN answer PRIVACYREQUIRED in clear, work after STARTTLS."""
        s = self.remote()
        self.assertEqual(s.cmd(b"a LOGIN boss secret"), b"a " + PRIVACY + b"\r\n")
        self.assertEqual(s.cmd(b"b AUTHENTICATE PLAIN " + PLAIN_OK), b"b " + PRIVACY + b"\r\n")
        s.cmd(b"t STARTTLS")
        self.assertIn(b"c OK [CAPABILITY", s.cmd(b"c AUTHENTICATE PLAIN " + PLAIN_OK))

    def test_pipelined_input_after_starttls_dropped(self) -> None:
        """Commands sent in clear behind STARTTLS in the same packet are discarded."""
        s = self.remote()
        out = s.send(b"t STARTTLS\r\nx LOGIN boss secret\r\ny CAPABILITY\r\n")
        self.assertEqual(out, b"t OK Begin TLS negotiation now.\r\n")
        self.assertEqual(s.proto.state, "unauth")

    def test_starttls_refusals(self) -> None:
        """STARTTLS twice is BAD; without a certificate it is BAD and not advertised; after
        login it is not a command."""
        s = self.remote()
        s.cmd(b"t STARTTLS")
        self.assertEqual(s.cmd(b"u STARTTLS"), b"u BAD TLS is already active.\r\n")
        s = self.session()
        s.login()
        self.assertIn(b"v BAD", s.cmd(b"v STARTTLS"))
        self.factory.server_tls = None
        s = self.session()
        self.assertNotIn(b"STARTTLS", self.caps(s))
        self.assertEqual(s.cmd(b"w STARTTLS"), b"w BAD TLS support isn't enabled.\r\n")

    def test_implicit_tls(self) -> None:
        """imaps (993): secure from the start, AUTH= offered, no STARTTLS."""
        self.factory.implicit_tls = True
        s = self.remote()
        caps = self.caps(s)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertIn(b"a OK", s.cmd(b"a LOGIN boss secret"))

    def test_trusted_network(self) -> None:
        """login_trusted_networks: plaintext offered (AUTH=) and accepted without TLS."""
        self.factory.config = make_config(trusted=[ipaddress.ip_network("192.0.2.0/24")])
        s = self.remote()
        self.assertIn(b"AUTH=PLAIN", self.caps(s))
        self.assertIn(b"a OK", s.cmd(b"a AUTHENTICATE PLAIN " + PLAIN_OK))


class AuthenticateTests(ImapAuthCase):
    def test_sasl_ir(self) -> None:
        """AUTHENTICATE PLAIN with an initial response on the same line (SASL-IR)."""
        s = self.session()
        out = s.cmd(b"a AUTHENTICATE PLAIN " + PLAIN_OK)
        self.assertTrue(out.startswith(b"a OK [CAPABILITY IMAP4rev1"), out)
        self.assertTrue(out.endswith(b"] Logged in\r\n"))
        self.assertIn("Login: user=<boss>, method=PLAIN", self.maillog.lines[-1])

    def test_plain_continuation(self) -> None:
        """AUTHENTICATE PLAIN without initial response: '+ ' then the credentials."""
        s = self.session()
        self.assertEqual(s.cmd(b"a AUTHENTICATE PLAIN"), b"+ \r\n")
        self.assertIn(b"a OK [CAPABILITY", s.cmd(PLAIN_OK))
        self.assertEqual(s.proto.state, "auth")

    def test_login_mechanism(self) -> None:
        """AUTHENTICATE LOGIN: base64 Username: and Password: prompts; method=LOGIN logged."""
        s = self.session()
        self.assertEqual(s.cmd(b"a authenticate login"), b"+ VXNlcm5hbWU6\r\n")
        self.assertEqual(s.cmd(base64.b64encode(b"boss")), b"+ UGFzc3dvcmQ6\r\n")
        self.assertIn(b"a OK [CAPABILITY", s.cmd(base64.b64encode(b"secret")))
        self.assertIn("method=LOGIN", self.maillog.lines[-1])

    def test_login_with_initial_response(self) -> None:
        """AUTHENTICATE LOGIN <user>: only the Password: prompt."""
        s = self.session()
        self.assertEqual(s.cmd(b"a AUTHENTICATE LOGIN Ym9zcw=="), b"+ UGFzc3dvcmQ6\r\n")
        self.assertIn(b"a OK", s.cmd(b"c2VjcmV0"))

    def test_initial_response_as_literal(self) -> None:
        """The initial response may also come as a literal or a quoted string (the command
        reader assembles it like any other argument)."""
        s = self.session()
        self.assertEqual(s.cmd(b"a AUTHENTICATE PLAIN {%d}" % len(PLAIN_OK)),
                         b"+ Ready for literal data\r\n")
        self.assertIn(b"a OK [CAPABILITY", s.cmd(PLAIN_OK))
        s = self.session()
        self.assertIn(b"b OK [CAPABILITY", s.cmd(b'b AUTHENTICATE PLAIN "' + PLAIN_OK + b'"'))

    def test_failure(self) -> None:
        """Wrong password: NO [AUTHENTICATIONFAILED] Authentication failed.; logged for fail2ban
        with the mechanism; the session may try again."""
        s = self.session()
        self.assertEqual(s.cmd(b"a AUTHENTICATE PLAIN " + PLAIN_BAD),
                         b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        s.cmd(b"b AUTHENTICATE LOGIN")
        s.cmd(b"Ym9zcw==")
        self.assertEqual(s.cmd(b"d3Jvbmc="),
                         b"b NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.assertIn("auth failed, 2 attempts): user=<boss>, method=LOGIN, rip=127.0.0.1",
                      self.maillog.lines[-1])
        self.assertIn(b"c OK", s.cmd(b"c AUTHENTICATE PLAIN " + PLAIN_OK))

    def test_proxy_refused(self) -> None:
        """An authorization identity other than the user fails like a wrong password."""
        s = self.session()
        out = s.cmd(b"a AUTHENTICATE PLAIN " + base64.b64encode(b"carol\0boss\0secret"))
        self.assertEqual(out, b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def test_cancel_and_errors(self) -> None:
        """'*' cancels with BAD; bad base64 is BAD; '=' (empty) PLAIN is BAD; unknown
        mechanisms NO; the session goes on."""
        s = self.session()
        self.assertEqual(s.cmd(b"a AUTHENTICATE PLAIN"), b"+ \r\n")
        self.assertEqual(s.cmd(b"*"), b"a BAD Authentication aborted by client.\r\n")
        self.assertEqual(s.cmd(b"b AUTHENTICATE PLAIN !!"), b"b BAD Invalid base64 data.\r\n")
        self.assertEqual(s.cmd(b"c AUTHENTICATE PLAIN ="), b"c BAD Invalid PLAIN message.\r\n")
        self.assertEqual(s.cmd(b"d AUTHENTICATE CRAM-MD5"),
                         b"d NO Unsupported authentication mechanism.\r\n")
        self.assertEqual(s.cmd(b"e AUTHENTICATE"), b"e BAD Invalid arguments.\r\n")
        self.assertIn(b"f OK", s.cmd(b"f LOGIN boss secret"))

    def test_pipelined_after_authenticate(self) -> None:
        """AUTHENTICATE with SASL-IR pipelined with SELECT: answered in order."""
        self.deliver()
        s = self.session()
        out = s.send(b"a AUTHENTICATE PLAIN " + PLAIN_OK + b"\r\nb SELECT INBOX\r\n")
        self.assertIn(b"a OK", out)
        self.assertLess(out.index(b"a OK"), out.index(b"* 1 EXISTS"))
        self.assertTrue(out.endswith(b"b OK [READ-WRITE] Select completed.\r\n"), out)
