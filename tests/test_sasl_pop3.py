"""POP3 STLS, AUTH PLAIN/LOGIN and the plaintext policy (Dovecot's replies, OUTLOOK.md 19)."""

from __future__ import annotations

import base64

from twisted.internet.address import IPv4Address

from mailsuite.pop3 import server as pop3
from tests.fakes import TLSTransport
from tests.test_pop3 import LOOPBACK, PUBLIC, REMOTE, SERVER, Pop3TestCase

PLAIN_OK = base64.b64encode(b"\0boss\0secret")
PLAIN_BAD = base64.b64encode(b"\0boss\0wrong")
REFUSED = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS)"
           b" connections.\r\n")


class Pop3AuthCase(Pop3TestCase):
    server_tls = object()  # any object: the transport only records it
    implicit = False

    def connect(self, peer=LOOPBACK, host=SERVER):
        factory = pop3.POP3Factory(self.config, self.portal, self.maillog, clock=self.clock,
                                   server_tls=self.server_tls, implicit_tls=self.implicit)
        proto = factory.buildProtocol(peer)
        transport = TLSTransport(hostAddress=host, peerAddress=peer)
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def caps(self, session):
        out = self.send(session, b"CAPA")
        self.assertTrue(out.startswith(b"+OK\r\n") and out.endswith(b"\r\n.\r\n"), out)
        return out.split(b"\r\n")[1:-2]


class StlsTests(Pop3AuthCase):
    def test_capa_before_and_after_stls(self):
        """Remote client, plaintext disabled: CAPA offers STLS but neither USER nor SASL; after
        STLS, USER and SASL PLAIN LOGIN but no STLS (OUTLOOK.md 19)."""
        session = self.connect(REMOTE, PUBLIC)
        caps = self.caps(session)
        self.assertIn(b"STLS", caps)
        self.assertNotIn(b"USER", caps)
        self.assertFalse([c for c in caps if c.startswith(b"SASL")])
        self.assertEqual(self.send(session, b"STLS"), b"+OK Begin TLS negotiation now.\r\n")
        self.assertIs(session[1].tls_context, self.server_tls)
        caps = self.caps(session)
        self.assertNotIn(b"STLS", caps)
        self.assertIn(b"USER", caps)
        self.assertIn(b"SASL PLAIN LOGIN", caps)
        self.assertEqual(self.send(session, b"STLS"), b"-ERR [IN-USE] TLS is already active.\r\n")

    def test_plaintext_refused_then_accepted_after_stls(self):
        """USER and AUTH PLAIN are refused in clear from a remote client, accepted after STLS."""
        session = self.connect(REMOTE, PUBLIC)
        self.assertEqual(self.send(session, b"USER boss"), REFUSED)
        self.assertEqual(self.send(session, b"AUTH PLAIN " + PLAIN_OK), REFUSED)
        self.assertEqual(self.send(session, b"AUTH"), b"+OK\r\n.\r\n")
        self.send(session, b"STLS")
        self.assertEqual(self.send(session, b"AUTH"), b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")
        self.assertEqual(self.send(session, b"AUTH PLAIN " + PLAIN_OK), b"+OK Logged in.\r\n")
        self.assertIn("method=PLAIN, rip=203.0.113.9, lip=198.51.100.1, TLS",
                      self.maillog.lines[-1])

    def test_input_after_stls_is_discarded(self):
        """Commands pipelined behind STLS in the same read were sent in clear: dropped (no
        command injection), and USER state from before TLS is forgotten."""
        proto, transport = session = self.connect(REMOTE, PUBLIC)
        proto.dataReceived(b"STLS\r\nUSER boss\r\nPASS secret\r\nCAPA\r\nQU")
        self.assertEqual(transport.value(), b"+OK Begin TLS negotiation now.\r\n")
        transport.clear()
        self.assertEqual(self.send(session, b"PASS secret"), b"-ERR No username given.\r\n")

    def test_stls_without_certificate_or_after_login(self):
        """ssl = no: no STLS in CAPA, STLS refused; after login STLS is an unknown command."""
        self.server_tls = None
        session = self.connect()
        self.assertNotIn(b"STLS", self.caps(session))
        self.assertEqual(self.send(session, b"STLS"), b"-ERR TLS support isn't enabled.\r\n")
        self.server_tls = object()
        session = self.connect()
        self.send(session, b"USER boss", b"PASS secret")
        self.assertNotIn(b"STLS", self.caps(session))
        self.assertEqual(self.send(session, b"STLS"), b"-ERR Unknown command.\r\n")

    def test_implicit_tls(self):
        """On pop3s (implicit TLS) the session is secure from the start: no STLS, USER offered."""
        self.implicit = True
        session = self.connect(REMOTE, PUBLIC)
        caps = self.caps(session)
        self.assertNotIn(b"STLS", caps)
        self.assertIn(b"USER", caps)
        self.assertEqual(self.send(session, b"USER boss", b"PASS secret"),
                         b"+OK\r\n+OK Logged in.\r\n")

    def test_ssl_required(self):
        """ssl = required with disable_plaintext_auth = no: still no plaintext login before TLS
        from a remote client (Dovecot's meaning); loopback stays allowed."""
        from tests.test_pop3 import make_config

        self.config = make_config(disable_plaintext_auth=False, ssl="required")
        self.assertEqual(self.send(self.connect(REMOTE, PUBLIC), b"USER boss"), REFUSED)
        self.login()


class AuthTests(Pop3AuthCase):
    def test_plain_initial_response(self):
        """AUTH PLAIN <b64> logs in at once."""
        self.assertEqual(self.send(self.connect(), b"AUTH PLAIN " + PLAIN_OK),
                         b"+OK Logged in.\r\n")
        self.assertIn("Login: user=<boss>, method=PLAIN", self.maillog.lines[-1])

    def test_plain_continuation(self):
        """AUTH PLAIN, '+ ' with an empty challenge, then the credentials."""
        session = self.connect()
        self.assertEqual(self.send(session, b"AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(self.send(session, PLAIN_OK), b"+OK Logged in.\r\n")

    def test_login_mechanism(self):
        """AUTH LOGIN: Username: and Password: prompts (base64), method=LOGIN in the log; with
        an initial response only the Password: prompt."""
        session = self.connect()
        self.assertEqual(self.send(session, b"AUTH LOGIN"), b"+ VXNlcm5hbWU6\r\n")
        self.assertEqual(self.send(session, base64.b64encode(b"boss")), b"+ UGFzc3dvcmQ6\r\n")
        self.assertEqual(self.send(session, base64.b64encode(b"secret")), b"+OK Logged in.\r\n")
        self.assertIn("method=LOGIN", self.maillog.lines[-1])
        session = self.connect()
        self.assertEqual(self.send(session, b"AUTH LOGIN Ym9zcw=="), b"+ UGFzc3dvcmQ6\r\n")
        self.assertEqual(self.send(session, b"c2VjcmV0"), b"+OK Logged in.\r\n")

    def test_pipelined_auth(self):
        """AUTH and its answer in one packet (PIPELINING) work."""
        out = self.send(self.connect(), b"AUTH PLAIN", PLAIN_OK, b"STAT")
        self.assertEqual(out, b"+ \r\n+OK Logged in.\r\n+OK 0 0\r\n")

    def test_wrong_password(self):
        """A wrong password: -ERR [AUTH] Authentication failed.; the disconnect line counts it
        with the mechanism used."""
        proto, _transport = session = self.connect()
        self.assertEqual(self.send(session, b"AUTH LOGIN Ym9zcw==", b"d3Jvbmc="),
                         b"+ UGFzc3dvcmQ6\r\n-ERR [AUTH] Authentication failed.\r\n")
        self.clock.advance(2)
        proto.connectionLost(None)
        self.assertIn("(auth failed, 1 attempts in 2 secs): user=<boss>, method=LOGIN, "
                      "rip=127.0.0.1", self.maillog.lines[-1])

    def test_proxy_authzid_refused(self):
        """PLAIN with another user's authorization identity is a failed login."""
        session = self.connect()
        as_root = base64.b64encode(b"root\0boss\0secret")
        self.assertEqual(self.send(session, b"AUTH PLAIN " + as_root),
                         b"-ERR [AUTH] Authentication failed.\r\n")

    def test_cancel_malformed_unknown(self):
        """'*' cancels; bad base64 and unknown mechanisms get -ERR; the session goes on."""
        session = self.connect()
        self.assertEqual(self.send(session, b"AUTH LOGIN", b"*"),
                         b"+ VXNlcm5hbWU6\r\n-ERR Authentication aborted by client.\r\n")
        self.assertEqual(self.send(session, b"AUTH PLAIN !!!"), b"-ERR Invalid base64 data.\r\n")
        self.assertEqual(self.send(session, b"AUTH XOAUTH2 abc"),
                         b"-ERR [AUTH] Unsupported authentication mechanism.\r\n")
        self.assertEqual(self.send(session, b"AUTH PLAIN " + PLAIN_OK), b"+OK Logged in.\r\n")

    def test_same_host_counts_as_secure(self):
        """A client connecting from the server's own public address may log in in clear."""
        here = IPv4Address("TCP", "198.51.100.1", 5000)
        self.assertEqual(self.send(self.connect(here, PUBLIC), b"AUTH PLAIN " + PLAIN_OK),
                         b"+OK Logged in.\r\n")
        self.assertEqual(self.send(self.connect(REMOTE, PUBLIC), b"AUTH PLAIN " + PLAIN_OK),
                         REFUSED)
