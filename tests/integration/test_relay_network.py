"""mailsuite.mta.relay (SMTP client) over real sockets: a twisted.names DNS server on 127.0.0.1
and receiving SMTP servers on 127.0.0.2-4 (tests/fakemx.py), the real reactor, real TLS."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from mailsuite.mta.relay import Relay
from mailsuite.mta.tlspolicy import TLSPolicy
from tests import fakemx

MESSAGE = b"Subject: relay test\n\nline one\n.leading dot\n..two dots\n.\nend\n"


def envelope(*rcpts: str, **kw: Any) -> Envelope:
    return Envelope("AB12CD34EF", "alice@example.test", [QueuedRecipient(r) for r in rcpts],
                    0.0, **kw)


class RelayNetworkTests(unittest.TestCase):
    """Real sockets: DNS on 127.0.0.1, receiving servers on 127.0.0.2-4."""

    def setUp(self) -> None:
        self.port = fakemx.free_port_on(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        records = fakemx.zone(
            {"two.test": [(10, "mx1.two.test"), (20, "mx2.two.test")],
             "null.test": [(0, ".")],
             "tls.test": [(10, "mx3.tls.test")]},
            {"mx1.two.test": "127.0.0.2", "mx2.two.test": "127.0.0.3",
             "mx3.tls.test": "127.0.0.4", "bare.test": "127.0.0.3"})
        dns_port, self.zone, ports = fakemx.start_dns(records)
        for p in ports:
            self.addCleanup(p.stopListening)
        self.dns = f"127.0.0.1:{dns_port}"

    def sinks(self, behaviours: dict[str, fakemx.Behaviour]) -> dict[str, fakemx.SinkFactory]:
        factories, ports = fakemx.start_sinks(behaviours, self.port)
        for p in ports:
            self.addCleanup(p.stopListening)
        return factories

    def relay(self, **kw: Any) -> Relay:
        resolver = MXResolver(self.dns, reactor=reactor)
        return Relay(resolver, "mail.example.test", reactor, port=self.port, **kw)

    @defer.inlineCallbacks
    def test_first_mx_defers_second_takes_it(self) -> None:
        """A 421 greeting from the best MX moves on to the next one, which gets the message
        with our dot-stuffing undone exactly and the DSN parameters."""
        sinks = self.sinks({"127.0.0.2": fakemx.Behaviour(greeting="421 4.3.2 busy"),
                            "127.0.0.3": fakemx.Behaviour()})
        env = envelope("a@two.test", ret="HDRS", envid="ID+1")
        env.recipients[0].notify = ["SUCCESS", "FAILURE"]
        env.recipients[0].orcpt = "rfc822;a@two.test"
        out = yield self.relay().deliver("two.test", env, env.recipients, MESSAGE)
        self.assertEqual([o.code for o in out], [250])
        self.assertEqual(out[0].relay, f"mx2.two.test[127.0.0.3]:{self.port}")
        self.assertTrue(out[0].remote_dsn)
        got = sinks["127.0.0.3"].received[0]
        self.assertEqual(got.data, MESSAGE)
        self.assertIn("RET=HDRS", got.mail_line)
        self.assertIn("ENVID=ID+2B1", got.mail_line)
        self.assertIn("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@two.test", got.rcpt_lines[0])
        self.assertEqual(sinks["127.0.0.2"].received, [])

    @defer.inlineCallbacks
    def test_per_recipient_results(self) -> None:
        """Per RCPT: 250 sent, 451 deferred, 550 bounced, in order."""
        self.sinks({"127.0.0.2": fakemx.Behaviour(rcpt={
            "soon@two.test": "451 4.2.0 try later", "gone@two.test": "550 5.1.1 no such user"})})
        env = envelope("ok@two.test", "soon@two.test", "gone@two.test")
        out = yield self.relay().deliver("two.test", env, env.recipients, MESSAGE)
        self.assertEqual([(o.code, o.dsn, o.status) for o in out],
                         [(250, "2.0.0", "sent"), (451, "4.2.0", "deferred"),
                          (550, "5.1.1", "bounced")])
        self.assertIn("(in reply to RCPT TO command)", out[2].text)

    @defer.inlineCallbacks
    def test_all_hosts_down_defers(self) -> None:
        """No server listening: every recipient deferred with 4.4.1 Connection refused."""
        env = envelope("a@two.test")
        out = yield self.relay().deliver("two.test", env, env.recipients, MESSAGE)
        self.assertEqual((out[0].code, out[0].dsn), (451, "4.4.1"))
        self.assertIn("Connection refused", out[0].text)

    @defer.inlineCallbacks
    def test_null_mx_bounces(self) -> None:
        """A null MX domain bounces at once with 5.1.10, nothing is contacted."""
        env = envelope("a@null.test")
        out = yield self.relay().deliver("null.test", env, env.recipients, MESSAGE)
        self.assertEqual((out[0].code, out[0].dsn), (550, "5.1.10"))

    @defer.inlineCallbacks
    def test_a_record_fallback(self) -> None:
        """A domain without MX records gets its mail at its A record."""
        sinks = self.sinks({"127.0.0.3": fakemx.Behaviour()})
        env = envelope("a@bare.test")
        out = yield self.relay().deliver("bare.test", env, env.recipients, MESSAGE)
        self.assertEqual(out[0].code, 250)
        self.assertEqual(len(sinks["127.0.0.3"].received), 1)

    @defer.inlineCallbacks
    def test_starttls_when_offered(self) -> None:
        """STARTTLS is used whenever offered (no certificate check), and EHLO is repeated."""
        sinks = self.sinks({"127.0.0.4": fakemx.Behaviour(starttls=True)})
        env = envelope("a@tls.test")
        out = yield self.relay().deliver("tls.test", env, env.recipients, MESSAGE)
        self.assertEqual(out[0].code, 250)
        self.assertTrue(sinks["127.0.0.4"].received[0].tls)

    @defer.inlineCallbacks
    def test_relayhost_with_auth(self) -> None:
        """relayhost [host]:port skips MX; AUTH PLAIN with the password map, inside TLS (an
        unverified certificate here: smtp_sasl_tls_verified_only = no allows it)."""
        sinks = self.sinks({"127.0.0.4": fakemx.Behaviour(starttls=True, auth=("u", "p w"))})
        hop = f"[127.0.0.4]:{self.port}"
        relay = self.relay(relayhost=hop, credentials={hop: ("u", "p w")},
                           tls=TLSPolicy(sasl_verified_only=False))
        env = envelope("a@anywhere.test")
        out = yield relay.deliver(relay.next_hop("a@anywhere.test"), env, env.recipients, MESSAGE)
        self.assertEqual(out[0].code, 250)
        self.assertEqual(sinks["127.0.0.4"].received[0].auth, "u")

    @defer.inlineCallbacks
    def test_no_password_without_tls(self) -> None:
        """Credentials are never sent over a connection without TLS: deferred 4.7.0."""
        sinks = self.sinks({"127.0.0.4": fakemx.Behaviour(auth=("u", "p"))})
        hop = f"[127.0.0.4]:{self.port}"
        relay = self.relay(relayhost=hop, credentials={hop: ("u", "p")})
        env = envelope("a@anywhere.test")
        out = yield relay.deliver(hop, env, env.recipients, MESSAGE)
        self.assertEqual((out[0].code // 100, out[0].dsn), (4, "4.7.0"))
        self.assertEqual(sinks["127.0.0.4"].received, [])

    @defer.inlineCallbacks
    def test_lost_after_data_is_deferred(self) -> None:
        """A connection lost after the data was sent: deferred (SMTP's duplicate window)."""
        self.sinks({"127.0.0.2": fakemx.Behaviour(hang_after_data=True),
                    "127.0.0.3": fakemx.Behaviour()})
        env = envelope("a@two.test")
        out = yield self.relay().deliver("two.test", env, env.recipients, MESSAGE)
        self.assertEqual(out[0].code // 100, 4)
