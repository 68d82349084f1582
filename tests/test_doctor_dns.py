"""``mailsuite doctor``'s DNS checks (mailsuite/doctor/hostdns.py, records.py) against a zone
in memory (tests.fakemx.ZoneResolver) and injected host addresses: each verdict, and each fix
naming the record to publish."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.names import dns
from twisted.trial import unittest

from mailsuite.dkimcmd import dns_record, new_key
from mailsuite.dkimconf import DkimConfig, DkimEntry, parse_key, txt_record
from mailsuite.doctor import hostdns, records
from mailsuite.doctor.context import Context
from mailsuite.doctor.resolve import Lookups
from tests.configs import real_config
from tests.fakemx import ZoneResolver

# example.com's address of old: global (documentation ranges count as private)
HOST, DOMAIN, ADDRESS = "mail.example.com", "example.com", "93.184.216.34"


def good_zone() -> dict[tuple[str, int], list[Any]]:
    return {
        (HOST, dns.A): [dns.Record_A(ADDRESS)],
        (DOMAIN, dns.MX): [dns.Record_MX(10, HOST.encode())],
        (DOMAIN, dns.TXT): [dns.Record_TXT(b"v=spf1 mx -all"), dns.Record_TXT(b"google-site")],
        ("_dmarc." + DOMAIN, dns.TXT): [dns.Record_TXT(b"v=DMARC1; p=reject")],
        ("34.216.184.93.in-addr.arpa", dns.PTR): [dns.Record_PTR(HOST.encode())],
    }


def context(zone: dict[tuple[str, int], list[Any]], local: list[str] | None = None,
            clock: Any = None, **mail: Any) -> Context:
    cfg = real_config(HOST, mail={"mydomain": DOMAIN, **mail})
    clock = task.Clock() if clock is None else clock
    lookups = Lookups(ZoneResolver(zone), clock)
    return Context(cfg, lookups, clock, [ADDRESS, "127.0.0.1"] if local is None else local)


class Hanging:
    """A resolver that never answers (a dead server)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: defer.Deferred()


class HostTests(unittest.TestCase):
    def verdicts(self, ctx: Context) -> dict[str, Any]:
        return {r.check: r for r in self.successResultOf(hostdns.check_host(ctx))}

    def test_good_zone_passes(self) -> None:
        """A FQDN whose A is this host's, the MX naming it and the PTR naming it back: all ok,
        and ctx.published holds the address for the SPF check."""
        ctx = context(good_zone())
        got = self.verdicts(ctx)
        self.assertEqual({c: r.status for c, r in got.items()},
                         {"myhostname": "ok", f"A/AAAA {HOST}": "ok", f"MX {DOMAIN}": "ok",
                          f"PTR {ADDRESS}": "ok"})
        self.assertEqual(ctx.published, [ADDRESS])

    def test_hostname_not_qualified(self) -> None:
        """localhost and a name without a dot FAIL, with the key to set."""
        self.assertEqual(hostdns.fqdn("localhost").status, "FAIL")
        r = hostdns.fqdn("mail")
        self.assertEqual(r.status, "FAIL")
        self.assertIn("myhostname = mail.YOURDOMAIN", r.fix)

    def test_address_of_another_host(self) -> None:
        """An A record that is not an address of this host FAILs, the fix the A record with
        this host's public address."""
        zone = good_zone()
        zone[(HOST, dns.A)] = [dns.Record_A("198.51.100.7")]
        r = self.verdicts(context(zone))[f"A/AAAA {HOST}"]
        self.assertEqual(r.status, "FAIL")
        self.assertIn("none is an address of this host", r.found)
        self.assertEqual(r.fix, f"publish {HOST}. IN A {ADDRESS}")

    def test_behind_nat_warns(self) -> None:
        """A host with private addresses only (NAT): a public A that is not local is a warning
        about port forwarding, not a FAIL."""
        zone = good_zone()
        r = self.verdicts(context(zone, local=["10.0.0.5"]))[f"A/AAAA {HOST}"]
        self.assertEqual(r.status, "warn")
        self.assertIn("NAT", r.found)

    def test_no_address(self) -> None:
        zone = good_zone()
        del zone[(HOST, dns.A)]
        zone[(HOST, dns.MX)] = []  # the name exists, without A
        r = self.verdicts(context(zone))[f"A/AAAA {HOST}"]
        self.assertEqual((r.status, r.fix), ("FAIL", f"publish {HOST}. IN A {ADDRESS}"))

    def test_mx_to_another_host(self) -> None:
        """mydomain's MX naming another host FAILs, the fix the MX record to publish."""
        zone = good_zone()
        zone[(DOMAIN, dns.MX)] = [dns.Record_MX(10, b"mx.elsewhere.example")]
        r = self.verdicts(context(zone))[f"MX {DOMAIN}"]
        self.assertEqual(r.status, "FAIL")
        self.assertIn("mx.elsewhere.example", r.found)
        self.assertIn(f"{DOMAIN}. IN MX 10 {HOST}.", r.fix)

    def test_null_mx_and_missing_mx(self) -> None:
        self.assertIn("null MX", hostdns.mx_verdict(DOMAIN, HOST, [(0, "")]).found)
        self.assertEqual(hostdns.mx_verdict(DOMAIN, HOST, []).fix,
                         f"publish {DOMAIN}. IN MX 10 {HOST}.")

    def test_ptr_mismatch_and_missing(self) -> None:
        """A PTR naming another name, or none, FAILs; the fix says who sets reverse DNS."""
        zone = good_zone()
        zone[("34.216.184.93.in-addr.arpa", dns.PTR)] = [dns.Record_PTR(b"host-34.isp.example")]
        r = self.verdicts(context(zone))[f"PTR {ADDRESS}"]
        self.assertEqual(r.status, "FAIL")
        self.assertIn("host-34.isp.example, not mail.example.com", r.found)
        self.assertIn(f"set its reverse DNS (PTR) to {HOST}", r.fix)
        del zone[("34.216.184.93.in-addr.arpa", dns.PTR)]
        r = self.verdicts(context(zone))[f"PTR {ADDRESS}"]
        self.assertIn("no PTR record", r.found)

    def test_resolver_timeout_is_a_verdict(self) -> None:
        """A resolver that never answers: a FAIL saying so after the look-up timeout, not a
        hang or a traceback."""
        clock = task.Clock()
        ctx = context({}, clock=clock)
        ctx.lookups = Lookups(Hanging(), clock, timeout=5)
        d = hostdns.check_host(ctx)
        for _ in range(4):
            clock.advance(5)
        got = {r.check: r for r in self.successResultOf(d)}
        self.assertIn("no answer from the resolver", got[f"A/AAAA {HOST}"].found)
        self.assertIn("no answer from the resolver", got[f"MX {DOMAIN}"].found)


class SpfTests(unittest.TestCase):
    """pyspf runs in a thread and looks up through the reactor: these run on the real one."""

    timeout = 30

    @defer.inlineCallbacks
    def spf(self, zone: dict[tuple[str, int], list[Any]], **mail: Any) -> Any:
        ctx = context(zone, clock=reactor, **mail)
        ctx.published = [ADDRESS]
        return (yield records.check_spf(ctx, DOMAIN))

    @defer.inlineCallbacks
    def test_mx_record_authorizes(self) -> None:
        """``v=spf1 mx -all`` with the MX host on our address: pyspf says pass, ok."""
        r = yield self.spf(good_zone())
        self.assertEqual(r.status, "ok", r)
        self.assertIn(ADDRESS, r.found)

    @defer.inlineCallbacks
    def test_include_is_followed(self) -> None:
        """An include: of another domain's record is evaluated (RFC 7208 5.2)."""
        zone = good_zone()
        zone[(DOMAIN, dns.TXT)] = [dns.Record_TXT(b"v=spf1 include:_spf.example.net -all")]
        zone[("_spf.example.net", dns.TXT)] = [dns.Record_TXT(b"v=spf1 ip4:93.184.216.0/24 -all")]
        r = yield self.spf(zone)
        self.assertEqual(r.status, "ok", r)

    @defer.inlineCallbacks
    def test_missing_suggests_mx(self) -> None:
        """No v=spf1 record: FAIL, and the record to publish is ``v=spf1 mx -all`` when the MX
        host has our address."""
        zone = good_zone()
        zone[(DOMAIN, dns.TXT)] = [dns.Record_TXT(b"google-site-verification=x")]
        r = yield self.spf(zone)
        self.assertEqual(r.status, "FAIL")
        self.assertEqual(r.fix, f'publish {DOMAIN}. IN TXT "v=spf1 mx -all"')

    @defer.inlineCallbacks
    def test_missing_suggests_address(self) -> None:
        """...and ``ip4:OUR-ADDRESS`` when the MX is elsewhere."""
        zone = good_zone()
        del zone[(DOMAIN, dns.TXT)]
        zone[(DOMAIN, dns.MX)] = [dns.Record_MX(10, b"mx.elsewhere.example")]
        r = yield self.spf(zone)
        self.assertEqual(r.fix, f'publish {DOMAIN}. IN TXT "v=spf1 ip4:{ADDRESS} -all"')

    @defer.inlineCallbacks
    def test_not_authorizing(self) -> None:
        """A record that fails our address: FAIL naming the result, the fix the same record
        with our address before its ``-all``."""
        zone = good_zone()
        zone[(DOMAIN, dns.TXT)] = [dns.Record_TXT(b"v=spf1 ip4:198.51.100.9 -all")]
        r = yield self.spf(zone)
        self.assertEqual(r.status, "FAIL")
        self.assertIn(f"gives fail for {ADDRESS}", r.found)
        self.assertEqual(r.fix, f'publish {DOMAIN}. IN TXT "v=spf1 ip4:198.51.100.9'
                         f' ip4:{ADDRESS} -all"')

    @defer.inlineCallbacks
    def test_two_records(self) -> None:
        """Two v=spf1 records are a permerror for everyone (RFC 7208 4.5)."""
        zone = good_zone()
        zone[(DOMAIN, dns.TXT)] = [dns.Record_TXT(b"v=spf1 mx -all"),
                                   dns.Record_TXT(b"v=spf1 a -all")]
        r = yield self.spf(zone)
        self.assertEqual(r.status, "FAIL")
        self.assertIn("2 v=spf1 records", r.found)

    @defer.inlineCallbacks
    def test_relayhost_addresses_are_evaluated(self) -> None:
        """With a relayhost, the relay's addresses are the ones SPF must authorize."""
        zone = good_zone()
        zone[("smtp.provider.example", dns.A)] = [dns.Record_A("192.0.2.25")]
        r = yield self.spf(zone, relayhost="[smtp.provider.example]:587")
        self.assertEqual(r.status, "FAIL")
        self.assertIn("gives fail for 192.0.2.25", r.found)
        self.assertIn("relayhost", r.found)

    def test_amended(self) -> None:
        """Our mechanisms go before the last all (any qualifier) or the redirect."""
        self.assertEqual(records.amended("v=spf1 mx ~all", ["192.0.2.1", "2001:db8::1"]),
                         "v=spf1 mx ip4:192.0.2.1 ip6:2001:db8::1 ~all")
        self.assertEqual(records.amended("v=spf1 redirect=_spf.example.com", ["192.0.2.1"]),
                         "v=spf1 ip4:192.0.2.1 redirect=_spf.example.com")
        self.assertEqual(records.amended("v=spf1 mx", ["192.0.2.1"]), "v=spf1 mx ip4:192.0.2.1")


class DkimDmarcTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ms-doctor-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "example.com.key")
        pem = new_key(False, 1024)
        with open(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(pem)
        self.key = parse_key(pem)
        self.entry = DkimEntry("sel", self.path)
        self.name = f"sel._domainkey.{DOMAIN}"

    def dkim(self, zone: dict[tuple[str, int], list[Any]], entry: Any = None) -> Any:
        ctx = context(zone)
        return self.successResultOf(records.check_dkim(ctx, DOMAIN, entry or self.entry))

    def test_published_key_matches(self) -> None:
        """The record keygen prints, split into 255-character strings: ok."""
        text = txt_record(self.key).encode()
        zone = {(self.name, dns.TXT): [dns.Record_TXT(text[:200], text[200:])]}
        self.assertEqual(self.dkim(zone).status, "ok")

    def test_other_key_published(self) -> None:
        """p= of another key: FAIL, the fix the record of the configured key (keygen's
        format)."""
        other = parse_key(new_key(False, 1024))
        zone = {(self.name, dns.TXT): [dns.Record_TXT(txt_record(other).encode())]}
        r = self.dkim(zone)
        self.assertEqual(r.status, "FAIL")
        self.assertIn("not the public key of", r.found)
        self.assertEqual(r.fix, f"publish {dns_record('sel', DOMAIN, txt_record(self.key))}")

    def test_missing_and_revoked(self) -> None:
        self.assertIn("no record", self.dkim({}).found)
        zone = {(self.name, dns.TXT): [dns.Record_TXT(b"v=DKIM1; k=rsa; p=")]}
        self.assertIn("revoked", self.dkim(zone).found)

    def test_unreadable_key(self) -> None:
        """A key file that is gone: FAIL naming it, the fix keygen's command."""
        r = self.dkim({}, DkimEntry("sel", os.path.join(self.dir, "gone.key")))
        self.assertEqual(r.status, "FAIL")
        self.assertIn("mailsuite dkim keygen example.com --selector sel", r.fix)

    def dmarc(self, zone: dict[tuple[str, int], list[Any]], domain: str = DOMAIN) -> Any:
        return self.successResultOf(records.check_dmarc(context(zone), domain))

    def test_dmarc(self) -> None:
        """A record with p=: ok; none: FAIL with the suggested record; two: FAIL; a bad p=:
        FAIL; a subdomain finds its parent's record."""
        good = {("_dmarc.example.com", dns.TXT): [dns.Record_TXT(b"v=DMARC1; p=none")]}
        self.assertEqual(self.dmarc(good).status, "ok")
        self.assertEqual(self.dmarc(good, "news.example.com").status, "ok")
        r = self.dmarc({})
        self.assertEqual((r.status, r.fix), ("FAIL", 'publish _dmarc.example.com. IN TXT'
                         ' "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"'))
        two = {("_dmarc.example.com", dns.TXT): [dns.Record_TXT(b"v=DMARC1; p=none")] * 2}
        self.assertIn("2 v=DMARC1 records", self.dmarc(two).found)
        bad = {("_dmarc.example.com", dns.TXT): [dns.Record_TXT(b"v=DMARC1; rua=x")]}
        self.assertIn("p= missing", self.dmarc(bad).found)

    @defer.inlineCallbacks
    def test_every_dkim_domain_is_checked(self) -> Any:
        """check_records covers SPF and DMARC of mydomain and of each [dkim] domain, and the
        DKIM key of each line; with no [dkim] section, a warning says mail is unsigned."""
        ctx = context(good_zone(), clock=reactor)  # pyspf runs in a thread
        ctx.published = [ADDRESS]
        got = yield records.check_records(ctx)
        self.assertEqual(got[0].check, "DKIM")
        self.assertEqual(got[0].status, "warn")
        cfg = ctx.cfg
        ctx.cfg = type(cfg)(**{**cfg.__dict__, "dkim": DkimConfig({"other.example": self.entry})})
        checks = [r.check for r in (yield records.check_records(ctx))]
        self.assertEqual(checks, ["SPF example.com", "SPF other.example",
                                  "DKIM sel._domainkey.other.example", "DMARC example.com",
                                  "DMARC other.example"])


class AutoconfigNameTests(unittest.TestCase):
    def test_names_lead_here(self) -> None:
        """With an autoconfig site on, autoconfig.DOMAIN and autodiscover.DOMAIN of each of
        our domains must lead to this host: one missing FAILs with the CNAME to publish; off,
        nothing is checked."""
        zone = good_zone()
        zone[("autoconfig.example.com", dns.A)] = [dns.Record_A(ADDRESS)]
        ctx = context(zone)
        self.assertEqual(self.successResultOf(hostdns.check_autoconfig_names(ctx)), [])
        cfg = real_config(HOST, mail={"mydomain": DOMAIN, "mydestination": [DOMAIN]},
                          listen={"autoconfig": 8080})
        ctx.cfg = cfg
        got = {r.check: r for r in self.successResultOf(hostdns.check_autoconfig_names(ctx))}
        self.assertEqual(got["A/AAAA autoconfig.example.com"].status, "ok")
        r = got["A/AAAA autodiscover.example.com"]
        self.assertEqual((r.status, r.fix),
                         ("FAIL", f"publish autodiscover.example.com. IN CNAME {HOST}."))
