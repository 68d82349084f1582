"""Tests for mailsuite.mta.relay (SMTP client) and mailsuite.mta.dns (MX look-ups), against a
twisted.names server and receiving SMTP servers on 127.0.0.x (tests/fakemx.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.names import dns
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver, PermanentDNSError
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from mailsuite.mta.relay import Relay, to_wire
from tests import fakemx

MESSAGE = b"Subject: relay test\n\nline one\n.leading dot\n..two dots\n.\nend\n"


class WireTests(unittest.TestCase):
    def test_dot_stuffing_and_crlf(self) -> None:
        """Every line starting with '.' gets one more; LF -> CRLF; ends with CRLF.CRLF."""
        self.assertEqual(
            to_wire(b"a\n.b\n..c\n.\nd\n"), b"a\r\n..b\r\n...c\r\n..\r\nd\r\n.\r\n")

    def test_first_line_and_no_final_newline(self) -> None:
        """A dot on the very first line is stuffed; a missing final newline is added."""
        self.assertEqual(to_wire(b".x"), b"..x\r\n.\r\n")

    def test_chunk_boundary(self) -> None:
        """A dot line right after 16/64 KiB of data is stuffed too (Twisted's client misses it)."""
        for size in (16384, 65536):
            data = b"x" * (size - 1) + b"\n.\n"
            self.assertTrue(to_wire(data).endswith(b"\r\n..\r\n.\r\n"))


class FakeResolver:
    """An IResolver answering from a dict, or failing with a given exception."""

    def __init__(self, records: dict[tuple[str, int], list[Any]], fail: Exception | None = None):
        self.zone = fakemx.ZoneResolver(records)
        self.fail = fail

    def lookupMailExchange(self, name: bytes) -> Any:
        if self.fail:
            return defer.fail(self.fail)
        return self.zone.lookupMailExchange(name)

    def lookupAddress(self, name: bytes) -> Any:
        return self.zone.lookupAddress(name)

    def lookupIPV6Address(self, name: bytes) -> Any:
        return self.zone.lookupIPV6Address(name)


class MXTests(unittest.TestCase):
    def resolver(self, mx: dict[str, Any], a: dict[str, str], fail: Exception | None = None) -> MXResolver:
        r = MXResolver(resolver=FakeResolver(fakemx.zone(mx, a), fail))
        r.shuffle = lambda names: None
        return r

    def test_preference_order(self) -> None:
        """MX hosts come lowest preference first, each with its addresses."""
        r = self.resolver({"x.test": [(20, "b.x.test"), (10, "a.x.test")]},
                          {"a.x.test": "127.0.0.2", "b.x.test": "127.0.0.3"})
        hosts = self.successResultOf(r.hosts("x.test"))
        self.assertEqual([(h.name, h.addresses) for h in hosts],
                         [("a.x.test", ("127.0.0.2",)), ("b.x.test", ("127.0.0.3",))])

    def test_null_mx(self) -> None:
        """MX 0 . (RFC 7505): permanent, 5.1.10."""
        r = self.resolver({"x.test": [(0, ".")]}, {})
        f = self.failureResultOf(r.hosts("x.test"), PermanentDNSError)
        self.assertEqual(f.value.dsn, "5.1.10")

    def test_a_fallback(self) -> None:
        """No MX records: the domain's own A record."""
        r = self.resolver({}, {"x.test": "127.0.0.4"})
        hosts = self.successResultOf(r.hosts("x.test"))
        self.assertEqual(hosts[0].addresses, ("127.0.0.4",))

    def test_nxdomain_is_permanent(self) -> None:
        """A domain that does not exist: 5.1.2 (bounce)."""
        r = self.resolver({}, {})
        self.assertEqual(self.failureResultOf(r.hosts("nope.test")).value.dsn, "5.1.2")

    def test_timeout_is_temporary(self) -> None:
        """A DNS timeout: 4.4.3 (defer)."""
        from twisted.names import error
        r = self.resolver({}, {}, fail=error.DNSQueryTimeoutError("x"))
        self.assertEqual(self.failureResultOf(r.hosts("x.test")).value.dsn, "4.4.3")

    def test_address_literal(self) -> None:
        """[127.0.0.9] needs no look-up."""
        r = self.resolver({}, {})
        self.assertEqual(self.successResultOf(r.hosts("[127.0.0.9]"))[0].addresses, ("127.0.0.9",))


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
        """relayhost [host]:port skips MX; AUTH PLAIN with the password map, inside TLS."""
        sinks = self.sinks({"127.0.0.4": fakemx.Behaviour(starttls=True, auth=("u", "p w"))})
        hop = f"[127.0.0.4]:{self.port}"
        relay = self.relay(relayhost=hop, credentials={hop: ("u", "p w")})
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


__all__ = ["dns"]
