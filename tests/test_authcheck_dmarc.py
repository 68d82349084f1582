"""DMARC (RFC 7489, mailsuite.filter.dmarc): policy discovery at the From: domain then the
organizational domain (Public Suffix List), identifier alignment relaxed/strict, p= sp= pct=,
and the errors. The DNS is a fake IResolver (tests/authfakes), no sockets."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from mailsuite.filter import dmarc
from tests.authfakes import SERVFAIL, FailingResolver, add, lookups, txt
from tests.fakemx import ZoneResolver


class DMARCTests(unittest.TestCase):
    def evaluate(self, zone: Any, domain: str, dkim: list[str], spf: str | None,
                 random: float = 0.0, resolver: Any = None) -> dmarc.DMARCResult:
        self.resolver = resolver or ZoneResolver(zone)
        query, _ = lookups(self.resolver)
        check = dmarc.DMARCCheck(query, random=lambda: random)
        return self.successResultOf(check.evaluate(domain, dkim, spf))

    def record(self, text: str, at: str = "example.com") -> dict[Any, Any]:
        return add({}, f"_dmarc.{at}", txt(text))

    def test_relaxed_alignment(self) -> None:
        """Relaxed (the default): a DKIM d= or SPF domain of the same organizational domain
        aligns (mail.example.com with news.example.com); another domain does not."""
        zone = self.record("v=DMARC1; p=reject")
        got = self.evaluate(zone, "news.example.com", ["mail.example.com"], None)
        self.assertEqual((got.result, got.policy), ("pass", "reject"))
        got = self.evaluate(zone, "example.com", [], "bounce.example.com")
        self.assertEqual(got.result, "pass")
        got = self.evaluate(zone, "example.com", ["example.net"], "example.org")
        self.assertEqual((got.result, got.disposition), ("fail", "reject"))

    def test_strict_alignment(self) -> None:
        """adkim=s / aspf=s: only the very same name aligns."""
        zone = self.record("v=DMARC1; p=quarantine; adkim=s; aspf=s")
        self.assertEqual(self.evaluate(zone, "example.com", ["mail.example.com"], None).result,
                         "fail")
        self.assertEqual(self.evaluate(zone, "example.com", ["example.com"], None).result, "pass")
        self.assertEqual(self.evaluate(zone, "example.com", [], "bounce.example.com").result,
                         "fail")
        self.assertEqual(self.evaluate(zone, "example.com", [], "example.com").result, "pass")

    def test_public_suffix_is_not_an_organization(self) -> None:
        """A d= of a public suffix (com, co.uk) does not align with a domain under it."""
        zone = self.record("v=DMARC1; p=reject", at="example.co.uk")
        self.assertEqual(self.evaluate(zone, "example.co.uk", ["co.uk"], "uk").result, "fail")
        self.assertTrue(dmarc.aligned("a.example.co.uk", "b.example.co.uk", "r"))
        self.assertFalse(dmarc.aligned("example.co.uk", "other.co.uk", "r"))

    def test_org_domain_via_psl_and_sp(self) -> None:
        """No record at news.example.co.uk: the organizational domain's (example.co.uk, by
        the PSL, not co.uk) applies, with its sp= for the subdomain."""
        zone = self.record("v=DMARC1; p=reject; sp=quarantine", at="example.co.uk")
        got = self.evaluate(zone, "news.example.co.uk", [], None)
        self.assertEqual((got.result, got.policy, got.disposition),
                         ("fail", "quarantine", "quarantine"))
        self.assertEqual([q for q, _ in self.resolver.queries],
                         ["_dmarc.news.example.co.uk", "_dmarc.example.co.uk"])
        got = self.evaluate(zone, "example.co.uk", [], None)
        self.assertEqual(got.policy, "reject")

    def test_sp_defaults_to_p_and_own_record_wins(self) -> None:
        """Without sp= a subdomain gets p=; a subdomain's own record is its p=."""
        zone = self.record("v=DMARC1; p=reject")
        self.assertEqual(self.evaluate(zone, "a.example.com", [], None).policy, "reject")
        add(zone, "_dmarc.b.example.com", txt("v=DMARC1; p=none"))
        got = self.evaluate(zone, "b.example.com", [], None)
        self.assertEqual((got.result, got.policy, got.disposition), ("fail", "none", "none"))

    def test_pct_sampling(self) -> None:
        """pct=50: a draw under 50% applies the policy, one above gets the next milder
        (reject -> quarantine, quarantine -> none)."""
        zone = self.record("v=DMARC1; p=reject; pct=50")
        self.assertEqual(self.evaluate(zone, "example.com", [], None, 0.2).disposition, "reject")
        got = self.evaluate(zone, "example.com", [], None, 0.7)
        self.assertEqual((got.policy, got.disposition, got.reason),
                         ("reject", "quarantine", "pct=50"))
        zone = self.record("v=DMARC1; p=quarantine; pct=0")
        self.assertEqual(self.evaluate(zone, "example.com", [], None, 0.0).disposition, "none")

    def test_no_record(self) -> None:
        """No record at either place, or only other TXT records: none."""
        self.assertEqual(self.evaluate({}, "example.com", [], None).result, "none")
        zone = self.record("v=spf1 -all")
        self.assertEqual(self.evaluate(zone, "example.com", [], None).result, "none")

    def test_two_records_is_none(self) -> None:
        """6.6.3: more than one DMARC record: no DMARC processing (none)."""
        zone = self.record("v=DMARC1; p=reject")
        add(zone, "_dmarc.example.com", txt("v=DMARC1; p=none"))
        self.assertEqual(self.evaluate(zone, "example.com", [], None).result, "none")

    def test_bad_records_permerror(self) -> None:
        """A record without p=, with an unknown p= value, or pct= out of range: permerror;
        but one with a rua= address counts as p=none (6.6.3)."""
        got = self.evaluate(self.record("v=DMARC1; p=bogus; rua=mailto:d@example.com"),
                            "example.com", [], None)
        self.assertEqual((got.result, got.policy), ("fail", "none"))
        got = self.evaluate(self.record("v = DMARC1;p=reject"), "example.com", [], None)
        self.assertEqual(got.policy, "reject")
        for text in ("v=DMARC1; sp=none", "v=DMARC1; p=bogus",
                     "v=DMARC1; p=reject; pct=150", "v=DMARC1; p=reject; pct=half"):
            got = self.evaluate(self.record(text), "example.com", [], None)
            self.assertEqual(got.result, "permerror", text)

    def test_servfail_temperror(self) -> None:
        """SERVFAIL on the policy query: temperror."""
        zone = self.record("v=DMARC1; p=reject")
        resolver = FailingResolver(zone, {"_dmarc.example.com"}, SERVFAIL)
        got = self.evaluate(zone, "example.com", [], None, resolver=resolver)
        self.assertEqual(got.result, "temperror")

    def test_from_domains(self) -> None:
        """The From: domains: one for one address, each for several, none without From."""
        self.assertEqual(dmarc.from_domains(b"From: A <a@Example.COM>\nTo: b@x\n\nbody\n"),
                         ["example.com"])
        self.assertEqual(dmarc.from_domains(b"From: a@one.example, b@two.example\n\n"),
                         ["one.example", "two.example"])
        self.assertEqual(dmarc.from_domains(b"Subject: x\n\nFrom: a@b.example\n"), [])
        # a malformed field still names its domain (no escape from DMARC by bad syntax)
        self.assertEqual(dmarc.from_domains(b"From: ceo@bank.example; x\n\n"), ["bank.example"])
        self.assertEqual(dmarc.from_domains(b'From: "ceo@bank.example" <m@evil.example>\n\n'),
                         ["evil.example"])

    def test_strictest_of_several(self) -> None:
        """Several author domains (6.6.1): the failing one with the strictest policy decides."""
        results = [dmarc.DMARCResult("pass", "a.example", "reject"),
                   dmarc.DMARCResult("fail", "b.example", "quarantine", "quarantine"),
                   dmarc.DMARCResult("fail", "c.example", "reject", "reject"),
                   dmarc.DMARCResult("temperror", "d.example")]
        self.assertEqual(dmarc.strictest(results).domain, "c.example")
        self.assertEqual(dmarc.strictest(results[:2] + results[3:]).domain, "b.example")
        self.assertEqual(dmarc.strictest([results[0], results[3]]).domain, "d.example")
