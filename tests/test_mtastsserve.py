"""Our own MTA-STS policy (mailsuite.mtastsserve) and its route in the autoconfig site: the
text from mail.ini, the TXT id derived from it, the Host check, and the mail.ini keys."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

from mailsuite import mtastsserve
from mailsuite.config import ConfigError, parse_config
from mailsuite.mta.mtasts import parse_policy, parse_txt_record
from twisted.internet.testing import StringTransport

from mailsuite import autoconfig
from tests.test_autoconfig import BASE


def config(extra: str = "") -> object:
    return parse_config(BASE.replace("[listen]", extra + "[listen]"), "mail.ini")


def http(cfg: object, method: bytes, host: bytes) -> tuple[int, str, bytes]:
    """One request for the policy path with ``host`` through build_site's protocol."""
    site = autoconfig.build_site(cfg)
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(method + b" /.well-known/mta-sts.txt HTTP/1.1\r\nHost: " + host
                       + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    head, _, content = transport.value().partition(b"\r\n\r\n")
    proto.connectionLost(None)
    return int(head.split(b" ", 2)[1]), head.decode(), content


def get(cfg: object, host: bytes) -> tuple[int, str, bytes]:
    return http(cfg, b"GET", host)


class PolicyTests(unittest.TestCase):
    def test_policy_text_is_a_valid_policy(self) -> None:
        """The served text parses with our own outbound parser: mode, mx (default
        myhostname), max_age (default 7 days)."""
        cfg = config("mta_sts_mode = enforce\n")
        policy = parse_policy(mtastsserve.policy_text(cfg).encode())
        self.assertEqual((policy.mode, policy.mx, policy.max_age),
                         ("enforce", ("mail.example.test",), 604800))
        cfg = config("mta_sts_mode = testing\nmta_sts_mx = mx1.example.test, *.mx.example.test\n"
                     "mta_sts_max_age = 1d\n")
        policy = parse_policy(mtastsserve.policy_text(cfg).encode())
        self.assertEqual((policy.mode, policy.mx, policy.max_age),
                         ("testing", ("mx1.example.test", "*.mx.example.test"), 86400))

    def test_id_follows_the_policy(self) -> None:
        """The TXT record is valid (3.1) and its id changes when, and only when, the policy
        text does."""
        one = config("mta_sts_mode = testing\n")
        record = parse_txt_record(mtastsserve.txt_record(one, "example.test")
                                  .split('"')[1])
        self.assertIsNotNone(record)
        same = mtastsserve.txt_record(config("mta_sts_mode = testing\n"), "example.test")
        other = mtastsserve.txt_record(config("mta_sts_mode = enforce\n"), "example.test")
        self.assertEqual(mtastsserve.txt_record(one, "example.test"), same)
        self.assertNotEqual(same.split("id=")[1], other.split("id=")[1])

    def test_command_prints_policy_and_records(self) -> None:
        """``python -m mailsuite.mtastsserve -C mail.ini`` prints the policy and one TXT
        line per domain of ours; a bad file is exit status 78."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(BASE.replace("[listen]", "mta_sts_mode = enforce\n[listen]"))
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(mtastsserve.main(["-C", path]), 0)
        text = out.getvalue()
        for domain in ("mail.example.test", "example.test", "other.test"):
            self.assertIn(f"_mta-sts.{domain}. IN TXT", text)
        self.assertIn("mode: enforce", text)
        with open(path, "a") as f:
            f.write("[audit]\nno_such_key = 1\n")
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            self.assertEqual(mtastsserve.main(["-C", path]), 78)

    def test_bad_keys_refused(self) -> None:
        """A bad mode, pattern or max_age is a ConfigError naming file, section and key."""
        with self.assertRaises(ConfigError) as caught:
            config("mta_sts_mode = strict\nmta_sts_mx = a.*.test\nmta_sts_max_age = 2y\n")
        text = "\n".join(caught.exception.errors)
        for key in ("mta_sts_mode", "mta_sts_mx", "mta_sts_max_age"):
            self.assertIn(f"mail.ini: [mail] {key}", text)


class RouteTests(unittest.TestCase):
    def test_served_for_our_mta_sts_hosts(self) -> None:
        """GET with Host mta-sts.DOMAIN (any of our domains, a port allowed) is the policy,
        text/plain."""
        cfg = config("mta_sts_mode = enforce\n")
        for host in (b"mta-sts.example.test", b"MTA-STS.other.test:443"):
            status, head, body = get(cfg, host)
            self.assertEqual(status, 200, host)
            self.assertIn("Content-Type: text/plain", head)
            self.assertEqual(body.decode(), mtastsserve.policy_text(cfg))

    def test_not_served_otherwise(self) -> None:
        """mode none (the default), another host name or a POST: 404 / not the policy."""
        self.assertEqual(get(config(), b"mta-sts.example.test")[0], 404)
        cfg = config("mta_sts_mode = enforce\n")
        self.assertEqual(get(cfg, b"mta-sts.elsewhere.test")[0], 404)
        self.assertEqual(get(cfg, b"example.test")[0], 404)
        status, _, body = http(cfg, b"POST", b"mta-sts.example.test")
        self.assertNotIn(b"STSv1", body)
        self.assertNotEqual(status, 200)


class AssemblyTests(unittest.TestCase):
    def test_tlsrpt_service_only_when_enabled(self) -> None:
        """smtp_tlsrpt_enable = yes adds the daily report service "tlsrpt" (its store in
        queue_directory/tlsrpt/, the one the SMTP client counts its sessions in); the default
        adds none. The SMTP client has the MTA-STS source (smtp_mta_sts_enable's default)."""
        from twisted.internet import reactor

        from mailsuite import tap
        from tests.test_tap import NONE_ELSE, write_config
        for extra, wanted in (("", False), ("smtp_tlsrpt_enable = yes\n", True)):
            path = write_config(self, "smtp = 2525\npop3 = no\nimap = no\n" + NONE_ELSE, extra)
            options = tap.Options()
            options.parseOptions(["--config", path])
            top = tap.build(options["cfg"], reactor)
            self.addCleanup(top.maillog.close)
            names = {s.name for s in top}
            self.assertEqual("tlsrpt" in names, wanted, names)
            if wanted:
                store = top.getServiceNamed("tlsrpt").store
                self.assertTrue(store.path.endswith("/queue/tlsrpt/counts.json"))
            relay = top.getServiceNamed("qmgr").queue.relay
            self.assertIs(relay.tls_reports, store if wanted else None)
            self.assertTrue(relay.mta_sts.path.endswith("/queue/mta-sts/policies.json"))

    def test_mta_sts_source(self) -> None:
        """build_mta_sts: the cache under queue_directory/mta-sts/, policies verified with
        smtp_tls_CAfile besides the system CAs, failed fetches counted when TLS-RPT is on;
        smtp_mta_sts_enable = no gives none."""
        from twisted.internet import reactor

        from mailsuite.mta.outbound import build_mta_sts, build_tls_reports
        from mailsuite.threads import inline
        cfg = config("queue_directory = /var/spool/x\nsmtp_tls_CAfile = /etc/ca.pem\n"
                     "smtp_tlsrpt_enable = yes\n")
        reports = build_tls_reports(cfg, reactor, inline, queue=None)
        sts = build_mta_sts(cfg, reactor, inline, reports.store)
        self.assertEqual(sts.path, "/var/spool/x/mta-sts/policies.json")
        trust = sts.fetcher.agent._endpointFactory.trust
        self.assertEqual((trust.cafile, trust.system), ("/etc/ca.pem", True))
        sts.report("a.test", None, "sts-policy-fetch-error", "down")
        self.assertEqual(len(reports.store.days), 1)
        reports.store._timer.cancel()  # its write a minute later is not this test's
        self.assertIsNone(build_mta_sts(config("smtp_mta_sts_enable = no\n"), reactor, inline))
