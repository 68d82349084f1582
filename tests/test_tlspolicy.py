"""mailsuite.mta.tlspolicy and mailsuite.mta.dane without sockets: the policy table, the level
logic, the certificate verdicts and DANE TLSA matching, against certificates made at test time
(tests/fakedns_dnssec.py), so nothing expires."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite.config import ConfigError, parse_config
from mailsuite.mta import dane, tlspolicy
from mailsuite.mta.tlspolicy import HostTLS, Policy, TLSPolicy
from tests.fakedns_dnssec import Cert, make_cert, tlsa


def records(*rrs: Any) -> list[dane.TLSARecord]:
    return [r for r in (dane.parse_tlsa(rr) for rr in rrs) if r is not None]


class PKI:
    """A private CA, an intermediate and leaves for mx.example.test (made once per class)."""

    def __init__(self) -> None:
        self.ca = make_cert("Test Root", [], ca=True, days=(-2, 3650))
        self.inter = make_cert("Test Intermediate", [], issuer=self.ca, ca=True)
        self.good = make_cert("mx.example.test", ["mx.example.test"], issuer=self.inter)
        self.good.chain = [self.inter.cert]
        self.expired = make_cert("mx.example.test", ["mx.example.test"], issuer=self.ca,
                                 days=(-30, -1))
        self.wrong = make_cert("other.test", ["other.test"], issuer=self.ca)
        self.selfsigned = make_cert("mx.example.test", ["mx.example.test"])
        self.wild = make_cert("*.example.test", ["*.example.test"], issuer=self.ca)
        fd, self.ca_path = tempfile.mkstemp(suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(self.ca.pem())
        self.store = tlspolicy.trust_store(self.ca_path)
        os.unlink(self.ca_path)


_pki: PKI | None = None


def pki() -> PKI:
    global _pki
    if _pki is None:
        _pki = PKI()
    return _pki


def chain(c: Cert) -> list[Any]:
    return [c.cert, *c.chain]


class PolicyTableTests(unittest.TestCase):
    def test_parse_and_lookup_order(self) -> None:
        """Postfix's table syntax; a domain is looked up as itself, then its parent domains
        with a leading dot; [host]:port verbatim; keys are case-insensitive."""
        table = tlspolicy.parse_policy_table(
            "# comment\n"
            "example.com   secure match=.example.com:example.com\n"
            ".example.org  verify\n"
            "[Mail.Example.NET]:587 encrypt ciphers=high\n"
            "long.test\n  dane\n", "/etc/tls_policy")
        engine = TLSPolicy("may", table)
        self.assertEqual(engine.destination("example.com").level, "secure")
        self.assertEqual(engine.destination("example.com").match,
                         (".example.com", "example.com"))
        self.assertEqual(engine.destination("sub.example.com").level, "may")  # no .example.com
        self.assertEqual(engine.destination("a.b.example.org").level, "verify")
        self.assertEqual(engine.destination("example.org").level, "may")
        hop = engine.destination("[mail.example.net]:587")
        self.assertEqual((hop.level, hop.ciphers), ("encrypt", "high"))
        self.assertEqual(engine.destination("long.test").level, "dane")
        self.assertEqual(engine.destination("example.com").source,
                         "smtp_tls_policy_maps /etc/tls_policy:2")
        self.assertEqual(engine.destination("elsewhere.test"), Policy("may"))

    def test_broken_lines_are_named(self) -> None:
        """Every broken line is refused with file:line and why: an unknown level, an
        unsupported attribute, match= on a level that does not use it, no level."""
        with self.assertRaises(ValueError) as e:
            tlspolicy.parse_policy_table(
                "a.test  fingerprint\nb.test verify protocols=!SSLv3\nc.test may match=x.test\n"
                "d.test\ne.test verify ciphers=export\n", "/t")
        text = str(e.exception)
        for line in ("/t:1: unknown TLS security level", "/t:2: unsupported attribute",
                     "/t:3: match= applies", "/t:4: no security level", "/t:5: ciphers=export"):
            self.assertIn(line, text)

    def test_config_refuses_a_broken_table_and_ca_file(self) -> None:
        """from_config (run at start) names the key and the file:line of a broken table, and
        a CA file that is not PEM."""
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        table, ca = os.path.join(d, "tls_policy"), os.path.join(d, "ca.pem")
        with open(table, "w") as f:
            f.write("ok.test verify\nbad.test sometimes\n")
        with open(ca, "w") as f:
            f.write("not a certificate\n")
        cfg = parse_config(f"[mail]\nsmtp_tls_policy_maps = {table}\nsmtp_tls_CAfile = {ca}\n",
                           "/x/mail.ini", hostname=lambda: "mail.example.test")
        with self.assertRaises(ConfigError) as e:
            tlspolicy.from_config(cfg, None, print)
        self.assertIn(f"[mail] smtp_tls_policy_maps: {table}:2: unknown TLS security level",
                      e.exception.errors[0])
        self.assertIn("[mail] smtp_tls_CAfile", e.exception.errors[1])

    def test_config_keys(self) -> None:
        """The keys' defaults are Postfix's (Debian's may); a bad level or match is refused."""
        cfg = parse_config("[mail]\n", "/x/mail.ini", hostname=lambda: "mail.example.test")
        self.assertEqual(cfg.mail.smtp_tls_security_level, "may")
        self.assertEqual(cfg.mail.smtp_tls_verify_cert_match, ("hostname",))
        self.assertEqual(cfg.mail.smtp_tls_secure_cert_match, ("nexthop", "dot-nexthop"))
        self.assertTrue(cfg.mail.smtp_sasl_tls_verified_only)
        cfg = parse_config("[mail]\nsmtp_tls_security_level = Secure\n"
                           "smtp_tls_secure_cert_match = nexthop, .example.test\n",
                           "/x/mail.ini", hostname=lambda: "mail.example.test")
        self.assertEqual(cfg.mail.smtp_tls_security_level, "secure")
        self.assertEqual(cfg.mail.smtp_tls_secure_cert_match, ("nexthop", ".example.test"))
        with self.assertRaises(ConfigError) as e:
            parse_config("[mail]\nsmtp_tls_security_level = paranoid\n"
                         "smtp_tls_verify_cert_match = ,\n", "/x/mail.ini",
                         hostname=lambda: "mail.example.test")
        self.assertIn("[mail] smtp_tls_security_level", e.exception.errors[0])
        self.assertIn("[mail] smtp_tls_verify_cert_match", e.exception.errors[1])


class LevelTests(unittest.TestCase):
    def test_match_names(self) -> None:
        """verify matches the MX host name, secure the next-hop domain and its subdomains (not
        the insecure MX name); match= replaces either; a [host] next hop is that host."""
        engine = TLSPolicy()
        self.assertEqual(engine.names(Policy("verify"), "example.com", "MX1.Example.NET."),
                         ["mx1.example.net"])
        self.assertEqual(engine.names(Policy("secure"), "example.com", "mx1.example.net"),
                         ["example.com", ".example.com"])
        self.assertEqual(engine.names(Policy("secure", ("hostname", ".mx.test")),
                                      "example.com", "a.mx.test"), ["a.mx.test", ".mx.test"])
        self.assertEqual(engine.names(Policy("secure"), "[smtp.relay.test]:587", "smtp.relay.test"),
                         ["smtp.relay.test", ".smtp.relay.test"])

    def test_verdicts_per_level(self) -> None:
        """A good chain with the right name is Verified at every level; expired, self-signed
        and unknown-CA certificates are Untrusted, the wrong name Trusted: refused (4.7.5
        texts of Postfix) at verify/secure, accepted at may/encrypt."""
        p = pki()
        cases = {
            "good": (chain(p.good), "Verified", ""),
            "expired": (chain(p.expired), "Untrusted", "Server certificate not trusted"),
            "selfsigned": (chain(p.selfsigned), "Untrusted", "Server certificate not trusted"),
            "wrong": (chain(p.wrong), "Trusted", "Server certificate not verified"),
        }
        for level in ("may", "encrypt", "verify", "secure"):
            host = HostTLS(level, ["mx.example.test"], p.store)
            for what, (certs, trust, failure) in cases.items():
                verdict = host.judge(certs)
                self.assertEqual(verdict.trust, trust, (level, what))
                strict = level in ("verify", "secure")
                self.assertEqual(verdict.ok, not (strict and failure), (level, what))
                if failure:
                    self.assertEqual(verdict.failure, failure)
        verdict = HostTLS("verify", ["mx.example.test"], p.store).judge(chain(p.expired))
        self.assertIn("expired", verdict.problem)
        verdict = HostTLS("verify", ["mx.example.test"], tlspolicy.trust_store()).judge(
            chain(p.good))
        self.assertEqual(verdict.trust, "Untrusted")  # the private CA only with smtp_tls_CAfile

    def test_dot_patterns_and_wildcards(self) -> None:
        """``.example.test`` matches names below example.test (not itself); a wildcard
        certificate matches a host name under it (RFC 6125, service_identity)."""
        p = pki()
        self.assertTrue(dane.name_matches(p.good.cert, [".example.test"]))
        self.assertFalse(dane.name_matches(p.good.cert, [".mx.example.test"]))
        self.assertFalse(dane.name_matches(p.good.cert, ["example.test"]))
        self.assertTrue(dane.name_matches(p.wild.cert, ["mx9.example.test"]))
        self.assertTrue(dane.name_matches(p.wild.cert, [".example.test"]))
        self.assertFalse(dane.name_matches(p.wild.cert, ["a.b.example.test"]))

    def test_dane_levels_without_secure_dns(self) -> None:
        """dane without an authenticated MX answer is may (as Postfix); dane-only is a
        temporary failure; the other levels never look anything up."""
        engine = TLSPolicy("dane", lookup=None)
        host = self.successResultOf(engine.host(Policy("dane"), "example.test", "mx.test", 25))
        self.assertEqual((host.level, host.tlsa), ("may", None))
        self.failureResultOf(engine.host(Policy("dane-only"), "example.test", "mx.test", 25),
                             tlspolicy.DaneUnavailable)
        host = self.successResultOf(engine.host(Policy("verify"), "example.test", "mx.test", 25))
        self.assertEqual(host.level, "verify")


class FakeLookup:
    """SecureLookup's interface over a dict {(name, type): dane.Answer | Exception}."""

    def __init__(self, answers: dict[tuple[str, int], Any]) -> None:
        self.answers = answers

    def query(self, name: str, rtype: int) -> defer.Deferred[Any]:
        found = self.answers.get((name, rtype), dane.Answer((), True, exists=False))
        if isinstance(found, Exception):
            return defer.fail(found)
        return defer.succeed(found)


class DaneMatchTests(unittest.TestCase):
    def test_dane_ee_selectors_and_matching_types(self) -> None:
        """DANE-EE(3) matches the server certificate (selector 0) or its key (1), in full or
        by SHA-256/SHA-512 digest, whatever its names and dates (RFC 7672 3.1.1)."""
        p = pki()
        for cert in (p.good, p.expired, p.wrong, p.selfsigned):
            for selector in (0, 1):
                for mtype in (0, 1, 2):
                    result = dane.match_tlsa(chain(cert), records(tlsa(3, selector, mtype,
                                                                        cert.cert)), ["x.test"])
                    self.assertTrue(result.matched, (selector, mtype))
                    self.assertIn("DANE-EE", result.detail)
        result = dane.match_tlsa(chain(p.good), records(tlsa(3, 1, 1, p.wrong.cert)),
                                 ["mx.example.test"])
        self.assertFalse(result.matched)

    def test_dane_ta(self) -> None:
        """DANE-TA(2) matches a CA certificate of the chain the server sent; the server's
        certificate must chain to it, be in date and carry a reference name (RFC 7672 3.2)."""
        p = pki()
        ta = records(tlsa(2, 1, 1, p.inter.cert))
        ok = dane.match_tlsa(chain(p.good), ta, ["mx.example.test", "example.test"])
        self.assertTrue(ok.matched)
        self.assertIn("depth 1", ok.detail)
        wrong_name = dane.match_tlsa(chain(p.good), ta, ["mx.other.test"])
        self.assertFalse(wrong_name.matched)
        self.assertIn("names none of mx.other.test", wrong_name.detail)
        expired = p.expired
        expired.chain = [p.ca.cert]
        root = records(tlsa(2, 0, 1, p.ca.cert))
        late = dane.match_tlsa(chain(expired), root, ["mx.example.test"])
        self.assertFalse(late.matched)
        self.assertIn("expired", late.detail)
        self.assertFalse(dane.match_tlsa(chain(p.good), records(tlsa(2, 1, 1, p.ca.cert)),
                                         ["mx.example.test"]).matched)  # the root was not sent

    def test_pkix_usages_are_not_used(self) -> None:
        """Usages 0 and 1 (PKIX-TA, PKIX-EE) and unknown parameters are unusable for SMTP
        (RFC 7672 3.1.3): TLSA records with only those mean mandatory TLS without
        authentication (level encrypt)."""
        p = pki()
        rrs = records(tlsa(1, 1, 1, p.good.cert), tlsa(0, 0, 1, p.ca.cert))
        self.assertEqual(dane.usable(rrs), [])
        lookup = FakeLookup({("mx.example.test", 1): dane.Answer(("a",), True),
                             ("_25._tcp.mx.example.test", 52): dane.Answer(
                                 (tlsa(1, 1, 1, p.good.cert),), True)})
        engine = TLSPolicy("dane", lookup=lookup)  # type: ignore[arg-type]
        host = self.successResultOf(engine.host(Policy("dane"), "example.test",
                                                "mx.example.test", 25, mx_secure=True))
        self.assertEqual(host.level, "encrypt")

    def test_tlsa_lookup(self) -> None:
        """TLSA records are used only when the host's address and TLSA answers are both
        authenticated; a SERVFAIL of the TLSA look-up is a temporary failure."""
        p = pki()
        rr = tlsa(3, 1, 1, p.good.cert)
        secure_a = dane.Answer(("a",), True)
        tlsa_ok = dane.Answer((rr,), True)
        engine = TLSPolicy("dane", lookup=FakeLookup({  # type: ignore[arg-type]
            ("mx.example.test", 1): secure_a, ("_25._tcp.mx.example.test", 52): tlsa_ok}))
        host = self.successResultOf(engine.host(Policy("dane"), "example.test",
                                                "mx.example.test", 25, mx_secure=True))
        self.assertEqual((host.level, host.tlsa), ("dane", tuple(records(rr))))
        self.assertEqual(host.names, ["mx.example.test", "example.test"])
        host = self.successResultOf(engine.host(Policy("dane"), "example.test",
                                                "mx.example.test", 25, mx_secure=False))
        self.assertEqual(host.level, "may")  # MX answer not authenticated
        engine.lookup = FakeLookup({  # type: ignore[assignment]
            ("mx.example.test", 1): dane.Answer(("a",), False),
            ("_25._tcp.mx.example.test", 52): tlsa_ok})
        host = self.successResultOf(engine.host(Policy("dane"), "example.test",
                                                "mx.example.test", 25, mx_secure=True))
        self.assertEqual(host.level, "may")  # address records not authenticated
        engine.lookup = FakeLookup({  # type: ignore[assignment]
            ("mx.example.test", 1): secure_a,
            ("_25._tcp.mx.example.test", 52): dane.TemporaryDNSError("4.7.5", "SERVFAIL")})
        self.failureResultOf(engine.host(Policy("dane"), "example.test", "mx.example.test",
                                         25, mx_secure=True), dane.TemporaryDNSError)


class FakeClient:
    """The relay's ClientProtocol as starttls sees it: sent lines, canned replies."""

    def __init__(self, *replies: tuple[int, str]) -> None:
        self.sent: list[str] = []
        self.replies = list(replies)

    def send(self, line: str) -> None:
        self.sent.append(line)

    def reply(self) -> defer.Deferred[tuple[int, str]]:
        return defer.succeed(self.replies.pop(0))


class SessionRuleTests(unittest.TestCase):
    def hello(self) -> defer.Deferred[dict[str, str]]:
        raise AssertionError("no second EHLO without TLS")

    def test_starttls_per_level(self) -> None:
        """Without STARTTLS offered: may and dane-without-records go on in plaintext, the
        mandatory levels refuse 4.7.4; none never sends STARTTLS; a 454 to STARTTLS is a
        4.7.5 refusal only for a mandatory level."""
        for level, refused in (("may", False), ("encrypt", True), ("verify", True),
                               ("secure", True), ("dane-only", True)):
            d = tlspolicy.starttls(FakeClient(), HostTLS(level, []), {}, "mx[1.2.3.4]:25",
                                   self.hello)
            if refused:
                failure = self.failureResultOf(d, tlspolicy.TLSRefused)
                self.assertEqual(failure.value.dsn, "4.7.4")
            else:
                self.assertEqual(self.successResultOf(d), ({}, None))
        client = FakeClient()
        d = tlspolicy.starttls(client, HostTLS("none", []), {"STARTTLS": ""}, "mx", self.hello)
        self.assertEqual((self.successResultOf(d), client.sent), (({"STARTTLS": ""}, None), []))
        for level, refused in (("may", False), ("encrypt", True)):
            client = FakeClient((454, "4.7.0 TLS not available"))
            d = tlspolicy.starttls(client, HostTLS(level, []), {"STARTTLS": ""}, "mx",
                                   self.hello)
            self.assertEqual(client.sent, ["STARTTLS"])
            if refused:
                self.assertEqual(self.failureResultOf(d, tlspolicy.TLSRefused).value.dsn,
                                 "4.7.5")
            else:
                self.successResultOf(d)

    def test_sasl_refusal(self) -> None:
        """The password: never without TLS; only over Verified TLS unless the knob says any
        TLS will do."""
        verified = tlspolicy.Verdict("Verified", True)
        trusted = tlspolicy.Verdict("Trusted", True, "the certificate names none of x")
        self.assertIn("without TLS", tlspolicy.sasl_refusal(None, False, "r"))
        self.assertEqual(tlspolicy.sasl_refusal(verified, True, "r"), "")
        self.assertIn("unverified TLS connection (Trusted: the certificate names none of x)",
                      tlspolicy.sasl_refusal(trusted, True, "r"))
        self.assertEqual(tlspolicy.sasl_refusal(trusted, False, "r"), "")

    def test_nexthop_and_keys(self) -> None:
        """The next-hop domain of a [host]:port or host:port next hop is the host; the table
        keys of a domain are itself and its dotted parents."""
        self.assertEqual(tlspolicy.nexthop_domain("[Smtp.Relay.Test]:587"), "smtp.relay.test")
        self.assertEqual(tlspolicy.nexthop_domain("relay.test:587"), "relay.test")
        self.assertEqual(tlspolicy.table_keys("A.B.Example."), ["a.b.example", ".b.example",
                                                               ".example"])
        self.assertEqual(tlspolicy.table_keys("[mx.test]:25"), ["[mx.test]:25"])


class SecureLookupTests(unittest.TestCase):
    def test_truncated_answer_asked_again_over_tcp(self) -> None:
        """A truncated UDP answer is asked again over TCP; the AD bit and rcode of the answer
        used are what counts (NXDOMAIN: no records; SERVFAIL: TemporaryDNSError)."""
        from twisted.names import dns as names_dns

        def message(trunc: int, ad: int, rcode: int = 0) -> names_dns.Message:
            m = names_dns.Message(answer=1, trunc=trunc, authenticData=ad, rCode=rcode)
            m.queries = [names_dns.Query(b"_25._tcp.mx.test", 52)]
            m.answers = [names_dns.RRHeader(b"_25._tcp.mx.test", 52,
                                            payload=names_dns.UnknownRecord(b"\x03\x01\x01xx"))]
            return m

        class Resolver:
            def __init__(self, udp: Any, tcp: Any = None) -> None:
                self.udp, self.tcp, self.tcp_asked = udp, tcp, 0

            def queryUDP(self, queries: Any) -> Any:
                return defer.succeed(self.udp)

            def queryTCP(self, queries: Any) -> Any:
                self.tcp_asked += 1
                return defer.succeed(self.tcp)

        r = Resolver(message(1, 0), message(0, 1))
        answer = self.successResultOf(dane.SecureLookup(resolver=r).query("_25._tcp.mx.test", 52))
        self.assertEqual((r.tcp_asked, answer.secure, len(answer.records)), (1, True, 1))
        answer = self.successResultOf(dane.SecureLookup(resolver=Resolver(
            message(0, 1, names_dns.ENAME))).query("mx.test", 52))
        self.assertEqual((answer.exists, answer.records), (False, ()))
        self.failureResultOf(dane.SecureLookup(resolver=Resolver(
            message(0, 1, names_dns.ESERVER))).query("mx.test", 52), dane.TemporaryDNSError)

    def test_queries_ask_for_the_ad_bit(self) -> None:
        """Over TCP too, the query carries the AD bit (RFC 6840 5.7)."""
        from twisted.internet.testing import StringTransport
        from twisted.names import dns as names_dns

        proto = dane._ADStream(None)
        transport = StringTransport()
        proto.transport = transport
        proto.writeMessage(names_dns.Message(id=7))
        sent = names_dns.Message()
        sent.fromStr(transport.value()[2:])  # after the two-byte length
        self.assertEqual(sent.authenticData, 1)
