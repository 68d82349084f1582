"""The metrics of ``[listen] metrics`` (mailsuite.metrics): counters from the maillog's lines,
gauges of the running parts, the listener's address, the two pages."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from mailsuite import metrics
from mailsuite.configvalues import parse_listen_address
from mailsuite.limits import Counter
from mailsuite.maillog import MailLog


def value(m: metrics.Metrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class ObserveTests(unittest.TestCase):
    """Each line shape the server writes (Postfix's and Dovecot's) counts once, where it
    belongs; other lines count nothing."""

    def setUp(self) -> None:
        self.m = metrics.Metrics(now=lambda: 100.0)
        self.log = MailLog(None, "mail.example.test", now=lambda: 0.0)
        self.log.observers.append(self.m.observe)

    def test_smtpd_connects_and_rejects(self) -> None:
        w = self.log.write
        w("smtpd", "connect from unknown[198.51.100.7]")
        w("submission/smtpd", "connect from unknown[198.51.100.7]")
        w("smtpd", "NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 <a@b.example>:"
                   " Relay access denied; from=<x@y> to=<a@b.example> proto=ESMTP helo=<h>")
        w("smtpd", "NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 550 5.1.1 <nobody@example"
                   ".test>: Recipient address rejected: User unknown in local recipient table;"
                   " from=<x@y> to=<nobody@example.test> proto=ESMTP helo=<h>")
        w("smtpd", "NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 Service"
                   " unavailable; Client host [198.51.100.7] blocked using zen.example;"
                   " from=<x@y> to=<a@example.test> proto=ESMTP helo=<h>")
        w("smtpd", "ABCDEF0123: reject: DATA from unknown[198.51.100.7]: 552 5.3.4 Message"
                   " size exceeds fixed limit; from=<x@y> proto=ESMTP helo=<h>")
        self.assertEqual(value(self.m, "mailsuite_smtpd_connects_total", service="smtp"), 1)
        self.assertEqual(value(self.m, "mailsuite_smtpd_connects_total", service="submission"),
                         1)
        self.assertEqual(value(self.m, "mailsuite_smtpd_rejects_total", stage="RCPT",
                               code="554", reason="relay_denied"), 1)
        self.assertEqual(value(self.m, "mailsuite_smtpd_rejects_total", stage="RCPT",
                               code="550", reason="unknown_recipient"), 1)
        self.assertEqual(value(self.m, "mailsuite_smtpd_rejects_total", stage="RCPT",
                               code="554", reason="dnsbl"), 1)
        self.assertEqual(value(self.m, "mailsuite_smtpd_rejects_total", stage="DATA",
                               code="552", reason="other"), 1)

    def test_deliveries_and_their_delay(self) -> None:
        w = self.log.write
        w("local", "ABCDEF0123: to=<boss@example.test>, relay=local, delay=0.12,"
                   " delays=0.1/0/0/0.02, dsn=2.0.0, status=sent (delivered to mailbox)")
        w("smtp", "ABCDEF0124: to=<a@remote.example>, relay=mx.remote.example[192.0.2.1]:25,"
                  " delay=4, delays=0/0/3/1, dsn=4.4.1, status=deferred (connect timed out)")
        w("smtp", "ABCDEF0125: to=<a@remote.example>, relay=none, delay=0, delays=0/0/0/0,"
                  " dsn=5.4.4, status=bounced (Host not found)")
        w("qmgr", "ABCDEF0126: from=<x@y>, size=300, nrcpt=1 (queue active)")
        self.assertEqual(value(self.m, "mailsuite_deliveries_total", transport="local",
                               status="sent"), 1)
        self.assertEqual(value(self.m, "mailsuite_deliveries_total", transport="smtp",
                               status="deferred"), 1)
        self.assertEqual(value(self.m, "mailsuite_deliveries_total", transport="smtp",
                               status="bounced"), 1)
        self.assertEqual(value(self.m, "mailsuite_delivery_delay_seconds_count",
                               transport="smtp"), 2)
        self.assertEqual(value(self.m, "mailsuite_delivery_delay_seconds_bucket",
                               transport="local", le="0.25"), 1)
        self.assertEqual(value(self.m, "mailsuite_delivery_delay_seconds_bucket",
                               transport="local", le="0.1"), 0)

    def test_logins_by_protocol_and_result(self) -> None:
        w = self.log.write
        w("imap-login", "Login: user=<boss>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1")
        w("imap-login", "Aborted login (auth failed, 1 attempts): user=<boss>, method=PLAIN,"
                        " rip=127.0.0.1, lip=127.0.0.1")
        w("pop3-login", "Login: user=<boss>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1")
        w("smtpd", "warning: unknown[198.51.100.7]: SASL PLAIN authentication failed:"
                   " authentication failure")
        w("submission/smtpd", "ABCDEF0123: client=unknown[198.51.100.7], sasl_method=PLAIN,"
                              " sasl_username=boss")
        w("imap", "boss: Logged out in=10 out=200")
        for protocol, result, n in (("imap", "ok", 1), ("imap", "failed", 1), ("pop3", "ok", 1),
                                    ("smtp", "failed", 1), ("smtp", "ok", 1),
                                    ("pop3", "failed", 0)):
            self.assertEqual(value(self.m, "mailsuite_logins_total", protocol=protocol,
                                   result=result), n, (protocol, result))

    def test_filter_verdicts(self) -> None:
        w = self.log.write
        w("cleanup", "ABCDEF0123: milter-reject: END-OF-MESSAGE from unknown[198.51.100.7]:"
                     " 5.7.1 Spam message rejected; from=<x@y> to=<boss@example.test>")
        w("cleanup", "ABCDEF0124: milter-hold: END-OF-MESSAGE from unknown[198.51.100.7]:"
                     " milter triggers HOLD action; from=<x@y> to=<boss@example.test>")
        w("cleanup", "ABCDEF0125: reject: header Subject: buy now from unknown[198.51.100.7];"
                     " from=<x@y> to=<boss@example.test>: 5.7.1 no spam")
        w("cleanup", "ABCDEF0126: message-id=<1@y>")
        w("dkim", "ABCDEF0127: DKIM-Signature field added (s=202612, d=example.test)")
        self.assertEqual(value(self.m, "mailsuite_filter_verdicts_total", filter="milter",
                               verdict="reject"), 1)
        self.assertEqual(value(self.m, "mailsuite_filter_verdicts_total", filter="milter",
                               verdict="hold"), 1)
        self.assertEqual(value(self.m, "mailsuite_filter_verdicts_total", filter="checks",
                               verdict="reject"), 1)
        self.assertEqual(value(self.m, "mailsuite_filter_verdicts_total", filter="dkim",
                               verdict="signed"), 1)


class GaugeTests(unittest.TestCase):
    def test_sessions_queue_and_uptime(self) -> None:
        """Read at the scrape: sessions per service, queued messages by state, uptime."""
        hold = self.mktemp()
        import os
        os.makedirs(hold)
        for name in ("A1", "A2", ".tmp"):
            open(os.path.join(hold, name), "w").close()
        limits: Any = type("L", (), {"sessions": Counter()})()
        limits.sessions.add("imap")
        limits.sessions.add("imap")
        limits.sessions.add("smtp")
        queue: Any = type("Q", (), {"_running": {"A"}, "envelopes": {"A": 1, "B": 2, "C": 3},
                                    "directory": type("D", (), {"hold": hold})()})()
        clock = [100.0]
        m = metrics.Metrics(now=lambda: clock[0])
        m.watch(limits, queue)
        clock[0] = 130.0
        self.assertEqual(value(m, "mailsuite_sessions", service="imap"), 2)
        self.assertEqual(value(m, "mailsuite_sessions", service="smtp"), 1)
        self.assertEqual(value(m, "mailsuite_queue_messages", state="active"), 1)
        self.assertEqual(value(m, "mailsuite_queue_messages", state="deferred"), 2)
        self.assertEqual(value(m, "mailsuite_queue_messages", state="hold"), 2)
        self.assertEqual(value(m, "mailsuite_uptime_seconds"), 30)
        self.assertIn(b"mailsuite_sessions{service=\"imap\"} 2.0", generate_latest(m.registry))


class SiteTests(unittest.TestCase):
    def render(self, site: Any, path: bytes) -> tuple[int, bytes]:
        request = DummyRequest(path.strip(b"/").split(b"/"))
        request.uri = path
        child = site.resource
        for part in path.strip(b"/").split(b"/"):
            child = child.getChildWithDefault(part, request)
        body = child.render(request)
        out = body if isinstance(body, bytes) else b"".join(request.written)
        return request.responseCode or 200, out

    def test_metrics_health_and_nothing_else(self) -> None:
        log = MailLog(None, "mail.example.test", now=lambda: 0.0)
        site = metrics.serve(log)
        log.write("smtpd", "connect from unknown[198.51.100.7]")
        code, text = self.render(site, b"/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'mailsuite_smtpd_connects_total{service="smtp"} 1.0', text)
        code, text = self.render(site, b"/health")
        self.assertEqual(code, 200)
        self.assertTrue(text.startswith(b"ok uptime="))
        code, _ = self.render(site, b"/config")
        self.assertEqual(code, 404)


class ListenAddressTests(unittest.TestCase):
    def test_forms(self) -> None:
        """ADDRESS:PORT, [IPv6]:PORT, a port alone on loopback, no/empty off; others refused."""
        self.assertEqual(parse_listen_address("127.0.0.1:9154"), ("127.0.0.1", 9154))
        self.assertEqual(parse_listen_address("[::1]:9154"), ("::1", 9154))
        self.assertEqual(parse_listen_address("9154"), ("127.0.0.1", 9154))
        self.assertIsNone(parse_listen_address("no"))
        self.assertIsNone(parse_listen_address(""))
        for bad in ("localhost:9154", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":9154",
                    "::1:9154"):
            self.assertRaises(ValueError, parse_listen_address, bad)


class ReloadTests(unittest.TestCase):
    def test_a_reload_keeps_the_counters(self) -> None:
        """The parts built again by a reload (mailsuite.reload) serve the same counters, the
        maillog's lines counted once, and the gauges of the new parts."""
        log = MailLog(None, "mail.example.test", now=lambda: 0.0)
        first = metrics.serve(log)
        log.write("smtpd", "connect from unknown[198.51.100.7]")
        limits: Any = type("L", (), {"sessions": Counter()})()
        limits.sessions.add("smtp")
        second = metrics.serve(log, limits, None, ("smtp",))
        log.write("smtpd", "connect from unknown[198.51.100.8]")
        self.assertEqual(len(log.observers), 1)
        for site in (first, second):
            text = SiteTests.render(self, site, b"/metrics")[1]  # type: ignore[arg-type]
            self.assertIn(b'mailsuite_smtpd_connects_total{service="smtp"} 2.0', text)
            self.assertIn(b'mailsuite_sessions{service="smtp"} 1.0', text)


class HostileTextTests(unittest.TestCase):
    def test_no_series_from_what_clients_write(self) -> None:
        """A user name or an address shaped like our fields (``x, delay=1,, status=w0``) makes
        no series: only delivery programs' lines count, with statuses of a fixed set, from the
        fields after the address."""
        m = metrics.Metrics(now=lambda: 0.0)
        log = MailLog(None, "mail.example.test", now=lambda: 0.0)
        log.observers.append(m.observe)
        for i in range(3):
            log.write("imap-login", f"Aborted login (auth failed, 1 attempts): user=<x, delay=1,"
                                    f", status=w{i}>, method=PLAIN, rip=1.2.3.4, lip=1.2.3.4")
        log.write("local", 'ABCDEF0123: to=<"a, delay=9, dsn=5.0.0, status=bounced"@example.test>'
                           ", relay=local, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent"
                           " (delivered to mailbox)")
        text = generate_latest(m.registry).decode()
        self.assertNotIn("status=\"w", text)
        self.assertNotIn("imap-login", text)
        self.assertEqual(value(m, "mailsuite_deliveries_total", transport="local",
                               status="sent"), 1)
        self.assertEqual(value(m, "mailsuite_deliveries_total", transport="local",
                               status="bounced"), 0)
