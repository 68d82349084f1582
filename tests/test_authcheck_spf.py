"""SPF (RFC 7208) by pyspf through our resolver (mailsuite.filter.spfcheck): each result, the
processing limits of 4.6.4, DNS failures, the HELO identity and macros. The DNS is a fake
IResolver (tests/authfakes), no sockets; the "thread" is the test's own."""

from __future__ import annotations

from typing import Any

import spf
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns, error
from twisted.trial import unittest

from mailsuite.filter import spfcheck
from mailsuite.mta.dnsquery import DNSQuery, FromThread, TemporaryDNSError
from tests.authfakes import SERVFAIL, TIMEOUT, FailingResolver, a, add, lookups, now, txt
from tests.fakemx import ZoneResolver

IP = "198.51.100.7"


def records(**spf_records: str) -> dict[tuple[str, int], list[Any]]:
    """``sender_example='v=spf1 ...'`` puts the record at sender.example."""
    out: dict[tuple[str, int], list[Any]] = {}
    for name, text in spf_records.items():
        add(out, name.replace("_", "."), txt(text))
    return out


class SPFResultTests(unittest.TestCase):
    def check(self, zone: Any, sender: str = "alice@sender.example", ip: str = IP,
              helo: str = "mx.sender.example", resolver: Any = None) -> spfcheck.SPFResult:
        self.resolver = resolver or ZoneResolver(zone)
        _, lookup = lookups(self.resolver)
        return spfcheck.check(lookup, ip, sender, helo, "mx.example.net")

    def test_pass_fail_softfail_neutral(self) -> None:
        """ip4: matching passes; the all qualifiers give fail (-), softfail (~), neutral (?)."""
        for qualifier, expected in (("-", "fail"), ("~", "softfail"), ("?", "neutral")):
            zone = records(sender_example=f"v=spf1 ip4:198.51.100.0/28 {qualifier}all")
            self.assertEqual(self.check(zone).result, "pass")
            self.assertEqual(self.check(zone, ip="203.0.113.9").result, expected)

    def test_none_without_record(self) -> None:
        """No SPF record (NXDOMAIN, or only other TXT records): none."""
        self.assertEqual(self.check({}).result, "none")
        zone = add({}, "sender.example", txt("google-site-verification=x"))
        self.assertEqual(self.check(zone).result, "none")

    def test_more_than_ten_lookups_permerror(self) -> None:
        """RFC 7208 4.6.4: an 11th DNS-querying term is a permerror; 10 are fine."""
        ten = " ".join(f"a:h{i}.sender.example" for i in range(10))
        zone = records(sender_example=f"v=spf1 {ten} ip4:{IP} -all")
        for i in range(11):
            add(zone, f"h{i}.sender.example", a("192.0.2.1"))
        self.assertEqual(self.check(zone).result, "pass")
        eleven = ten + " a:h10.sender.example"
        zone[("sender.example", 16)] = [txt(f"v=spf1 {eleven} ip4:{IP} -all")]
        result = self.check(zone)
        self.assertEqual(result.result, "permerror")
        self.assertIn("Too many DNS lookups", result.explanation)

    def test_include_chain_counts(self) -> None:
        """include: terms count too (and the nested record's): 11 nested includes fail."""
        zone = records(sender_example="v=spf1 include:i0.sender.example -all")
        for i in range(11):
            add(zone, f"i{i}.sender.example", txt(f"v=spf1 include:i{i + 1}.sender.example"))
        add(zone, "i11.sender.example", txt(f"v=spf1 ip4:{IP}"))
        self.assertEqual(self.check(zone).result, "permerror")

    def test_more_than_two_void_lookups_permerror(self) -> None:
        """4.6.4: a third look-up that answers nothing (NXDOMAIN or no records) is a
        permerror; two are tolerated."""
        two = "a:v1.sender.example a:v2.sender.example"
        zone = records(sender_example=f"v=spf1 {two} ip4:{IP} -all")
        self.assertEqual(self.check(zone).result, "pass")
        zone = records(sender_example=f"v=spf1 {two} a:v3.sender.example ip4:{IP} -all")
        result = self.check(zone)
        self.assertEqual(result.result, "permerror")
        self.assertIn("Void lookup limit", result.explanation)

    def test_servfail_and_timeout_temperror(self) -> None:
        """SERVFAIL or a timeout on the record's query: temperror (4.4), not none."""
        zone = records(sender_example=f"v=spf1 ip4:{IP} -all")
        for exc in (SERVFAIL, TIMEOUT):
            resolver = FailingResolver(zone, {"sender.example"}, exc)
            self.assertEqual(self.check(zone, resolver=resolver).result, "temperror")

    def test_overall_time_limit(self) -> None:
        """4.6.4: the whole evaluation has a time limit (``querytime``, our dns_timeout):
        answers that come slowly (7 s each here) end in temperror once the 20 s are spent,
        before the record's last include is asked; each query gets at most what is left."""
        zone = records(sender_example="v=spf1 include:a.example include:b.example"
                       " include:c.example -all",
                       a_example="v=spf1 -all", b_example="v=spf1 -all",
                       c_example=f"v=spf1 ip4:{IP}")
        clock = [0.0]
        timeouts: list[float] = []
        _, inner = lookups(ZoneResolver(zone))

        def slow(name: str, qtype: str, timeout: float) -> Any:
            timeouts.append(timeout)
            clock[0] += 7.0
            return inner(name, qtype, timeout)
        result = spfcheck.check(slow, IP, "alice@sender.example", "h.example", "me",
                                clock=lambda: clock[0])
        self.assertEqual(result.result, "temperror")
        self.assertEqual(timeouts, [20.0, 13.0, 6.0])  # c.example never asked

    def test_temperror_in_an_include(self) -> None:
        """A failing query deeper in the evaluation (an include's record) is a temperror."""
        zone = records(sender_example="v=spf1 include:other.example -all",
                       other_example=f"v=spf1 ip4:{IP}")
        resolver = FailingResolver(zone, {"other.example"}, SERVFAIL)
        self.assertEqual(self.check(zone, resolver=resolver).result, "temperror")

    def test_helo_identity(self) -> None:
        """HELO is checked as postmaster@HELO (2.3); a HELO that is an address literal or
        one label is not checked (None)."""
        zone = records(mx_sender_example="v=spf1 a -all")
        add(zone, "mx.sender.example", a(IP))
        _, lookup = lookups(ZoneResolver(zone))
        got = spfcheck.check_helo(lookup, IP, "mx.sender.example", "me")
        assert got is not None
        self.assertEqual((got.result, got.identity), ("pass", "postmaster@mx.sender.example"))
        got = spfcheck.check_helo(lookup, "203.0.113.9", "mx.sender.example", "me")
        self.assertEqual(got.result if got else None, "fail")
        for name in ("[198.51.100.7]", "localhost", IP, ""):
            self.assertIsNone(spfcheck.check_helo(lookup, IP, name, "me"))

    def test_null_sender_is_postmaster_at_helo(self) -> None:
        """MAIL FROM:<> is checked as postmaster@HELO (2.4)."""
        zone = records(mx_sender_example=f"v=spf1 ip4:{IP} -all")
        result = self.check(zone, sender="")
        self.assertEqual((result.result, result.identity),
                         ("pass", "postmaster@mx.sender.example"))

    def test_macros(self) -> None:
        """Macros (7): %{l} (local part) and %{i} (client IP) expand in exists:."""
        zone = records(sender_example="v=spf1 exists:%{l}.users.sender.example"
                       " exists:%{i}.ip.sender.example -all")
        add(zone, "alice.users.sender.example", a("127.0.0.2"))
        add(zone, "203.0.113.5.ip.sender.example", a("127.0.0.2"))
        self.assertEqual(self.check(zone, sender="alice@sender.example", ip="192.0.2.9").result,
                         "pass")
        self.assertIn(("alice.users.sender.example", 1), self.resolver.queries)
        self.assertEqual(self.check(zone, sender="bob@sender.example", ip="203.0.113.5").result,
                         "pass")
        self.assertEqual(self.check(zone, sender="bob@sender.example", ip="192.0.2.9").result,
                         "fail")

    def test_mx_and_redirect(self) -> None:
        """mx: looks up the MX hosts' addresses; redirect= takes another domain's record."""
        zone = records(sender_example="v=spf1 redirect=_spf.sender.example")
        add(zone, "_spf.sender.example", txt("v=spf1 mx -all"))
        zone[("_spf.sender.example", dns.MX)] = [dns.Record_MX(10, b"mx1.sender.example")]
        add(zone, "mx1.sender.example", a(IP))
        self.assertEqual(self.check(zone).result, "pass")

    def test_no_lookup_function_is_temperror(self) -> None:
        """pyspf's DNSLookup, once ours, never does DNS of its own: a thread that has no
        lookup function set gets a TempError."""
        spfcheck._install()
        self.assertIs(spf.DNSLookup, spfcheck._lookup)
        self.assertEqual(spf.query(i=IP, s="a@sender.example", h="x.example").check()[0],
                         "temperror")


class DNSQueryTests(unittest.TestCase):
    def test_query_bounded_by_its_timeout(self) -> None:
        """A query the resolver never answers fails with TemporaryDNSError after its timeout
        on the reactor's clock (the thread waiting for it is freed)."""
        class Silent:
            def lookupText(self, name: bytes, timeout: Any = None) -> Any:
                return defer.Deferred()
        clock = Clock()
        d = DNSQuery(Silent(), clock).lookup("sender.example", "TXT", timeout=5)
        self.assertNoResult(d)
        clock.advance(5)
        self.failureResultOf(d, TemporaryDNSError)

    def test_nxdomain_and_nodata_are_empty(self) -> None:
        """NXDOMAIN and a name without records of the type both answer []."""
        zone = add({}, "sender.example", a(IP))
        query, _ = lookups(ZoneResolver(zone))
        self.assertEqual(self.successResultOf(query.lookup("nope.example", "TXT")), [])
        self.assertEqual(self.successResultOf(query.lookup("sender.example", "TXT")), [])
        self.assertEqual(self.successResultOf(query.lookup("sender.example", "A")),
                         [("sender.example", "A", IP)])

    def test_txt_strings_joined(self) -> None:
        """A TXT record of several strings is one text (RFC 7208 3.3)."""
        zone = add({}, "sender.example", txt("v=spf1 ", "-all"))
        query, _ = lookups(ZoneResolver(zone))
        self.assertEqual(self.successResultOf(query.txt("sender.example")), [b"v=spf1 -all"])

    def test_bad_names_answer_nothing(self) -> None:
        """A name DNS cannot carry (empty or over-long label) is not asked: []."""
        resolver = ZoneResolver({})
        query, _ = lookups(resolver)
        for name in ("a..example", "x" * 64 + ".example", ""):
            self.assertEqual(self.successResultOf(query.lookup(name, "A")), [])
        self.assertEqual(resolver.queries, [])

    def test_cache_keeps_answers_for_their_ttl(self) -> None:
        """With ``cache`` an answer is reused until its TTL (60 s here) has passed, then
        asked again; NXDOMAIN is not kept."""
        resolver = ZoneResolver(add({}, "sender.example", txt("v=spf1 -all")))
        clock = Clock()
        query = DNSQuery(resolver, clock, cache=True)
        for _ in range(3):
            self.assertEqual(self.successResultOf(query.txt("sender.example")),
                             [b"v=spf1 -all"])
            self.successResultOf(query.txt("nope.example"))
        self.assertEqual(resolver.queries.count(("sender.example", dns.TXT)), 1)
        self.assertEqual(resolver.queries.count(("nope.example", dns.TXT)), 3)
        clock.advance(61)
        self.successResultOf(query.txt("sender.example"))
        self.assertEqual(resolver.queries.count(("sender.example", dns.TXT)), 2)

    def test_thread_reads_kept_answers_without_the_reactor(self) -> None:
        """A worker thread's look-up of a kept answer does not go through the reactor
        (``call``, blockingCallFromThread in the server, is not used)."""
        resolver = ZoneResolver(add({}, "sender.example", txt("v=spf1 ", "-all")))
        query = DNSQuery(resolver, Clock(), cache=True)
        calls: list[Any] = []

        def call(f: Any, *args: Any) -> Any:
            calls.append(args)
            return now(f, *args)
        bridge = FromThread(query, call=call)
        for _ in range(3):
            self.assertEqual(bridge.txt("sender.example"), [b"v=spf1 -all"])
            self.assertEqual(bridge("sender.example", "TXT")[0][2], [b"v=spf1 ", b"-all"])
        self.assertEqual(len(calls), 1)

    def test_negative_answers_kept_for_the_soa_minimum(self) -> None:
        """No records (NODATA) and NXDOMAIN are kept for the SOA's negative TTL (RFC 2308:
        the smaller of its TTL and MINIMUM, here 30 s), then asked again; without an SOA in
        the answer they are not kept."""
        soa = dns.RRHeader(b"sender.example", dns.SOA, ttl=3600, payload=dns.Record_SOA(
            mname=b"ns", rname=b"root", minimum=30))

        class Negative:
            asked = 0

            def lookupText(self, name: bytes, timeout: Any = None) -> Any:
                self.asked += 1
                if name == b"nodata.example":
                    return defer.succeed(([], [soa], []))
                message = dns.Message(rCode=dns.ENAME)
                message.authority = [soa]
                return defer.fail(error.DomainError(message))
        resolver, clock = Negative(), Clock()
        query = DNSQuery(resolver, clock, cache=True)
        for _ in range(3):
            self.assertEqual(self.successResultOf(query.txt("nodata.example")), [])
            self.assertEqual(self.successResultOf(query.txt("nxdomain.example")), [])
        self.assertEqual(resolver.asked, 2)
        clock.advance(31)
        self.successResultOf(query.txt("nodata.example"))
        self.assertEqual(resolver.asked, 3)
