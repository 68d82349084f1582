"""SMTP STARTTLS, AUTH PLAIN/LOGIN, submission (587/465): Postfix's replies (OUTLOOK.md 23-25)."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.smtp.server import SMTPFactory
from mailsuite.store.memory import MemoryStore
from tests.fakes import FakeAccounts, FakeQueue, SmtpRealm, TLSTransport
from tests.test_delivery import ALIASES, ALICE, BOSS, inbox, make_config

HOST = "mail.example.com"
PLAIN_OK = base64.b64encode(b"\0boss\0secret")
PLAIN_BAD = base64.b64encode(b"\0boss\0wrong")
REMOTE = "192.0.2.7"
# fail2ban's postfix filter (mode = auth), with our program name in front.
FAIL2BAN = re.compile(
    r"postfix/smtpd\[\d+\]: warning: [-._\w]+\[(?P<host>[^\]]+)\]: SASL "
    r"((?i:LOGIN|PLAIN|(?:CRAM|DIGEST)-MD5)) authentication failed(?:: [A-Za-z0-9+/ ]*)?$"
)


class SmtpAuthCase(unittest.TestCase):
    service = "smtp"
    peer = REMOTE
    implicit = False
    ssl = "yes"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.store = MemoryStore()
        self.maillog = MailLog(None, HOST, now=self.clock.seconds)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ALIASES)
        config = make_config(path, ssl=self.ssl)
        self.delivery = LocalDelivery(config, FakeAccounts(BOSS, ALICE), self.store, self.maillog,
                                      threads.inline, now=self.clock.seconds)
        self.queue = FakeQueue()  # the outbound queue of mailsuite.mta.queue
        self.delivery.queue = self.queue
        self.realm = SmtpRealm(self.delivery)
        the_portal = portal.Portal(self.realm, [
            checkers.AllowAnonymousAccess(),
            checkers.InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret"),
        ])
        self.server_tls = object()
        self.factory = SMTPFactory(
            config, the_portal, self.delivery, self.maillog, clock=self.clock,
            reverse_lookup=lambda ip: defer.succeed("client.example"), service=self.service,
            server_tls=self.server_tls, implicit_tls=self.implicit,
        )
        self.connect()

    def require_tls(self) -> None:
        """``[tls] ssl = required`` from now on (the sessions read the factory's config)."""
        config = self.factory.config
        self.factory.config = replace(config, tls=replace(config.tls, ssl="required"))

    def connect(self, peer: str | None = None) -> None:
        self.proto = self.factory.buildProtocol(None)
        self.transport = TLSTransport(peerAddress=IPv4Address("TCP", peer or self.peer, 4321),
                                      hostAddress=IPv4Address("TCP", "198.51.100.1", 25))
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> list[str]:
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value().decode().split("\r\n")[:-1]

    def ehlo(self) -> list[str]:
        return [line[4:] for line in self.send(b"EHLO client.example\r\n")]

    def starttls(self) -> None:
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["220 2.0.0 Ready to start TLS"])
        self.assertIs(self.transport.tls_context, self.server_tls)

    def auth(self) -> None:
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n"),
                         ["235 2.7.0 Authentication successful"])

    def log_text(self) -> str:
        return "\n".join(self.maillog.lines)


class StartTLSTests(SmtpAuthCase):
    def test_ehlo_before_and_after_starttls(self) -> None:
        """Port 25, remote client, plaintext disabled: STARTTLS but no AUTH; after STARTTLS and
        a new EHLO: AUTH PLAIN LOGIN, no STARTTLS (Postfix's order of keywords)."""
        self.assertEqual(self.ehlo(), ["mail.example.com", "PIPELINING", "SIZE 10240000", "VRFY",
                                       "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN",
                                       "SMTPUTF8"])
        self.starttls()
        self.assertEqual(self.ehlo(), ["mail.example.com", "PIPELINING", "SIZE 10240000", "VRFY",
                                       "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "8BITMIME",
                                       "DSN", "SMTPUTF8"])
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["554 5.5.1 Error: TLS already active"])

    def test_auth_refused_before_tls(self) -> None:
        """AUTH before STARTTLS from a remote client: 503 authentication not enabled."""
        self.ehlo()
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n"),
                         ["503 5.5.1 Error: authentication not enabled"])

    def test_pipelined_after_starttls_dropped(self) -> None:
        """Commands behind STARTTLS in the same packet (sent in clear) are discarded; EHLO
        state is forgotten, so AUTH needs a new EHLO."""
        self.ehlo()
        out = self.send(b"STARTTLS\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<boss@localhost>\r\n")
        self.assertEqual(out, ["220 2.0.0 Ready to start TLS"])
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n"),
                         ["503 5.5.1 Error: send HELO/EHLO first"])

    def test_starttls_errors(self) -> None:
        """STARTTLS with an argument 501, in a transaction 503; without a certificate 502 and
        not in EHLO."""
        self.ehlo()
        self.assertEqual(self.send(b"STARTTLS now\r\n"), ["501 5.5.4 Syntax: STARTTLS"])
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"STARTTLS\r\n"),
                         ["503 5.5.1 Error: MAIL transaction in progress"])
        self.factory.server_tls = None
        self.connect()
        self.assertNotIn("STARTTLS", self.ehlo())
        self.assertEqual(self.send(b"STARTTLS\r\n"), ["502 5.5.1 Error: command not implemented"])

    def test_port25_takes_mail_without_tls_or_auth(self) -> None:
        """MX traffic: port 25 delivers to local domains in clear, without AUTH, even with
        ssl = required (Postfix's level may on 25)."""
        self.require_tls()
        self.ehlo()
        out = self.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<boss@localhost>\r\nDATA\r\n")
        self.assertEqual([x[:3] for x in out], ["250", "250", "354"])
        self.assertEqual(self.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")[0][:3], "250")
        self.assertEqual(len(inbox(self.store, BOSS)), 1)
        self.assertNotIn("AUTH PLAIN LOGIN", self.ehlo())

    def test_received_with_esmtpsa(self) -> None:
        """A message sent after STARTTLS and AUTH says 'with ESMTPSA' (ESMTPS with TLS only),
        and the client= line carries sasl_method and sasl_username, as Postfix."""
        self.starttls()
        self.ehlo()
        self.auth()
        self.send(b"MAIL FROM:<boss@mail.example.com>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
        self.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        data = inbox(self.store, ALICE)[0]
        self.assertIn(b"with ESMTPSA id", data)
        self.assertRegex(self.log_text(), r"client=client.example\[192.0.2.7\], sasl_method=PLAIN,"
                                          r" sasl_username=boss")


class AuthTests(SmtpAuthCase):
    peer = "127.0.0.1"  # loopback: plaintext AUTH allowed without TLS

    def test_ehlo_offers_auth_on_loopback(self) -> None:
        """Loopback counts as secure (Dovecot): AUTH PLAIN LOGIN offered without TLS; not
        offered again once authenticated."""
        self.assertIn("AUTH PLAIN LOGIN", self.ehlo())
        self.auth()
        self.assertNotIn("AUTH PLAIN LOGIN", self.ehlo())

    def test_plain_initial_response_and_twice(self) -> None:
        """AUTH PLAIN <b64>: 235; a second AUTH: 503."""
        self.ehlo()
        self.auth()
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n"),
                         ["503 5.5.1 Error: already authenticated"])

    def test_plain_without_initial_response(self) -> None:
        """AUTH PLAIN: '334 ' then the credentials."""
        self.ehlo()
        self.assertEqual(self.send(b"AUTH PLAIN\r\n"), ["334 "])
        self.assertEqual(self.send(PLAIN_OK + b"\r\n"), ["235 2.7.0 Authentication successful"])

    def test_login_two_prompts(self) -> None:
        """AUTH LOGIN: 334 Username:, 334 Password: (base64), 235 (OUTLOOK.md 24)."""
        self.ehlo()
        self.assertEqual(self.send(b"AUTH LOGIN\r\n"), ["334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(b"Ym9zcw==\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b"c2VjcmV0\r\n"), ["235 2.7.0 Authentication successful"])

    def test_login_initial_response(self) -> None:
        """AUTH LOGIN <b64 user>: straight to Password:."""
        self.ehlo()
        self.assertEqual(self.send(b"AUTH LOGIN Ym9zcw==\r\n"), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(self.send(b"c2VjcmV0\r\n"), ["235 2.7.0 Authentication successful"])

    def test_pipelined_auth_exchange(self) -> None:
        """AUTH LOGIN and both answers in one packet are answered in order."""
        self.ehlo()
        out = self.send(b"AUTH LOGIN\r\nYm9zcw==\r\nc2VjcmV0\r\nNOOP\r\n")
        self.assertEqual(out, ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6",
                               "235 2.7.0 Authentication successful", "250 2.0.0 Ok"])

    def test_wrong_password(self) -> None:
        """535 5.7.8 Error: authentication failed, and a line fail2ban's postfix filter reads."""
        self.ehlo()
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n"),
                         ["535 5.7.8 Error: authentication failed"])
        self.send(b"AUTH LOGIN Ym9zcw==\r\n")
        self.assertEqual(self.send(b"d3Jvbmc=\r\n"), ["535 5.7.8 Error: authentication failed"])
        lines = [line for line in self.maillog.lines if "SASL" in line]
        self.assertEqual(len(lines), 2)
        for line, mech in zip(lines, ["PLAIN", "LOGIN"], strict=True):
            m = FAIL2BAN.search(line)
            self.assertIsNotNone(m, line)
            self.assertEqual(m.group("host"), "127.0.0.1")
            self.assertIn(f"SASL {mech} authentication", line)
        self.auth()

    def test_proxy_refused(self) -> None:
        """PLAIN with someone else's authorization identity: 535."""
        self.ehlo()
        ir = base64.b64encode(b"alice\0boss\0secret")
        self.assertEqual(self.send(b"AUTH PLAIN " + ir + b"\r\n"),
                         ["535 5.7.8 Error: authentication failed"])

    def test_cancel_and_errors(self) -> None:
        """'*' 501 5.7.0; bad base64 501 5.5.2; unknown mechanism 504; bare AUTH 501; AUTH
        before EHLO 503; the session goes on."""
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n"),
                         ["503 5.5.1 Error: send HELO/EHLO first"])
        self.ehlo()
        self.assertEqual(self.send(b"AUTH LOGIN\r\n*\r\n"),
                         ["334 VXNlcm5hbWU6", "501 5.7.0 Authentication aborted"])
        self.assertEqual(self.send(b"AUTH PLAIN !!!\r\n"), ["501 5.5.2 Cannot decode response"])
        self.assertEqual(self.send(b"AUTH CRAM-MD5\r\n"),
                         ["504 5.5.4 Unsupported authentication mechanism"])
        self.assertEqual(self.send(b"AUTH\r\n"), ["501 5.5.4 Syntax: AUTH mechanism"])
        self.auth()

    def test_auth_in_transaction(self) -> None:
        """AUTH after MAIL: 503."""
        self.ehlo()
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"AUTH PLAIN " + PLAIN_OK + b"\r\n"),
                         ["503 5.5.1 Error: MAIL transaction in progress"])

    def test_mynetworks_remote_recipient_relayed(self) -> None:
        """Port 25 from mynetworks (127.0.0.1) without AUTH: a remote recipient is accepted for
        the outbound queue; from elsewhere 554 Relay access denied, until the client
        authenticates (OUTLOOK.md 25, issue 4 item 4)."""
        self.ehlo()
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<x@remote.example>\r\n"), ["250 2.1.5 Ok"])
        self.connect(REMOTE)
        self.ehlo()
        self.send(b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<x@remote.example>\r\n"),
                         ["554 5.7.1 <x@remote.example>: Relay access denied"])
        self.send(b"RSET\r\n")
        self.starttls()  # no plaintext AUTH from a remote client
        self.ehlo()
        self.auth()
        self.send(b"MAIL FROM:<boss@localhost>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<x@remote.example>\r\n"), ["250 2.1.5 Ok"])

    def test_authenticated_on_25_sender_checked(self) -> None:
        """An authenticated session on 25 may only use its own senders too."""
        self.ehlo()
        self.auth()
        self.assertEqual(self.send(b"MAIL FROM:<alice@localhost>\r\n")[0][:9], "553 5.7.1")


class SubmissionTests(SmtpAuthCase):
    service = "submission"

    def ready(self) -> None:
        self.starttls()
        self.ehlo()
        self.auth()

    def test_mail_needs_auth(self) -> None:
        """587: MAIL before AUTH is 530 5.7.0 Authentication required (after STARTTLS too)."""
        self.ehlo()
        self.assertEqual(self.send(b"MAIL FROM:<boss@mail.example.com>\r\n"),
                         ["530 5.7.0 Authentication required"])
        self.starttls()
        self.ehlo()
        self.assertEqual(self.send(b"MAIL FROM:<boss@mail.example.com>\r\n"),
                         ["530 5.7.0 Authentication required"])

    def test_own_senders(self) -> None:
        """Own address in any local domain or in myorigin/mydomain (boss@example.com while
        mydestination names mail.example.com), a bare local part, an alias that includes the
        user, and the null sender are accepted; with SIZE after a space (OUTLOOK.md 25)."""
        self.ready()
        for sender in [b"<boss@mail.example.com> SIZE=1234", b"<BOSS@localhost>", b"<boss>",
                       b"<boss@example.com>",
                       b"<sales@localhost>", b"<team@mail.example.com>", b"<>"]:
            self.assertEqual(self.send(b"MAIL FROM: " + sender + b"\r\n"), ["250 2.1.0 Ok"], sender)
            self.send(b"RSET\r\n")

    def test_foreign_senders_553(self) -> None:
        """Someone else's address, an alias not reaching the user, a remote domain: 553 5.7.1."""
        self.ready()
        for sender in [b"alice@localhost", b"loop1@localhost", b"boss@remote.example"]:
            self.assertEqual(self.send(b"MAIL FROM:<" + sender + b">\r\n"), [
                f"553 5.7.1 <{sender.decode()}>: Sender address rejected: not owned by user boss"])

    def test_remote_recipient_queued_local_delivered(self) -> None:
        """Authenticated: a remote recipient goes into the outbound queue (with the envelope
        sender), a local one is delivered in the same transaction; one 250 for both."""
        self.ready()
        out = self.send(b"MAIL FROM:<boss@mail.example.com>\r\nRCPT TO:<friend@remote.example>\r\n"
                        b"RCPT TO:<alice@localhost>\r\nDATA\r\n")
        self.assertEqual(out, [
            "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(self.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")[0][:3], "250")
        self.assertEqual(len(inbox(self.store, ALICE)), 1)
        [(env, data)] = self.queue.enqueued
        self.assertEqual(env.sender, "boss@mail.example.com")
        self.assertEqual([r.address for r in env.recipients], ["friend@remote.example"])
        self.assertIn(b"Subject: x", data)

    def test_ssl_required_before_tls(self) -> None:
        """587 with ssl = required: before STARTTLS only EHLO/HELO/STARTTLS/NOOP/RSET/HELP/QUIT,
        no AUTH offered even on loopback; after STARTTLS the usual rules."""
        self.require_tls()
        self.connect("127.0.0.1")
        self.assertNotIn("AUTH PLAIN LOGIN", self.ehlo())
        for command in [b"AUTH PLAIN " + PLAIN_OK, b"MAIL FROM:<boss@localhost>", b"VRFY boss"]:
            self.assertEqual(self.send(command + b"\r\n"),
                             ["530 5.7.0 Must issue a STARTTLS command first"], command)
        self.assertEqual(self.send(b"NOOP\r\n"), ["250 2.0.0 Ok"])
        self.ready()
        self.assertEqual(self.send(b"MAIL FROM:<boss@localhost>\r\n"), ["250 2.1.0 Ok"])


class SmtpsTests(SmtpAuthCase):
    service = "smtps"
    implicit = True

    def test_implicit_tls(self) -> None:
        """465: TLS from the first byte, so no STARTTLS, AUTH offered, MAIL needs AUTH."""
        ehlo = self.ehlo()
        self.assertNotIn("STARTTLS", ehlo)
        self.assertIn("AUTH PLAIN LOGIN", ehlo)
        self.assertEqual(self.send(b"MAIL FROM:<boss@localhost>\r\n"),
                         ["530 5.7.0 Authentication required"])
        self.auth()
        self.assertEqual(self.send(b"MAIL FROM:<boss@localhost>\r\n"), ["250 2.1.0 Ok"])
