"""Tests for mailsuite.smtp.lmtp: RFC 2033 dialogue over StringTransport with a fake delivery."""

from __future__ import annotations


from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsuite.maillog import MailLog
from mailsuite.mta import forward
from mailsuite.mta.delivery import DeliveryFailed
from mailsuite.smtp.lmtp import LMTPFactory
from tests.configs import real_config
from tests.fakes import FakeDelivery


class LMTPCase(unittest.TestCase):
    def setUp(self) -> None:
        self.delivery = FakeDelivery(hold=True)
        config = real_config("mail.example.test", mail={"message_size_limit": 100})
        factory = LMTPFactory(config, self.delivery,
                              MailLog(None, "mail.example.test"))
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, *lines: str) -> list[str]:
        self.transport.clear()
        for line in lines:
            self.proto.dataReceived(line.encode() + b"\r\n")
        return self.replies()

    def replies(self) -> list[str]:
        out = self.transport.value().decode().split("\r\n")[:-1]
        self.transport.clear()
        return out


class DialogueTests(LMTPCase):
    def test_greeting_and_lhlo(self) -> None:
        """220 greeting; LHLO lists PIPELINING, SIZE, ENHANCEDSTATUSCODES; EHLO is refused."""
        self.assertEqual(self.replies(), ["220 mail.example.test LMTP mailsuite"])
        self.assertEqual(self.send("EHLO x"), ["500 5.5.1 Error: this is LMTP: use LHLO"])
        lhlo = self.send("LHLO x")
        self.assertEqual(lhlo[0], "250-mail.example.test")
        self.assertIn("250-PIPELINING", lhlo)
        self.assertEqual(lhlo[-1], "250 8BITMIME")
        self.assertIn("250-SIZE 100", lhlo)

    def test_one_reply_per_recipient(self) -> None:
        """After the final dot: one reply per accepted recipient in RCPT order, each its own
        result (250, a temporary 451, a permanent 550 from a command's exit status)."""
        self.send("LHLO x")
        self.assertEqual(self.send("MAIL FROM:<joe@x>", "RCPT TO:<a@x>", "RCPT TO:<ghost@x>",
                                   "RCPT TO:<b@x>", "RCPT TO:<c@x>", "DATA"),
                         ["250 2.1.0 Ok", "250 2.1.5 Ok",
                          ("550 5.1.1 <ghost@x>: Recipient address rejected: User unknown in"
                          " local recipient table"), "250 2.1.5 Ok", "250 2.1.5 Ok",
                          "354 End data with <CR><LF>.<CR><LF>"])
        self.assertEqual(self.send("Subject: s", "", "..dot", "."), [])
        self.assertEqual(len(self.delivery.held), 3)
        data, sender, pairs, _ = self.delivery.held[0]
        self.assertTrue(data.endswith(b"\nSubject: s\n\n.dot\n"))
        self.assertIn(b"with LMTP id", data)
        self.assertEqual((sender, pairs), ("joe@x", [("a@x", "a")]))
        perm = DeliveryFailed("x")
        perm.failures = [Failure(forward.TargetFailed(True, "5.3.0", "Command died"))]  # type: ignore[attr-defined]
        self.delivery.held[2][3].errback(perm)
        self.delivery.held[1][3].errback(DeliveryFailed("disk full"))
        self.delivery.held[0][3].callback(None)
        lines = self.replies()
        self.assertEqual([line[:3] for line in lines], ["250", "451", "550"])
        self.assertIn("<a@x>", lines[0])
        self.assertEqual(lines[2], "550 5.3.0 <c@x>: Command died")
        self.flushLoggedErrors(DeliveryFailed)

    def test_pipelined_commands_wait_for_lookup(self) -> None:
        """Commands sent together are answered in order even when a RCPT look-up is slow."""
        self.send("LHLO x")
        out = self.send("MAIL FROM:<joe@x>", "RCPT TO:<slow@x>", "RCPT TO:<a@x>", "NOOP")
        self.assertEqual(out, ["250 2.1.0 Ok"])
        self.delivery.resolving["slow@x"].callback(["slow"])
        self.assertEqual(self.replies(), ["250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"])

    def test_sequence_errors(self) -> None:
        """MAIL before LHLO, RCPT before MAIL and DATA without recipients are 503."""
        self.assertEqual(self.send("MAIL FROM:<a@x>")[0][:3], "503")
        self.send("LHLO x")
        self.assertEqual(self.send("RCPT TO:<a@x>")[0][:3], "503")
        self.send("MAIL FROM:<a@x>")
        self.assertEqual(self.send("DATA"), ["503 5.5.1 Error: no valid recipients"])

    def test_size_limit(self) -> None:
        """A message over message_size_limit gets 552 for every recipient, nothing delivered."""
        self.send("LHLO x", "MAIL FROM:<j@x>", "RCPT TO:<a@x>", "RCPT TO:<b@x>", "DATA")
        out = self.send("x" * 80, "y" * 80, ".")
        self.assertEqual(out, ["552 5.3.4 Message size exceeds fixed limit"] * 2)
        self.assertEqual(self.delivery.held, [])

    def test_quit(self) -> None:
        """QUIT says 221 and closes."""
        self.assertEqual(self.send("QUIT"), ["221 2.0.0 Bye"])
        self.assertTrue(self.transport.disconnecting)
