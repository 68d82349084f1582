"""POP3 input after STLS (issue 9, checking the POP3 reader as IMAP 1 asks): nothing sent in
clear behind STLS reaches the TLS session, also when STLS waited behind a slow command."""

from __future__ import annotations

from twisted.internet import defer

from tests.test_sasl_pop3 import Pop3AuthCase


class StlsAfterSlowCommandTests(Pop3AuthCase):
    def test_partial_line_behind_delayed_stls_is_dropped(self) -> None:
        """PASS is checked in a thread (here: a gate), STLS waits behind it; the start of a
        line sent in clear after STLS ("QU") must not prefix the first decrypted line."""
        proto, transport = self.connect()
        gate: defer.Deferred[None] = defer.Deferred()
        real_login = self.portal.login
        self.portal.login = lambda *a: gate.addCallback(lambda _: real_login(*a))  # type: ignore[method-assign]
        proto.dataReceived(b"USER boss\r\nPASS wrong\r\nSTLS\r\nQU")
        gate.callback(None)
        self.clock.advance(30)  # the failure delay (less than login_idle_timeout)
        self.assertTrue(transport.value().endswith(b"+OK Begin TLS negotiation now.\r\n"))
        transport.clear()
        proto.dataReceived(b"IT\r\n")  # decrypted: "IT" alone is no command
        self.assertEqual(transport.value(), b"-ERR Unknown command.\r\n")

    def test_pipelined_commands_answered_once_in_order(self) -> None:
        """A pipelined session cut at every byte: each command answered once, in order."""
        data = b"CAPA\r\nUSER boss\r\nPASS secret\r\nSTAT\r\nNOOP\r\nQUIT\r\n"
        for cut in range(1, len(data)):
            proto, transport = self.connect()
            proto.dataReceived(data[:cut])
            proto.dataReceived(data[cut:])
            self.clock.advance(60)
            replies = [line for line in transport.value().split(b"\r\n")
                       if line.startswith((b"+OK", b"-ERR"))]
            self.assertEqual(len(replies), 6, (cut, transport.value()))
            self.assertTrue(transport.value().endswith(b"+OK Logging out.\r\n"), cut)
