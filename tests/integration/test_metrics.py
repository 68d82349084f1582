"""``[listen] metrics`` on the real server (privilege separation on, as root): the counters
Prometheus reads move with what clients do, and ``/health`` answers."""

from __future__ import annotations

import imaplib
import smtplib
import time
import urllib.request

from twisted.trial import unittest

from tests.integration.harness import Site, free_port


class MetricsSite(Site):
    def __init__(self, testcase: unittest.TestCase) -> None:
        super().__init__(testcase)
        self.metrics_port = free_port()
        self.config = self._write("mail.ini", self.ini())

    def ini(self) -> str:
        text = super().ini()
        port = getattr(self, "metrics_port", None)
        return text if port is None else text.replace(
            "[listen]\n", f"[listen]\nmetrics = 127.0.0.1:{port}\n", 1)


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class MetricsTests(unittest.TestCase):
    def fetch(self, site: MetricsSite, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{site.metrics_port}{path}",
                                    timeout=10) as answer:
            return answer.status, answer.read().decode()

    def test_counters_follow_the_clients(self) -> None:
        site = MetricsSite(self)
        site.start()
        # (the harness's start probed each port once: a connection counted already)
        before = sample(self.fetch(site, "/metrics")[1],
                        'mailsuite_smtpd_connects_total{service="smtp"}')
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as smtp:
            smtp.sendmail("x@remote.example", ["boss@example.test"],
                          b"Subject: hi\r\n\r\nhello\r\n")
            smtp.docmd("MAIL FROM:<x@remote.example>")
            code, _ = smtp.docmd("RCPT TO:<someone@elsewhere.example>")
            self.assertEqual(code, 554)
        imap = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=30)
        with self.assertRaises(imaplib.IMAP4.error):
            imap.login("boss", "wrong")
        imap.login("boss", "secret")
        deadline = time.monotonic() + 20
        while True:
            status, text = self.fetch(site, "/metrics")
            self.assertEqual(status, 200)
            wanted = {
                'mailsuite_smtpd_connects_total{service="smtp"}': before + 1,
                'mailsuite_smtpd_rejects_total{code="554",reason="relay_denied",stage="RCPT"}': 1,
                'mailsuite_deliveries_total{status="sent",transport="local"}': 1,
                'mailsuite_logins_total{protocol="imap",result="failed"}': 1,
                'mailsuite_logins_total{protocol="imap",result="ok"}': 1,
                'mailsuite_sessions{service="imap"}': 1,
            }
            got = {name: sample(text, name) for name in wanted}
            if got == wanted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        imap.logout()
        self.assertEqual(got, wanted, text)
        self.assertIn('mailsuite_queue_messages{state="deferred"} 0.0', text)
        self.assertIn("mailsuite_delivery_delay_seconds_count", text)
        status, text = self.fetch(site, "/health")
        self.assertEqual((status, text[:3]), (200, "ok "))
