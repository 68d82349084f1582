"""The policy delegation client (mailsuite.smtp.policy) inside the SMTP restrictions: the
request's attributes, the reply's actions, connection reuse and limits, time-outs and the
default action. The policy server is a fake endpoint over StringTransports, driven by a Clock
(tests/integration/test_postgrey.py talks to the real postgrey)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport

from tests.test_delivery import BOSS, inbox
from tests.test_restrictions import RestrictionCase

SPEC = "inet:127.0.0.1:10023"


class FakeEndpoint:
    """Connections the policy client opens: (protocol, transport) each; ``refuse`` refuses."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        self.refuse = False

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("Connection refused"))
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return defer.succeed(proto)


def request(transport: StringTransport) -> dict[str, str]:
    """The last request sent on a connection, as a dict (and clear it)."""
    text = transport.value().decode()
    transport.clear()
    assert text.endswith("\n\n"), text
    return dict(line.split("=", 1) for line in text.strip("\n").split("\n"))


class PolicyTests(RestrictionCase):
    def setUp(self) -> None:
        super().setUp()
        self.policy(SPEC)

    def policy(self, spec: str, **mail: Any) -> None:
        self.restrict(smtpd_recipient_restrictions=f"check_policy_service {spec}", **mail)
        self.endpoint = FakeEndpoint()
        self.factory.restrictions.policies[spec]._endpoint = self.endpoint

    def answer(self, n: int, reply: bytes) -> None:
        self.endpoint.connections[n][0].dataReceived(reply)

    def test_request_reply_and_reuse(self) -> None:
        """Postfix's attributes; one connection for both RCPTs, the same instance for both;
        DEFER_IF_PERMIT's text with its DSN as the recipient's refusal; OK accepts."""
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=123\r\n")
        self.assertEqual(self.send(b"RCPT TO:<boss@mail.example.com>\r\n"), [])
        (_, transport), = self.endpoint.connections
        first = request(transport)
        self.assertEqual({k: first[k] for k in (
            "request", "protocol_state", "protocol_name", "helo_name", "sender", "recipient",
            "client_address", "client_name", "size", "recipient_count")}, {
            "request": "smtpd_access_policy", "protocol_state": "RCPT",
            "protocol_name": "ESMTP", "helo_name": "client.example", "sender": "a@b.example",
            "recipient": "boss@mail.example.com", "client_address": "192.0.2.7",
            "client_name": "client.example", "size": "123", "recipient_count": "0"})
        self.transport.clear()
        self.answer(0, b"action=DEFER_IF_PERMIT 4.2.0 Greylisted, see x\n\n")
        self.assertEqual(self.transport.value().decode().split("\r\n")[:-1], [
            "450 4.2.0 <boss@mail.example.com>: Recipient address rejected: Greylisted, see x"])
        self.send(b"RCPT TO:<alice@mail.example.com>\r\n")
        self.assertEqual(len(self.endpoint.connections), 1)
        second = request(transport)
        self.assertEqual(second["instance"], first["instance"])
        self.transport.clear()
        self.answer(0, b"action=OK\n\n")
        self.assertEqual(self.transport.value(), b"250 2.1.5 Ok\r\n")
        self.send(b"RSET\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<boss@mail.example.com>\r\n")
        self.assertNotEqual(request(transport)["instance"], first["instance"])

    def test_prepend_goes_above_received(self) -> None:
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                  b"RCPT TO:<boss@mail.example.com>\r\n")
        self.answer(0, b"action=PREPEND X-Greylist: delayed 60 seconds\nignored=1\n\n")
        self.assertEqual(self.codes(b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n"), ["354", "250"])
        message = inbox(self.store, BOSS)[0]
        self.assertIn(b"\nDelivered-To: boss@mail.example.com\nX-Greylist: delayed 60 seconds"
                      b"\nReceived: from client.example", message)

    def test_timeout_gives_default_action(self) -> None:
        """No reply in smtpd_policy_service_timeout (100s): one more try on a new connection
        a second later, then 451 4.3.5 Server configuration problem, logged."""
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                  b"RCPT TO:<boss@mail.example.com>\r\n")
        self.transport.clear()
        self.clock.advance(100)
        self.assertTrue(self.endpoint.connections[0][1].disconnecting)
        self.clock.advance(1)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.clock.advance(100)
        self.assertEqual(self.transport.value().decode().split("\r\n")[:-1], [
            "451 4.3.5 <boss@mail.example.com>: Recipient address rejected: Server"
            " configuration problem"])
        self.assertIn("warning: problem talking to server 127.0.0.1:10023: timeout after 100s",
                      "\n".join(self.log_text()))

    def test_refused_connection_and_own_default_action(self) -> None:
        self.policy(SPEC, smtpd_policy_service_default_action=self.default("DUNNO"))
        self.endpoint.refuse = True
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                  b"RCPT TO:<boss@mail.example.com>\r\n")
        self.clock.advance(1)
        self.assertEqual(self.transport.value().decode().split("\r\n")[-2], "250 2.1.5 Ok")
        self.assertIn("Connection refused", "\n".join(self.log_text()))

    def default(self, text: str) -> Any:
        from mailsuite.smtp.restrictions import parse_policy_action
        return parse_policy_action(text)

    def test_request_limit_and_max_idle(self) -> None:
        """smtpd_policy_service_request_limit = 1: a connection per request;
        smtpd_policy_service_max_idle: an idle connection is closed."""
        self.policy(SPEC, smtpd_policy_service_request_limit=1)
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                  b"RCPT TO:<boss@mail.example.com>\r\n")
        self.answer(0, b"action=DUNNO\n\n")
        self.assertTrue(self.endpoint.connections[0][1].disconnecting)
        self.send(b"RCPT TO:<alice@mail.example.com>\r\n")
        self.answer(1, b"action=DUNNO\n\n")
        self.assertEqual(len(self.endpoint.connections), 2)
        self.policy(SPEC)
        self.send(b"RCPT TO:<boss@mail.example.com>\r\n")
        self.answer(0, b"action=DUNNO\n\n")
        transport = self.endpoint.connections[0][1]
        self.clock.advance(299)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_bad_reply_is_a_server_problem(self) -> None:
        """A reply without action= (or with one that is no access(5) action) is tried again,
        then gets the default action."""
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                  b"RCPT TO:<boss@mail.example.com>\r\n")
        self.answer(0, b"nothing=here\n\n")
        self.clock.advance(1)
        self.answer(1, b"action=FROBNICATE\n\n")
        self.assertEqual(self.transport.value().decode().split("\r\n")[-2][:10], "451 4.3.5 ")

    def test_data_state(self) -> None:
        """In smtpd_data_restrictions: protocol_state=DATA with the recipient count."""
        self.restrict(smtpd_data_restrictions=f"check_policy_service {SPEC}")
        self.endpoint = FakeEndpoint()
        self.factory.restrictions.policies[SPEC]._endpoint = self.endpoint
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
                  b"RCPT TO:<boss@mail.example.com>\r\nDATA\r\n")
        sent = request(self.endpoint.connections[0][1])
        self.assertEqual((sent["protocol_state"], sent["recipient_count"], sent["recipient"]),
                         ("DATA", "1", ""))
        self.transport.clear()
        self.answer(0, b"action=REJECT nope\n\n")
        self.assertEqual(self.transport.value(),
                         b"554 5.7.1 <DATA>: Data command rejected: nope\r\n")
