"""MTA-STS and TLS-RPT end to end: the real server (twistd) relays mail for domains with MTA-STS
policies it fetches over HTTPS (tests/integration/mtasts_https.py on port 443 inside a network
namespace of its own, ``stswire<pid>``), to STARTTLS peers on 127.0.0.2-4 holding certificates
made now (tests/fakedns_dnssec.py), names from a twisted.names server on 127.0.0.1; with
``smtp_tlsrpt_enable = yes`` the counts of the day are kept and the daily report is made from
them (RFC 8460 JSON, gzip, in a multipart/report to the domain's rua).

- good.example.test, enforce, ``mx: *.good.example.test``: MX 10 mx.elsewhere.test (a peer
  with a good certificate, but no match: never tried), MX 20 mx1.good.example.test (good
  certificate): delivered over Verified TLS;
- wrongname-not.example.test, enforce: its one MX has a certificate for another name:
  deferred 4.7.5;
- change.example.test, testing: the same wrong-name peer: delivered anyway, logged, reported.

SessionCountTests: the relay in this process against test_outbound_tls's peers (no STARTTLS,
a broken handshake, DANE), for what each session's TLS step counts.
"""

from __future__ import annotations

import base64
import email
import gzip
import json
import os
import smtplib
import time
from email import policy as email_policy
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.names import dns
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver
from mailsuite.mta.relay import Relay
from mailsuite.mta.tlsrpt import TLSReportStore
from mailsuite.mta.tlsrptmail import ReportSettings, TLSReportService
from mailsuite.threads import inline
from tests import fakemx
from tests.fakedns_dnssec import TLSSinkFactory, make_cert, start_tls_sinks
from tests.integration.harness import Site
from tests.integration.netns import can_run
from tests.integration.test_end_to_end import message
from tests.integration.test_mtasts import StsNamespace, make_certificates
from tests.integration.test_outbound_tls import FakeInternet

ENFORCE = "version: STSv1\nmode: enforce\nmx: *.good.example.test\nmax_age: 86400\n"


class Recorder:
    """The queue as TLSReportService sees it: what it was given to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []

    def submit(self, sender: str, addresses: list[str], data: bytes) -> defer.Deferred[None]:
        self.sent.append((sender, list(addresses), data))
        return defer.succeed(None)


def report_json(data: bytes) -> dict[str, Any]:
    """The RFC 8460 JSON of a report message (its application/tlsrpt+gzip part)."""
    msg = email.message_from_bytes(data, policy=email_policy.default)
    for part in msg.walk():
        if part.get_content_type() == "application/tlsrpt+gzip":
            raw = base64.b64decode(part.get_payload())
            return json.loads(gzip.decompress(raw))  # type: ignore[no-any-return]
    raise AssertionError(f"no application/tlsrpt+gzip part in {data[:400]!r}")


class StsDeliveryTests(unittest.TestCase):
    """See the module doc."""

    timeout = 120
    if can_run():
        skip = can_run()

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        https_ca, https_cert, https_key = make_certificates(directory)
        policies = os.path.join(directory, "policies")
        os.makedirs(policies)
        for domain, text in (("good.example.test", ENFORCE),
                             ("wrongname-not.example.test", ENFORCE.replace(
                                 "*.good", "*.wrongname-not")),
                             ("change.example.test", ENFORCE.replace(
                                 "enforce", "testing").replace("*.good", "*.change"))):
            with open(os.path.join(policies, domain), "w") as f:
                f.write(text)
        self.net = StsNamespace(self, prefix="stswire")
        self.net.start_server(self, https_cert, https_key, policies)
        self.port = fakemx.free_port_on(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        ca = make_cert("STS Test Root CA", [], ca=True, days=(-2, 3650))
        self.peers = {
            "127.0.0.2": TLSSinkFactory(fakemx.Behaviour(starttls=True), make_cert(
                "mx1.good.example.test", ["mx1.good.example.test"], issuer=ca)),
            "127.0.0.3": TLSSinkFactory(fakemx.Behaviour(starttls=True), make_cert(
                "mx.elsewhere.test", ["mx.elsewhere.test"], issuer=ca)),
            "127.0.0.4": TLSSinkFactory(fakemx.Behaviour(starttls=True), make_cert(
                "other.test", ["other.test"], issuer=ca)),
        }
        for p in start_tls_sinks(self.peers, self.port):
            self.addCleanup(p.stopListening)
        records = fakemx.zone(
            {"good.example.test": [(10, "mx.elsewhere.test"), (20, "mx1.good.example.test")],
             "wrongname-not.example.test": [(10, "mx.wrongname-not.example.test")],
             "change.example.test": [(10, "mx.change.example.test")]},
            {"mx1.good.example.test": "127.0.0.2", "mx.elsewhere.test": "127.0.0.3",
             "mx.wrongname-not.example.test": "127.0.0.4", "mx.change.example.test": "127.0.0.4"})
        for name in ("good", "wrongname-not", "change"):
            domain = f"{name}.example.test"
            records[(f"mta-sts.{domain}", dns.A)] = [dns.Record_A(self.net.inside)]
            records[(f"_mta-sts.{domain}", dns.TXT)] = [dns.Record_TXT(b"v=STSv1; id=one")]
            records[(f"_smtp._tls.{domain}", dns.TXT)] = [
                dns.Record_TXT(b"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test")]
        dns_port, self.zone, ports = fakemx.start_dns(records)
        for p in ports:
            self.addCleanup(p.stopListening)
        self.dns = f"127.0.0.1:{dns_port}"
        self.site = Site(self)
        self.cafile = os.path.join(self.site.dir, "ca.pem")
        with open(https_ca, "rb") as f, open(self.cafile, "wb") as out:
            out.write(f.read() + ca.pem())  # the policy server's CA and the peers' CA
        os.chmod(self.cafile, 0o644)

    def start(self) -> None:
        self.site.mail_extra = (
            f"dns_resolver = {self.dns}\nsmtp_port = {self.port}\nmynetworks = 127.0.0.0/8\n"
            f"smtp_tls_CAfile = {self.cafile}\nsmtp_tlsrpt_enable = yes\n"
            "tlsrpt_organization_name = Example Org\n"
            "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n")
        self.site.config = self.site._write("mail.ini", self.site.ini())
        self.site.start()

    @defer.inlineCallbacks
    def wait_for(self, done: Any, seconds: float = 60) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done(self.site.maillog_text()):
            yield task.deferLater(reactor, 0.2, lambda: None)
        return self.site.maillog_text()

    @defer.inlineCallbacks
    def test_enforce_testing_and_the_daily_report(self) -> None:
        """enforce: the matching MX gets the mail over Verified TLS, the non-matching MX is
        never tried (logged), the wrong-name certificate defers 4.7.5; testing: delivered
        anyway (logged). The TLS-RPT counts of the day (written at stop) hold these
        sessions, and the next day's report run sends each domain an RFC 8460 report."""
        self.start()
        rcpts = ["bob@good.example.test", "bob@wrongname-not.example.test",
                 "bob@change.example.test"]

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=15) as s:
                return s.sendmail("boss@example.test", rcpts, message("sts", "hello\n"))

        yield threads.deferToThread(send)
        log = yield self.wait_for(lambda text: text.count("status=sent") >= 2
                                  and "status=deferred" in text)
        p = self.port
        self.assertRegex(log, r"smtp\[\d+\]: MTA-STS policy of good.example.test \(enforce\):"
                         r" not trying MX host mx.elsewhere.test: it matches no mx pattern"
                         r" \(\*.good.example.test\)")
        self.assertRegex(log, rf"Verified TLS connection established to"
                         rf" mx1.good.example.test\[127.0.0.2\]:{p}: TLSv1.3")
        self.assertRegex(log, r"to=<bob@good.example.test>, relay=mx1.good.example.test.*"
                         r"status=sent")
        self.assertEqual(self.peers["127.0.0.3"].received, [])
        self.assertRegex(log, rf"certificate verification failed for"
                         rf" mx.wrongname-not.example.test\[127.0.0.4\]:{p}: the certificate"
                         r" names none of mx.wrongname-not.example.test")
        self.assertRegex(log, r"to=<bob@wrongname-not.example.test>, .*dsn=4.7.5,"
                         r" status=deferred \(Server certificate not verified\)")
        self.assertRegex(log, rf"MTA-STS policy of change.example.test \(testing\):"
                         rf" mx.change.example.test\[127.0.0.4\]:{p} fails it"
                         r" \(certificate-host-mismatch: the certificate names none of"
                         r" mx.change.example.test\); delivering anyway")
        self.assertRegex(log, r"to=<bob@change.example.test>, .*status=sent")
        self.assertIn(("_mta-sts.good.example.test", dns.TXT), self.zone.queries)
        self.site.stop()  # the counts are written at stop

        clock = task.Clock()
        clock.advance(time.time() + 86400)
        store = TLSReportStore(os.path.join(self.site.dir, "queue", "tlsrpt", "counts.json"),
                               clock, inline)
        yield store.load()
        queue = Recorder()
        service = TLSReportService(store, MXResolver(self.dns, reactor=reactor), queue, clock,
                                   ReportSettings("Example Org", "postmaster@example.test",
                                                  "example.test", "tlsrpt@example.test",
                                                  "mail.example.test"))
        yield service.run()
        reports = {}
        for sender, addresses, data in queue.sent:
            self.assertEqual((sender, addresses), ("", ["tlsrpt@reports.test"]))
            report = report_json(data)
            self.assertEqual(report["organization-name"], "Example Org")
            (item,) = report["policies"]
            reports[item["policy"]["policy-domain"]] = item
        self.assertEqual(sorted(reports), ["change.example.test", "good.example.test",
                                           "wrongname-not.example.test"])
        good = reports["good.example.test"]
        self.assertEqual(good["policy"]["policy-type"], "sts")
        self.assertEqual(good["policy"]["mx-host"], ["*.good.example.test"])
        self.assertIn("mode: enforce", good["policy"]["policy-string"])
        self.assertEqual(good["summary"], {"total-successful-session-count": 1,
                                           "total-failure-session-count": 1})
        self.assertEqual([(d["result-type"], d["receiving-mx-hostname"])
                          for d in good["failure-details"]],
                         [("validation-failure", "mx.elsewhere.test")])
        wrong = reports["wrongname-not.example.test"]
        self.assertEqual(wrong["summary"]["total-successful-session-count"], 0)
        self.assertGreaterEqual(wrong["summary"]["total-failure-session-count"], 1)
        self.assertEqual({(d["result-type"], d["receiving-ip"])
                          for d in wrong["failure-details"]},
                         {("certificate-host-mismatch", "127.0.0.4")})
        change = reports["change.example.test"]
        self.assertIn("mode: testing", change["policy"]["policy-string"])
        self.assertEqual(change["summary"], {"total-successful-session-count": 0,
                                             "total-failure-session-count": 1})
        self.assertEqual(change["failure-details"][0]["result-type"],
                         "certificate-host-mismatch")


class SessionCountTests(FakeInternet):
    """The relay (in this process) over real sockets to test_outbound_tls's peers, with a
    TLS-RPT store and no MTA-STS: what each session's TLS step counts."""

    def counted(self, relay: Relay, domain: str) -> dict[str, Any]:
        store = relay.tls_reports
        (day,) = store.days.values()
        out = {}
        for key, entry in day[domain].items():
            results = sorted(json.loads(k)["result_type"] for k in entry["details"])
            out[json.loads(key)[0]] = (entry["ok"], entry["fail"], results)
        return out

    def counting(self, level: str) -> Relay:
        relay = self.relay(level)
        relay.tls_reports = TLSReportStore("", reactor, inline)
        return relay

    @defer.inlineCallbacks
    def test_no_policy_sessions(self) -> None:
        """Without a policy (no-policy-found): TLS with any certificate is a success; a peer
        without STARTTLS is starttls-not-supported; a broken handshake is validation-failure
        (then the plaintext retry, as Postfix, counts nothing more); all delivered at may."""
        relay = self.counting("may")
        for domain in ("self.test", "plain.test", "broken.test"):
            out = yield self.send("may", domain, relay)
            self.assertEqual((out.code, domain), (250, domain))
        self.assertEqual(self.counted(relay, "self.test"), {"no-policy-found": (1, 0, [])})
        self.assertEqual(self.counted(relay, "plain.test"),
                         {"no-policy-found": (0, 1, ["starttls-not-supported"])})
        self.assertEqual(self.counted(relay, "broken.test"),
                         {"no-policy-found": (0, 1, ["validation-failure"])})

    @defer.inlineCallbacks
    def test_dane_sessions(self) -> None:
        """DANE (authenticated TLSA): a match counts as a tlsa success, a TLSA record that
        matches nothing as tlsa-invalid (and the mail is deferred, as before)."""
        relay = self.counting("dane")
        out = yield self.send("dane", "dane.test", relay)
        self.assertEqual(out.code, 250)
        out = yield self.send("dane", "danebad.test", relay)
        self.assertEqual(out.status, "deferred")
        self.assertEqual(self.counted(relay, "dane.test")["tlsa"], (1, 0, []))
        self.assertEqual(self.counted(relay, "danebad.test")["tlsa"], (0, 1, ["tlsa-invalid"]))
