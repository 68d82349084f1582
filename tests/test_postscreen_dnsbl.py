"""postscreen's weighted DNSBL test at port 25's front door (smtp/postscreen.py, dnsbl.py):
scores, threshold, the three actions, the pass cache, answers after the wait, a dead DNSBL.
Clock-driven sessions over a StringTransport, the DNS a fake resolver."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.names import dns

from mailsuite.smtp.dnsbl import Blocklists, parse_sites
from mailsuite.smtp.postscreen import FrontDoor
from tests.fakemx import ZoneResolver
from tests.test_postscreen import GREETING, STRANGER, TEASER, ScreenCase
from tests.test_restrictions import DeadResolver

ZONE = {("5.113.0.203.zen.example", dns.A): [dns.Record_A("127.0.0.4")],
        ("5.113.0.203.b.example", dns.A): [dns.Record_A("127.0.0.20")]}


class SlowResolver(ZoneResolver):
    """Answers only when ``release()`` is called."""

    def __init__(self, records: Any) -> None:
        super().__init__(records)
        self.waiting: list[tuple[defer.Deferred[Any], Any]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((d, super()._lookup(name, cls, type, timeout)))
        return d

    def release(self) -> None:
        for d, answer in self.waiting:
            answer.chainDeferred(d)
        self.waiting = []


class DNSBLTests(ScreenCase):
    resolver: Any = None

    def configure(self, **mail: Any) -> None:
        sites = mail.pop("sites", "zen.example*3, b.example=127.0.0.[2..11]*2")
        mail.setdefault("postscreen_dnsbl_sites", parse_sites(sites))
        config = self.factory.config
        self.factory.config = replace(config, mail=replace(config.mail, **mail))
        resolver = self.resolver or ZoneResolver(dict(ZONE))
        lists = Blocklists(lambda: resolver, self.clock, lambda t: self.maillog.write("smtpd", t))
        self.factory.front_door = FrontDoor(
            self.factory.config.mail, self.factory.hostname, self.maillog, self.clock, lists)

    def session(self) -> tuple[Any, Any]:
        proto, transport = self.connect()
        self.assertEqual(self.take(transport), TEASER)
        self.clock.advance(6)
        return proto, transport

    def test_ignore_logs_rank_and_goes_on(self) -> None:
        """Postfix's default action: logged, greeted, mail taken; not cached as a pass
        (b.example's 127.0.0.20 is outside its filter: rank 3, not 5)."""
        proto, transport = self.session()
        self.assertEqual(self.take(transport), GREETING)
        proto.dataReceived(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n"
                           b"RCPT TO:<boss@mail.example.com>\r\n")
        self.assertTrue(self.take(transport).endswith(b"250 2.1.5 Ok\r\n"))
        self.assertEqual(self.screen_lines()[1:], [f"DNSBL rank 3 for [{STRANGER}]:4321"])
        _, again = self.connect(port=4322)
        self.assertEqual(self.take(again), TEASER)

    def test_enforce_refuses_rcpt(self) -> None:
        self.configure(postscreen_dnsbl_action="enforce", postscreen_dnsbl_threshold=3)
        proto, transport = self.session()
        self.take(transport)
        proto.dataReceived(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n"
                           b"RCPT TO:<boss@mail.example.com>\r\n")
        reply = (f"550 5.7.1 Service unavailable; client [{STRANGER}] blocked using"
                 " zen.example")
        self.assertTrue(self.take(transport).endswith(f"{reply}\r\n".encode()))
        self.assertIn(f"NOQUEUE: reject: RCPT from [{STRANGER}]:4321: {reply}; from=<a@b.example>,"
                      " to=<boss@mail.example.com>, proto=ESMTP, helo=<c.example>",
                      self.screen_lines())

    def test_drop_and_threshold(self) -> None:
        """drop: 521 and the connection closes; a score under the threshold passes (and is
        cached)."""
        self.configure(postscreen_dnsbl_action="drop")
        _, transport = self.session()
        self.assertEqual(self.take(transport), b"521 5.7.1 Service unavailable; client"
                         b" [203.0.113.5] blocked using zen.example\r\n")
        self.assertTrue(transport.disconnecting)
        self.configure(postscreen_dnsbl_action="drop", postscreen_dnsbl_threshold=4)
        _, transport = self.session()
        self.assertEqual(self.take(transport), GREETING)
        self.assertIn(f"PASS NEW [{STRANGER}]:4321", self.screen_lines())

    def test_filter_weights_add_up(self) -> None:
        self.configure(sites="zen.example*3, b.example=127.0.0.[2..11;20]*2",
                       postscreen_dnsbl_action="drop", postscreen_dnsbl_threshold=5)
        _, transport = self.session()
        self.assertTrue(self.take(transport).startswith(b"521 "))
        self.assertIn(f"DNSBL rank 5 for [{STRANGER}]:4321", self.screen_lines())

    def test_late_answer_and_dead_dnsbl_count_nothing(self) -> None:
        """An answer after postscreen_greet_wait does not count; a DNSBL that times out lists
        nobody."""
        slow = SlowResolver(dict(ZONE))
        self.resolver = slow
        self.configure(postscreen_dnsbl_action="drop")
        _, transport = self.session()
        slow.release()
        self.assertEqual(self.take(transport), GREETING)
        self.resolver = DeadResolver({})
        self.configure(postscreen_dnsbl_action="drop")
        _, transport = self.session()
        self.assertEqual(self.take(transport), GREETING)
