"""The SMTP server as an MTA: relay control, SMTPUTF8, DSN parameters, and what goes to the
queue (mailsuite.smtp.server + accept.DeliveryAvatar), through StringTransport."""

from __future__ import annotations

import ipaddress

from tests.fakes import FakeQueue
from tests.test_smtp_server import SessionCase


class RelayControlTests(SessionCase):
    """The client is 192.0.2.7; mydestination is mail.example.com, localhost..."""

    def setUp(self) -> None:
        super().setUp()
        self.queue = FakeQueue()
        self.delivery.queue = self.queue
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")

    def trust_client(self) -> None:
        self.delivery.mynetworks = [ipaddress.ip_network("192.0.2.0/24")]

    def test_stranger_may_not_relay(self) -> None:
        """Another domain from outside mynetworks: 554 5.7.1 <addr>: Relay access denied,
        logged as a Postfix reject line."""
        self.assertEqual(self.send(b"RCPT TO:<x@elsewhere.test>\r\n"),
                         ["554 5.7.1 <x@elsewhere.test>: Relay access denied"])
        self.assertIn("NOQUEUE: reject: RCPT from client.example[192.0.2.7]: 554 5.7.1 "
                      "<x@elsewhere.test>: Relay access denied; from=<a@b.example> "
                      "to=<x@elsewhere.test> proto=ESMTP helo=<client.example>",
                      self.log_text())

    def test_routing_tricks_refused(self) -> None:
        """user%host@local, "user@host"@local, user!host@local from a stranger: 554 5.7.1;
        user@host@local and @route:... with a remote final address never reach the queue."""
        for rcpt in (b"u%elsewhere.test@mail.example.com", b'"u@elsewhere.test"@localhost',
                     b"u!elsewhere.test@localhost", b"@localhost:u@elsewhere.test"):
            self.assertEqual(self.codes(b"RCPT TO:<" + rcpt + b">\r\n"), ["554"], rcpt)
        self.assertEqual(self.codes(b"RCPT TO:<u@elsewhere.test@localhost>\r\n"), ["501"])
        self.assertEqual(self.queue.enqueued, [])

    def test_mynetworks_relays_through_the_queue(self) -> None:
        """A client in mynetworks relays; the queue gets the envelope with DSN parameters and
        the 250 comes once the queue file is written; local copies are delivered at once."""
        self.trust_client()
        self.send(b"RSET\r\nMAIL FROM:<a@b.example> RET=HDRS ENVID=abc\r\n")
        self.assertEqual(self.codes(
            b"RCPT TO:<x@elsewhere.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;X+40elsewhere.test\r\n"
            b"RCPT TO:<boss@mail.example.com>\r\nDATA\r\n"), ["250", "250", "354"])
        reply = self.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertRegex(reply[0], r"^250 2.0.0 Ok: queued as \w+$")
        env, data = self.queue.enqueued[0]
        self.assertEqual([r.address for r in env.recipients], ["x@elsewhere.test"])
        self.assertEqual(env.recipients[0].notify, ["SUCCESS", "FAILURE"])
        self.assertEqual(env.recipients[0].orcpt, "rfc822;X@elsewhere.test")
        self.assertEqual((env.ret, env.envid, env.sender), ("HDRS", "abc", "a@b.example"))
        self.assertEqual(env.queue_id, reply[0].rsplit(" ", 1)[1])
        self.assertIn(b"Subject: hi", data)

    def test_bare_sender_gets_myorigin(self) -> None:
        """MAIL FROM:<user> without a domain becomes user@$myorigin, as Postfix's
        append_at_myorigin (not @myhostname)."""
        self.trust_client()
        self.send(b"RSET\r\nMAIL FROM:<alice>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n")
        self.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        env, _ = self.queue.enqueued[0]
        self.assertEqual(env.sender, "alice@example.com")

    def test_relay_domains(self) -> None:
        """relay_domains (and their subdomains) are accepted from anyone."""
        self.delivery.relay_domains = ["partner.test"]
        self.assertEqual(self.codes(b"RCPT TO:<x@partner.test>\r\nRCPT TO:<y@mx.partner.test>\r\n"),
                         ["250", "250"])

    def test_authenticated_user_relays(self) -> None:
        """delivery.avatar(user) (an authenticated login) may relay."""
        self.proto._avatar = self.delivery.avatar("boss")
        self.assertEqual(self.codes(b"RCPT TO:<x@elsewhere.test>\r\n"), ["250"])

    def test_no_queue_no_relay(self) -> None:
        """Without a queue (local delivery only) even mynetworks cannot relay."""
        self.trust_client()
        self.delivery.queue = None
        self.assertEqual(self.codes(b"RCPT TO:<x@elsewhere.test>\r\n"), ["554"])

    def test_success_notice_for_local_delivery(self) -> None:
        """NOTIFY=SUCCESS on a mailbox delivery: a "delivered" DSN from <> to the sender."""
        self.assertEqual(self.codes(b"RCPT TO:<boss@mail.example.com> NOTIFY=SUCCESS\r\nDATA\r\n"),
                         ["250", "354"])
        self.assertEqual(self.codes(b"Subject: s\r\n\r\nb\r\n.\r\n"), ["250"])
        sender, addresses, notice = self.queue.submitted[0]
        self.assertEqual((sender, addresses), ("", ["a@b.example"]))
        self.assertIn(b"Action: delivered", notice)

    def test_bad_dsn_parameters(self) -> None:
        """NOTIFY=NEVER,SUCCESS and an ORCPT without a type: 501."""
        self.assertEqual(self.codes(b"RCPT TO:<boss@mail.example.com> NOTIFY=NEVER,SUCCESS\r\n"),
                         ["501"])
        self.assertEqual(self.codes(b"RCPT TO:<boss@mail.example.com> ORCPT=boss\r\n"), ["501"])


class SMTPUTF8Tests(SessionCase):
    def test_utf8_address_needs_smtputf8(self) -> None:
        """A UTF-8 address without the SMTPUTF8 parameter: 553 5.6.7 (as Postfix); with it the
        address is parsed and looked up like any other."""
        self.send(b"EHLO client.example\r\n")
        self.assertEqual(self.send("MAIL FROM:<jös@b.example>\r\n".encode()),
                         ["553 5.6.7 Must declare SMTPUTF8 to send unicode address"])
        self.assertEqual(self.codes("MAIL FROM:<jös@b.example> SMTPUTF8\r\n".encode()), ["250"])
        self.assertEqual(self.codes("RCPT TO:<bößé@mail.example.com>\r\n".encode()), ["550"])
        self.assertEqual(self.codes(b"RCPT TO:<boss@mail.example.com>\r\nDATA\r\n"), ["250", "354"])
        self.assertEqual(self.codes("Subject: grüße\r\n\r\nü\r\n.\r\n".encode()), ["250"])


class LimitTests(SessionCase):
    def test_recipient_limit(self) -> None:
        """After 1000 accepted recipients (smtpd_recipient_limit) RCPT gets 452 4.5.3."""
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        replies = self.codes(b"RCPT TO:<boss@mail.example.com>\r\n" * 1001)
        self.assertEqual(replies[:1000], ["250"] * 1000)
        self.assertEqual(self.send(b"RCPT TO:<boss@mail.example.com>\r\n"),
                         ["452 4.5.3 Error: too many recipients"])

    def test_error_limit(self) -> None:
        """The 20th error reply of a session (smtpd_hard_error_limit) ends it with 421 4.7.0;
        from the 10th on each waits smtpd_error_sleep_time (1s) on the clock."""
        self.send(b"BOGUS\r\n" * 25)
        for _ in range(10):
            self.clock.advance(1)
        replies = self.transport.value().decode().split("\r\n")[:-1]
        self.assertEqual(len([r for r in replies if r.startswith("502")]), 20)
        self.assertEqual(replies[-1], "421 4.7.0 mail.example.com Error: too many errors")
        self.assertTrue(self.transport.disconnecting)

    def test_every_reply_has_an_enhanced_code(self) -> None:
        """ENHANCEDSTATUSCODES: each reply but the greeting, EHLO lines and 354 carries X.Y.Z."""
        replies = self.send(b"HELO x\r\nNOOP\r\nVRFY boss\r\nHELP\r\nMAIL FROM:<>\r\nRSET\r\n"
                            b"RCPT TO:<boss@mail.example.com>\r\nFOO\r\nQUIT\r\n")
        for reply in replies:
            self.assertRegex(reply, r"^\d{3} [245]\.\d{1,3}\.\d{1,3} ")
