"""TLS-RPT (RFC 8460) without sockets: the counter store (mailsuite.mta.tlsrpt), the report
JSON against 4.4's fields, the _smtp._tls record, the report mail and the daily timer
(mailsuite.mta.tlsrptmail) with a task.Clock, a zone in memory and a fake queue."""

from __future__ import annotations

import base64
import calendar
import email
import email.policy
import gzip
import json
import os
from typing import Any

from twisted.internet import defer, task
from twisted.names import dns
from twisted.trial import unittest

from mailsuite.mta.dns import MXResolver
from mailsuite.mta.mtasts import parse_policy
from mailsuite.mta.tlsrpt import TLSReportStore, TLSResult, build_report, store_path
from mailsuite.mta.tlsrptmail import (
    ReportSettings,
    TLSReportService,
    mailto_addresses,
    parse_tlsrpt_txt,
    report_message,
)
from mailsuite.threads import inline
from tests.fakemx import ZoneResolver

POLICY = parse_policy(b"version: STSv1\nmode: testing\nmx: *.mail.example.com\nmax_age: 86400\n",
                      "example.com")
DAY = calendar.timegm((2026, 12, 1, 10, 0, 0))  # 2026-12-01 10:00 UTC
SETTINGS = ReportSettings("Example Sender", "postmaster@sender.test", "sender.test",
                          "noreply@sender.test", "mail.sender.test")

#: RFC 8460 4.4: the members of a report, of a policy entry, of a policy and of a detail
REPORT_KEYS = {"organization-name", "date-range", "contact-info", "report-id", "policies"}
POLICY_KEYS = {"policy-type", "policy-string", "policy-domain", "mx-host"}
DETAIL_KEYS = {"result-type", "sending-mta-ip", "receiving-mx-hostname", "receiving-mx-helo",
               "receiving-ip", "failed-session-count", "additional-information",
               "failure-reason-code"}


class FakeQueue:
    def __init__(self) -> None:
        self.submitted: list[tuple[str, list[str], bytes]] = []

    def submit(self, sender: str, addresses: list[str], data: bytes) -> defer.Deferred[Any]:
        self.submitted.append((sender, addresses, data))
        return defer.succeed(None)


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(DAY)
        self.path = store_path(self.mktemp())
        self.store = TLSReportStore(self.path, self.clock, inline)

    def fill(self) -> None:
        ok = TLSResult.for_sts(POLICY, receiving_mx_hostname="mx1.mail.example.com")
        for _ in range(3):
            self.store.record("Example.com.", ok)
        bad = TLSResult.for_sts(POLICY, result_type="certificate-expired",
                                sending_mta_ip="198.51.100.1",
                                receiving_mx_hostname="mx2.mail.example.com",
                                receiving_ip="203.0.113.5")
        self.store.record("example.com", bad)
        self.store.record("example.com", bad)
        self.store.record("example.com", TLSResult("no-policy-found"))

    def test_counts_per_policy_and_failure(self) -> None:
        """Results of one domain and policy add up; each distinct failure is its own
        failure-details entry with its count; another policy type is its own entry."""
        self.fill()
        report = build_report("2026-12-01", "example.com", self.store.days["2026-12-01"]
                              ["example.com"], "Example Sender", "postmaster@sender.test", "ID1")
        sts, none = sorted(report["policies"], key=lambda p: p["policy"]["policy-type"],
                           reverse=True)
        self.assertEqual(sts["summary"], {"total-successful-session-count": 3,
                                          "total-failure-session-count": 2})
        self.assertEqual(sts["failure-details"], [{
            "result-type": "certificate-expired", "sending-mta-ip": "198.51.100.1",
            "receiving-mx-hostname": "mx2.mail.example.com", "receiving-ip": "203.0.113.5",
            "failed-session-count": 2}])
        self.assertEqual(none["policy"], {"policy-type": "no-policy-found",
                                          "policy-domain": "example.com"})

    def test_report_shape(self) -> None:
        """4.4: the report's members, RFC 3339 UTC date-range of the whole day, the policy
        with policy-string (the policy's lines) and mx-host, and only 4.4's detail names."""
        self.fill()
        report = build_report("2026-12-01", "example.com",
                              self.store.days["2026-12-01"]["example.com"], "Org", "c@x", "ID1")
        self.assertEqual(set(report), REPORT_KEYS)
        self.assertEqual(report["date-range"], {"start-datetime": "2026-12-01T00:00:00Z",
                                                "end-datetime": "2026-12-01T23:59:59Z"})
        for entry in report["policies"]:
            self.assertLessEqual(set(entry["policy"]), POLICY_KEYS)
            self.assertEqual(set(entry["summary"]), {"total-successful-session-count",
                                                     "total-failure-session-count"})
            for detail in entry.get("failure-details", []):
                self.assertLessEqual(set(detail), DETAIL_KEYS)
                self.assertIn("result-type", detail)
        sts = next(p for p in report["policies"] if p["policy"]["policy-type"] == "sts")
        self.assertEqual(sts["policy"]["policy-string"], [
            "version: STSv1", "mode: testing", "mx: *.mail.example.com", "max_age: 86400"])
        self.assertEqual(sts["policy"]["mx-host"], ["*.mail.example.com"])
        json.dumps(report)

    def test_unknown_names_refused(self) -> None:
        """A policy type or result type not in RFC 8460 is a programming error: refused."""
        self.assertRaises(ValueError, TLSResult, "dane")
        self.assertRaises(ValueError, TLSResult, "sts", result_type="bad-cert")

    def test_durable_and_flushed_by_timer(self) -> None:
        """Counts reach the file FLUSH_INTERVAL after a record (not at each one) and a new
        store reads them back."""
        self.fill()
        self.assertFalse(os.path.exists(self.path))
        self.clock.advance(60)
        self.assertTrue(os.path.exists(self.path))
        again = TLSReportStore(self.path, self.clock, inline)
        self.successResultOf(again.load())
        self.assertEqual(again.days, self.store.days)

    def test_days_are_utc(self) -> None:
        """A result after UTC midnight counts for the new day; the old one is closed."""
        self.store.record("a.test", TLSResult())
        self.clock.advance(14 * 3600)
        self.store.record("a.test", TLSResult())
        self.assertEqual(sorted(self.store.days), ["2026-12-01", "2026-12-02"])
        self.assertEqual(self.store.closed_days(), ["2026-12-01"])


class RecordTests(unittest.TestCase):
    def test_txt(self) -> None:
        """3: one v=TLSRPTv1 record with rua; several, none, or invalid: no reports."""
        self.assertEqual(parse_tlsrpt_txt([[b"v=TLSRPTv1; rua=mailto:r@example.com"]]),
                         ["mailto:r@example.com"])
        self.assertEqual(parse_tlsrpt_txt([[b"v=TLSRPTv1;rua=mailto:a@x.test,", b" https://"
                                            b"r.x.test/tls;"], [b"v=spf1 -all"]]),
                         ["mailto:a@x.test", "https://r.x.test/tls"])
        for bad in ([[b"v=TLSRPTv1; rua=mailto:a@x"], [b"v=TLSRPTv1; rua=mailto:b@x"]],
                    [[b"v=TLSRPTv1"]], [[b"v=TLSRPTv1; rua="]], [[b"v=TLSRPTv2; rua=mailto:a@x"]],
                    [[b"v=TLSRPTv1; rua=not a uri"]], []):
            self.assertIsNone(parse_tlsrpt_txt(bad), bad)
        self.assertEqual(mailto_addresses(["mailto:tls%2Brpt@x.test?subject=hi",
                                           "https://x.test/", "mailto:bad"]), ["tls+rpt@x.test"])

    def test_message(self) -> None:
        """5.3: multipart/report; report-type="tlsrpt", TLS-Report-Domain/-Submitter, the
        Subject naming domain, submitter and report id, and the gzip attachment (named
        submitter!domain!begin!end!id.json.gz) that holds the JSON."""
        report = {"report-id": "R1", "policies": []}
        raw = report_message(SETTINGS, "example.com", "2026-12-01", report, DAY)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "tlsrpt")
        self.assertEqual(msg["TLS-Report-Domain"], "example.com")
        self.assertEqual(msg["TLS-Report-Submitter"], "sender.test")
        self.assertEqual(msg["Subject"],
                         "Report Domain: example.com Submitter: sender.test Report-ID: <R1>")
        part = next(p for p in msg.iter_parts() if p.get_content_type() ==
                "application/tlsrpt+gzip")
        name = part.get_filename()
        start = calendar.timegm((2026, 12, 1, 0, 0, 0))
        self.assertRegex(name, rf"^sender\.test!example\.com!{start}!{start + 86399}![0-9a-f]+"
                               r"\.json\.gz$")
        body = gzip.decompress(base64.b64decode(part.get_payload()))
        self.assertEqual(json.loads(body), report)


class TimerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(DAY)
        self.zone = ZoneResolver({
            ("_smtp._tls.example.com", dns.TXT): [
                dns.Record_TXT(b"v=TLSRPTv1; rua=mailto:tlsrpt@example.com")],
            ("noreports.test", dns.A): [dns.Record_A("192.0.2.1")]})
        self.queue = FakeQueue()
        self.path = store_path(self.mktemp())
        self.store = TLSReportStore(self.path, self.clock, inline)
        self.service = TLSReportService(self.store, MXResolver(resolver=self.zone), self.queue,
                                        self.clock, SETTINGS)

    def test_daily_run(self) -> None:
        """Nothing goes before the day is over; 15 minutes after UTC midnight the report of
        the closed day goes through the queue, from <>, to the rua address; a domain without
        a record is dropped silently; the reported day is forgotten and written."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.store.record("example.com", TLSResult.for_sts(POLICY))
        self.store.record("noreports.test", TLSResult())
        self.clock.advance(13 * 3600)  # 23:00
        self.assertEqual(self.queue.submitted, [])
        self.clock.advance(3600 + 15 * 60)  # 00:15 the next day
        self.assertEqual([(s, a) for s, a, _ in self.queue.submitted],
                         [("", ["tlsrpt@example.com"])])
        self.assertEqual(self.store.days, {})
        with open(self.path) as f:
            self.assertEqual(json.load(f)["days"], {})
        self.store.record("example.com", TLSResult.for_sts(POLICY))
        self.clock.advance(86400)
        self.assertEqual(len(self.queue.submitted), 2)

    def test_counts_left_before_a_restart_are_reported(self) -> None:
        """A day counted by the server before a restart is reported by the next one."""
        self.store.record("example.com", TLSResult.for_sts(POLICY))
        self.successResultOf(self.store.flush())
        self.clock.advance(86400)
        store = TLSReportStore(self.path, self.clock, inline)
        service = TLSReportService(store, MXResolver(resolver=self.zone), self.queue,
                                   self.clock, SETTINGS)
        service.startService()
        self.addCleanup(service.stopService)
        self.clock.advance(service.delay())
        self.assertEqual(len(self.queue.submitted), 1)

    def test_delay(self) -> None:
        """The next run is at 00:15 UTC: from 10:00, 14h15m away."""
        self.assertEqual(self.service.delay(), 14 * 3600 + 15 * 60)


class FetchFailureTests(unittest.TestCase):
    def test_reporter_counts_fetch_failures(self) -> None:
        """MtaSts's report hook records a failed fetch as an sts failure of its result type,
        with the cached policy's strings when one applied, none without."""
        from mailsuite.mta.tlsrpt import sts_fetch_reporter
        clock = task.Clock()
        store = TLSReportStore("", clock, inline)
        report = sts_fetch_reporter(store)
        report("example.com", None, "sts-policy-fetch-error", "timed out")
        report("example.com", POLICY, "sts-webpki-invalid", "bad certificate")
        built = build_report("1970-01-01", "example.com", store.days["1970-01-01"]
                             ["example.com"], "Org", "c@x", "ID")
        kinds = sorted((p["policy"].get("policy-string", []) != [],
                        p["failure-details"][0]["result-type"]) for p in built["policies"])
        self.assertEqual(kinds, [(False, "sts-policy-fetch-error"),
                                 (True, "sts-webpki-invalid")])


class RealQueueTests(unittest.TestCase):
    def test_report_goes_out_through_the_queue(self) -> None:
        """With the real queue manager (mailsuite.mta.queue.Queue, fake transports): the
        report is queued from <> with its Message-Id logged, and relayed to the rua
        address's domain."""
        from mailsuite.maillog import MailLog
        from mailsuite.mta.queue import Queue, QueueSettings
        from mailsuite.mta.queuefile import QueueDirectory
        from tests.test_queue import FakeLocal, FakeRelay, sync
        clock = task.Clock()
        clock.advance(DAY)
        relay = FakeRelay()
        maillog = MailLog(None, "mail.sender.test", now=clock.seconds)
        queue = Queue(QueueDirectory(self.mktemp()), FakeLocal(), relay, maillog, clock,
                      QueueSettings("mail.sender.test"), sync)
        self.successResultOf(queue.start())
        zone = ZoneResolver({("_smtp._tls.example.com", dns.TXT): [
            dns.Record_TXT(b"v=TLSRPTv1; rua=mailto:tlsrpt@example.com")]})
        store = TLSReportStore("", clock, inline)
        reports = TLSReportService(store, MXResolver(resolver=zone), queue, clock, SETTINGS)
        reports.startService()
        self.addCleanup(reports.stopService)
        self.addCleanup(queue.stop)
        store.record("example.com", TLSResult.for_sts(POLICY, result_type="starttls-not-supported",
                                                      receiving_mx_hostname="mx.example.com"))
        clock.advance(reports.delay())
        clock.advance(0)
        self.assertEqual(relay.calls, [("example.com", ["tlsrpt@example.com"])])
        log = "\n".join(maillog.lines)
        self.assertRegex(log, r"cleanup\[\d+\]: \w+: message-id=<tlsrpt\.")
        self.assertIn("from=<>", log)
