"""mailsuite.mta.stsroute without sockets: how MTA-STS, DANE and smtp_tls_policy_maps join in
one delivery (which MX hosts are tried, at which level, with which names) and what each
session's TLS step counts for TLS-RPT. Certificates are made at test time
(tests/test_tlspolicy.PKI); the MTA-STS source is a fake with MtaSts.policy_for's interface."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsuite.mta import dane, tlspolicy
from mailsuite.mta.dns import MailHost
from mailsuite.mta.mtasts import parse_policy
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from mailsuite.mta.relay import Relay
from mailsuite.mta.stsroute import Router
from mailsuite.mta.tlspolicy import HostTLS, Policy, TLSPolicy, parse_policy_table
from mailsuite.mta.tlsrpt import TLSReportStore
from mailsuite.threads import inline
from tests.fakedns_dnssec import tlsa
from tests.test_tlspolicy import FakeClient, FakeLookup, chain, pki

DOMAIN = "example.test"
RELAY = "mx.example.test[192.0.2.1]:25"


def policy_text(mode: str) -> str:
    return f"version: STSv1\nmode: {mode}\nmx: mx.example.test\nmx: *.backup.test\nmax_age: 600\n"


class FakeSts:
    """MtaSts.policy_for over a dict {domain: policy text}; counts the asks."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.asked: list[str] = []

    def policy_for(self, domain: str) -> defer.Deferred[Any]:
        self.asked.append(domain)
        text = self.texts.get(domain)
        return defer.succeed(None if text is None else parse_policy(text.encode(), domain))


def hosts(*names: str) -> list[MailHost]:
    return [MailHost(n, ("192.0.2.1",)) for n in names]


class RouteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(86400 * 20000)
        self.store = TLSReportStore("", self.clock, inline)
        self.log: list[str] = []

    def router(self, mode: str | None = "enforce", level: str = "may", table: str = "",
               lookup: Any = None) -> Router:
        tls = TLSPolicy(level, parse_policy_table(table, "/tls_policy"), store=pki().store,
                        lookup=lookup, log=self.log.append)
        self.sts = FakeSts({} if mode is None else {DOMAIN: policy_text(mode)})
        return Router(tls, self.sts, self.store)

    def route(self, router: Router, mx_hosts: list[MailHost], hop: str = DOMAIN,
              mx: bool = True, mx_secure: bool = False) -> Any:
        policy = router.tls.destination(hop)
        return self.successResultOf(router.route(policy, hop, mx_hosts, 25, mx_secure, mx))

    def host(self, route: Any, name: str) -> Any:
        return self.successResultOf(route.host(MailHost(name, ("192.0.2.1",))))

    def counts(self) -> dict[str, dict[str, Any]]:
        """{policy type: {"ok": n, "fail": n, "results": [result types]}} for DOMAIN today."""
        out: dict[str, dict[str, Any]] = {}
        for day in self.store.days.values():
            for key, entry in day.get(DOMAIN, {}).items():
                kind = json.loads(key)[0]
                results = sorted(json.loads(k)["result_type"] for k in entry["details"])
                out[kind] = {"ok": entry["ok"], "fail": entry["fail"], "results": results}
        return out

    def test_enforce_tries_only_matching_hosts_at_secure(self) -> None:
        """enforce: an MX host matching no pattern is not tried (logged, counted as
        validation-failure); a matching one (also by *.backup.test, one label) gets level
        secure with its own name as the certificate's name."""
        route = self.route(self.router(), hosts("mx.example.test", "mx.other.test",
                                                "a.backup.test", "a.b.backup.test"))
        self.assertEqual([h.name for h in route.hosts], ["mx.example.test", "a.backup.test"])
        self.assertIsNone(route.refusal)
        tls, refusal = self.host(route, "mx.example.test")
        self.assertEqual((tls.level, tls.names, refusal), ("secure", ["mx.example.test"], None))
        self.assertIn("MTA-STS policy of example.test (enforce): not trying MX host"
                      " mx.other.test: it matches no mx pattern (mx.example.test,"
                      " *.backup.test)", self.log)
        self.assertEqual(self.counts()["sts"]["results"], ["validation-failure"] * 2)
        self.assertEqual(self.counts()["sts"]["fail"], 2)

    def test_enforce_without_matching_host_defers(self) -> None:
        """enforce and no MX host matches: nothing to try, 450 4.7.5 naming the policy."""
        route = self.route(self.router(), hosts("mx.other.test"))
        self.assertEqual(route.hosts, [])
        code, dsn, text = route.refusal
        self.assertEqual((code, dsn), (450, "4.7.5"))
        self.assertIn("MTA-STS policy of example.test (enforce): no MX host matches", text)

    def test_session_results_under_enforce(self) -> None:
        """Each TLS step counts once under policy type sts: a good certificate is a success,
        the wrong name certificate-host-mismatch, an expired one certificate-expired, a
        self-signed one certificate-not-trusted, no STARTTLS starttls-not-supported."""
        p = pki()
        route = self.route(self.router(), hosts("mx.example.test"))
        tls, _ = self.host(route, "mx.example.test")
        tls.observe("", chain(p.good), RELAY)
        for cert in (p.wrong, p.expired, p.selfsigned):
            tls.observe("", chain(cert), RELAY)
        tls.observe("starttls-not-supported", [], RELAY)
        sts = self.counts()["sts"]
        self.assertEqual((sts["ok"], sts["fail"]), (1, 4))
        self.assertEqual(sts["results"], ["certificate-expired", "certificate-host-mismatch",
                                          "certificate-not-trusted", "starttls-not-supported"])

    def test_testing_tries_all_hosts_at_their_own_level_and_reports(self) -> None:
        """testing: every MX host is tried at the destination's own level (here verify from
        the global setting is kept, may stays may); a non-matching host's session counts as
        validation-failure; a certificate enforce would refuse is logged "delivering anyway"
        and counted."""
        route = self.route(self.router("testing"), hosts("mx.example.test", "mx.other.test"))
        self.assertEqual(len(route.hosts), 2)
        tls, _ = self.host(route, "mx.example.test")
        self.assertEqual(tls.level, "may")
        tls.observe("", chain(pki().wrong), RELAY)
        self.assertTrue(any("MTA-STS policy of example.test (testing): " + RELAY + " fails it"
                            " (certificate-host-mismatch: the certificate names none of"
                            " mx.example.test); delivering anyway" in line for line in self.log),
                        self.log)
        other, _ = self.host(route, "mx.other.test")
        self.assertEqual(other.level, "may")
        other.observe("", chain(pki().good), RELAY)
        self.assertEqual(self.counts()["sts"]["results"],
                         ["certificate-host-mismatch", "validation-failure"])
        route = self.route(self.router("testing", level="verify"), hosts("mx.example.test"))
        self.assertEqual(self.host(route, "mx.example.test")[0].level, "verify")

    def test_no_policy_or_mode_none(self) -> None:
        """No policy, or mode none: the destination's own level, every host; sessions count
        as no-policy-found, where any TLS is a success (even an untrusted certificate)."""
        for mode in (None, "none"):
            route = self.route(self.router(mode), hosts("mx.other.test"))
            tls, _ = self.host(route, "mx.other.test")
            self.assertEqual(tls.level, "may")
            tls.observe("", chain(pki().selfsigned), RELAY)
            tls.observe("starttls-not-supported", [], RELAY)
        found = self.counts()["no-policy-found"]
        self.assertEqual((found["ok"], found["fail"]), (2, 2))

    def test_dane_wins_over_mta_sts(self) -> None:
        """With DANE (level dane, authenticated MX, A and TLSA answers) a host is judged by
        DANE even when enforce would not have it: it is tried at level dane and its sessions
        count as policy type tlsa with the records as the policy-string; a host without
        TLSA records falls to MTA-STS (not matching: refused)."""
        p = pki()
        rr = tlsa(3, 1, 1, p.selfsigned.cert)
        lookup = FakeLookup({("mx.other.test", 1): dane.Answer(("a",), True),
                             ("_25._tcp.mx.other.test", 52): dane.Answer((rr,), True),
                             ("mx.plain.test", 1): dane.Answer(("a",), True)})
        router = self.router(level="dane", lookup=lookup)
        route = self.route(router, hosts("mx.other.test", "mx.plain.test"), mx_secure=True)
        self.assertEqual(len(route.hosts), 2)
        tls, _ = self.host(route, "mx.other.test")
        self.assertEqual(tls.level, "dane")
        tls.observe("", chain(p.selfsigned), "mx.other.test[192.0.2.1]:25")
        tls.observe("", chain(p.good), "mx.other.test[192.0.2.1]:25")
        tlsa_counts = self.counts()["tlsa"]
        self.assertEqual((tlsa_counts["ok"], tlsa_counts["results"]), (1, ["tlsa-invalid"]))
        key = next(iter(next(iter(self.store.days.values()))[DOMAIN]))
        self.assertEqual(json.loads(key)[1], [f"3 1 1 {rr.data[3:].hex().upper()}"])
        tls, refusal = self.host(route, "mx.plain.test")
        self.assertIsNone(tls)
        self.assertEqual(refusal[:2], (450, "4.7.5"))

    def test_tlsa_lookup_failures_are_counted(self) -> None:
        """A TLSA SERVFAIL is dnssec-invalid, dane-only without TLSA dane-required; both
        refuse the host (4.7.5) as before."""
        lookup = FakeLookup({("mx.example.test", 1): dane.Answer(("a",), True),
                             ("_25._tcp.mx.example.test", 52):
                                 dane.TemporaryDNSError("4.7.5", "SERVFAIL")})
        route = self.route(self.router(None, level="dane", lookup=lookup),
                           hosts("mx.example.test"), mx_secure=True)
        self.assertIsNone(self.host(route, "mx.example.test")[0])
        route = self.route(self.router(None, level="dane-only", lookup=FakeLookup({})),
                           hosts("mx.example.test"), mx_secure=True)
        self.assertIsNone(self.host(route, "mx.example.test")[0])
        self.assertEqual(self.counts()["tlsa"]["results"], ["dane-required", "dnssec-invalid"])

    def test_policy_map_entry_for_the_domain_wins(self) -> None:
        """An smtp_tls_policy_maps entry for the domain itself decides alone (MTA-STS not
        even asked), as Postfix's static table listed before postfix-mta-sts-resolver; a
        parent-domain entry (.test) does not: MTA-STS is asked and wins."""
        router = self.router(table="example.test encrypt\n")
        route = self.route(router, hosts("mx.other.test"))
        self.assertEqual(self.sts.asked, [])
        self.assertEqual(self.host(route, "mx.other.test")[0].level, "encrypt")
        router = self.router(table=".test encrypt\n")
        route = self.route(router, hosts("mx.example.test", "mx.other.test"))
        self.assertEqual(self.sts.asked, [DOMAIN])
        self.assertEqual([h.name for h in route.hosts], ["mx.example.test"])
        self.assertEqual(self.host(route, "mx.example.test")[0].level, "secure")

    def test_relayhost_and_literal_are_exempt(self) -> None:
        """A relayhost or [host] next hop (mx False): MTA-STS not asked, every host tried at
        the TLS policy's level, nothing counted."""
        router = self.router()
        for hop in ("[mx.other.test]:587", DOMAIN):
            route = self.route(router, hosts("mx.other.test"), hop=hop, mx=False)
            tls, _ = self.host(route, "mx.other.test")
            self.assertEqual((tls.level, tls.observe), ("may", None))
        self.assertEqual(self.sts.asked, [])
        self.assertEqual(self.store.days, {})

    def test_no_store_no_counts_but_testing_still_logged(self) -> None:
        """smtp_tlsrpt_enable = no (no store): nothing is counted, the testing-mode log line
        is still written."""
        router = self.router("testing")
        router.store = None
        route = self.route(router, hosts("mx.example.test"))
        tls, _ = self.host(route, "mx.example.test")
        tls.observe("", chain(pki().expired), RELAY)
        self.assertEqual(self.store.days, {})
        self.assertTrue(any("certificate-expired" in line and "delivering anyway" in line
                            for line in self.log))


class PolicyTests(unittest.TestCase):
    def test_route_keeps_the_policy_engine_answer(self) -> None:
        """Without MTA-STS (smtp_mta_sts_enable = no) the route is the policy engine's
        alone: every host, its level."""
        router = Router(TLSPolicy("encrypt"), None, None)
        route = self.successResultOf(router.route(Policy("encrypt"), DOMAIN,
                                                  hosts("mx.a.test"), 25, False, True))
        tls, _ = self.successResultOf(route.host(MailHost("mx.a.test", ())))
        self.assertEqual(tls.level, "encrypt")


class FakeMX:
    """Relay.resolver: MX hosts per domain."""

    def __init__(self, mx: dict[str, list[str]]) -> None:
        self.mx = mx

    def hosts(self, domain: str) -> defer.Deferred[list[MailHost]]:
        return defer.succeed(hosts(*self.mx[domain]))

    def addresses(self, host: str) -> defer.Deferred[list[str]]:
        return defer.succeed(["192.0.2.9"])


class RelayTests(unittest.TestCase):
    """Relay.deliver with the route: what it tries (connect attempts recorded, all refused)."""

    def relay(self, relayhost: str = "") -> Relay:
        self.connects: list[tuple[str, int]] = []

        def connect(ip: str, port: int) -> defer.Deferred[Any]:
            self.connects.append((ip, port))
            return defer.fail(ConnectionRefusedError())

        self.sts = FakeSts({DOMAIN: policy_text("enforce")})
        return Relay(FakeMX({DOMAIN: ["mx.other.test"]}), "mail.example.test", task.Clock(),
                     relayhost=relayhost, connect=connect, mta_sts=self.sts)

    def deliver(self, relay: Relay) -> Any:
        env = Envelope("STS1", "a@example.org", [QueuedRecipient(f"b@{DOMAIN}")], 0.0)
        outcomes = self.successResultOf(relay.deliver(relay.next_hop(f"b@{DOMAIN}"), env,
                                                      env.recipients, b"x\n"))
        return outcomes[0]

    def test_enforce_without_matching_mx_defers_untried(self) -> None:
        """enforce and no MX host matches: deferred 450 4.7.5 naming the policy, no
        connection made."""
        out = self.deliver(self.relay())
        self.assertEqual((out.code, out.dsn, out.status), (450, "4.7.5", "deferred"))
        self.assertIn("MTA-STS policy of example.test (enforce): no MX host matches", out.text)
        self.assertEqual(self.connects, [])

    def test_relayhost_is_exempt(self) -> None:
        """With a relayhost (here an MX-looked-up name equal to the domain, and a [host])
        MTA-STS is not asked and the host is tried."""
        for relayhost in ("[mx.other.test]", DOMAIN):
            relay = self.relay(relayhost)
            self.deliver(relay)
            self.assertEqual(self.sts.asked, [])
            self.assertEqual(len(self.connects), 1)


class ObserveTests(unittest.TestCase):
    """tlspolicy.starttls tells HostTLS.observe of the steps before a handshake."""

    def hello(self) -> defer.Deferred[dict[str, str]]:
        raise AssertionError("no second EHLO without TLS")

    def test_no_starttls_and_refused_starttls(self) -> None:
        """STARTTLS not offered, or answered 454: starttls-not-supported; level none: nothing
        (no TLS was tried)."""
        seen: list[str] = []
        tls = HostTLS("may", [], observe=lambda result, chain, relay: seen.append(result))
        self.successResultOf(tlspolicy.starttls(FakeClient(), tls, {}, RELAY, self.hello))
        self.successResultOf(tlspolicy.starttls(FakeClient((454, "4.7.0 no")), tls,
                                                {"STARTTLS": ""}, RELAY, self.hello))
        self.successResultOf(tlspolicy.starttls(FakeClient(), replace(tls, level="none"),
                                                {"STARTTLS": ""}, RELAY, self.hello))
        self.assertEqual(seen, ["starttls-not-supported", "starttls-not-supported"])
