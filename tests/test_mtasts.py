"""MTA-STS (RFC 8461) without sockets: the TXT record and policy grammars (mailsuite.mta.mtasts),
MX matching and filtering, and the policy cache (mailsuite.mta.mtastscache) with a
task.Clock, a twisted.names zone in memory and a fake fetcher."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, task
from twisted.names import dns, error
from twisted.trial import unittest

from mailsuite.mta import mtasts
from mailsuite.mta.dns import MailHost, MXResolver
from mailsuite.mta.mtasts import PolicyError, StsPolicy, parse_policy, parse_txt
from mailsuite.mta.mtastscache import MtaSts, cache_path, load_cache
from mailsuite.mta.mtastsfetch import FetchError
from mailsuite.threads import inline
from tests.fakemx import ZoneResolver

GOOD = b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 86400\n"


class TxtRecordTests(unittest.TestCase):
    def test_valid_records(self) -> None:
        """3.1's grammar: v=STSv1 first, id of 1-32 letters/digits, optional trailing ';',
        spaces or tabs around ';', extension fields accepted and kept aside."""
        for text, record_id in [("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
                                ("v=STSv1;id=abc", "abc"),
                                ("v=STSv1 ;\tid=A1 ; ext.x=y-z", "A1"),
                                ("v=STSv1; id=" + "a" * 32, "a" * 32)]:
            record = mtasts.parse_txt_record(text)
            self.assertIsNotNone(record, text)
            assert record is not None
            self.assertEqual(record.id, record_id, text)
        self.assertEqual(mtasts.parse_txt_record("v=STSv1; id=1; ext.x=y").extensions,
                         {"ext.x": "y"})

    def test_invalid_records(self) -> None:
        """No id, a long or non-alphanumeric id, two ids, a wrong version, a field without
        '=', a value with a space: each is not a record."""
        for text in ["v=STSv1", "v=STSv1;", "v=STSv1; id=", "v=STSv1; id=" + "a" * 33,
                     "v=STSv1; id=ab-c", "v=STSv1; id=1; id=2", "v=STSv2; id=1",
                     "V=STSv1; id=1", "v=STSv1; id=1; junk", "v=STSv1; id=1; x=a b",
                     "v=STSv1 id=1", "id=1; v=STSv1"]:
            self.assertIsNone(mtasts.parse_txt_record(text), text)

    def test_answers(self) -> None:
        """Strings of one record are joined without spaces; other TXT records (SPF) are
        ignored; two STSv1 records, or one invalid, mean no policy."""
        self.assertEqual(parse_txt([[b"v=STSv1; ", b"id=12"]]).id, "12")
        self.assertEqual(parse_txt([[b"v=spf1 -all"], [b"v=STSv1; id=7"]]).id, "7")
        self.assertIsNone(parse_txt([[b"v=STSv1; id=1"], [b"v=STSv1; id=2"]]))
        self.assertIsNone(parse_txt([[b"v=STSv1; id=1"], [b"v=STSv1; bad"]]))
        self.assertIsNone(parse_txt([[b"v=STSv1; id=b@d"]]))
        # only records beginning "v=STSv1;" are counted: a bare "v=STSv1" is discarded
        self.assertEqual(parse_txt([[b"v=STSv1"], [b"v=STSv1;id=3"]]).id, "3")
        self.assertIsNone(parse_txt([]))


class PolicyTests(unittest.TestCase):
    def test_good_policy(self) -> None:
        """The four fields, CRLF or LF, unknown fields ignored, patterns in lower case."""
        policy = parse_policy(GOOD.replace(b"mail.", b"MAIL.").replace(b"\n", b"\r\n")
                              + b"x-future: anything goes\r\n", "Example.com")
        self.assertEqual((policy.mode, policy.max_age, policy.mx, policy.domain),
                         ("enforce", 86400, ("mail.example.com", "*.example.net"),
                          "example.com"))
        self.assertEqual(policy.lines[:2], ["version: STSv1", "mode: enforce"])

    def test_repeated_field_first_counts(self) -> None:
        """3.2: a repeated field other than mx counts once, the first."""
        policy = parse_policy(GOOD + b"mode: none\nmax_age: 5\n")
        self.assertEqual((policy.mode, policy.max_age), ("enforce", 86400))

    def test_mode_none_needs_no_mx(self) -> None:
        """mx is required except in mode none."""
        self.assertEqual(parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n").mx, ())
        with self.assertRaisesRegex(PolicyError, "no mx"):
            parse_policy(b"version: STSv1\nmode: testing\nmax_age: 10\n")

    def test_bad_policies(self) -> None:
        """Wrong or missing version, mode, max_age (over a year, not digits, 11 digits), a
        bad mx pattern (wildcard not left-most, empty label), a line without ':', not
        UTF-8: each is a PolicyError."""
        base = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 600\n"
        cases = [base.replace("STSv1", "STSv2"), base.replace("mode: enforce\n", ""),
                 base.replace("enforce", "Enforce"), base.replace("600", "31557601"),
                 base.replace("600", "-1"), base.replace("600", "12345678901"),
                 base.replace("max_age: 600\n", ""), base.replace("mx.example.com", "mx.*.com"),
                 base.replace("mx.example.com", "mx..com"), base.replace("mx.example.com", "*"),
                 base + "garbage\n", " " + base]
        for text in cases:
            with self.assertRaises(PolicyError, msg=text):
                parse_policy(text.encode())
        with self.assertRaisesRegex(PolicyError, "UTF-8"):
            parse_policy(base.encode() + b"x: \xff\n")

    def test_max_age_limit(self) -> None:
        """31557600 (a year) is the largest max_age allowed."""
        text = GOOD.replace(b"86400", b"31557600")
        self.assertEqual(parse_policy(text).max_age, 31557600)


class MatchTests(unittest.TestCase):
    policy = StsPolicy("enforce", 86400, ("mail.example.com", "*.example.net"))

    def test_exact_and_wildcard(self) -> None:
        """4.1: case-insensitive exact names; a wildcard stands for exactly one left-most
        label: *.example.net matches mx.example.net only, not example.net or a.b.example.net."""
        self.assertTrue(self.policy.matches("MAIL.example.com."))
        self.assertTrue(self.policy.matches("mx1.example.net"))
        self.assertFalse(self.policy.matches("example.net"))
        self.assertFalse(self.policy.matches("a.b.example.net"))
        self.assertFalse(self.policy.matches("other.example.com"))
        self.assertFalse(self.policy.matches("xmail.example.com"))
        self.assertFalse(self.policy.matches(""))

    def test_filter_hosts(self) -> None:
        """enforce drops the MX hosts matching no pattern; testing keeps them all and lists
        the bad ones (for TLS-RPT); none or no policy keeps all, none listed."""
        hosts = [MailHost("evil.example.org", ("192.0.2.1",)),
                 MailHost("mx1.example.net", ("192.0.2.2",))]
        self.assertEqual(mtasts.filter_hosts(self.policy, hosts), ([hosts[1]], [hosts[0]]))
        testing = StsPolicy("testing", 60, self.policy.mx)
        self.assertEqual(mtasts.filter_hosts(testing, hosts), (hosts, [hosts[0]]))
        none = StsPolicy("none", 60, ())
        self.assertEqual(mtasts.filter_hosts(none, hosts), (hosts, []))
        self.assertEqual(mtasts.filter_hosts(None, ["a", "b"]), (["a", "b"], []))


class FakeFetcher:
    """fetch(domain): the next of ``answers`` (bytes: a policy; an Exception: a failure)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.fetched: list[str] = []
        self.waiting: defer.Deferred[Any] | None = None

    def fetch(self, domain: str) -> defer.Deferred[StsPolicy]:
        self.fetched.append(domain)
        answer = self.answers.pop(0)
        if answer == "wait":
            self.waiting = defer.Deferred()
            return self.waiting
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(parse_policy(answer, domain))


class FailingTxt(ZoneResolver):
    """A zone whose TXT look-ups time out (a temporary DNS failure)."""

    def lookupText(self, name: bytes, timeout: Any = None) -> Any:
        return defer.fail(error.DNSServerError(name))


class CacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.zone = ZoneResolver({("_mta-sts.example.com", dns.TXT):
                                  [dns.Record_TXT(b"v=STSv1; id=one")]})
        self.names = MXResolver(resolver=self.zone)
        self.path = cache_path(self.mktemp())
        self.reports: list[tuple[str, Any, str, str]] = []

    def sts(self, fetcher: FakeFetcher, names: Any = None) -> MtaSts:
        return MtaSts(names or self.names, fetcher, self.clock, inline, self.path,
                      report=lambda *a: self.reports.append(a))

    def ask(self, sts: MtaSts, domain: str = "example.com") -> StsPolicy | None:
        return self.successResultOf(sts.policy_for(domain))

    def set_id(self, record_id: bytes) -> None:
        self.zone.records[("_mta-sts.example.com", dns.TXT)] = [
            dns.Record_TXT(b"v=STSv1; id=" + record_id)]

    def test_fetched_once_then_cached(self) -> None:
        """The first delivery fetches; the next ones, same TXT id, use the cache."""
        fetcher = FakeFetcher(GOOD)
        sts = self.sts(fetcher)
        self.assertEqual(self.ask(sts).mode, "enforce")
        self.clock.advance(3600)
        self.assertEqual(self.ask(sts).mx, ("mail.example.com", "*.example.net"))
        self.assertEqual(fetcher.fetched, ["example.com"])

    def test_id_change_fetches_again(self) -> None:
        """A new TXT id makes a new fetch, whose policy replaces the cached one."""
        fetcher = FakeFetcher(GOOD, GOOD.replace(b"enforce", b"testing"))
        sts = self.sts(fetcher)
        self.ask(sts)
        self.set_id(b"two")
        self.assertEqual(self.ask(sts).mode, "testing")
        self.assertEqual(sts.entries["example.com"].record_id, "two")
        self.assertEqual(len(fetcher.fetched), 2)

    def test_failed_fetch_keeps_cached_policy(self) -> None:
        """5.1: with a new id but a failing fetch, the cached policy still applies; the
        failure goes to TLS-RPT with the policy applied."""
        fetcher = FakeFetcher(GOOD, FetchError("sts-policy-fetch-error", "refused"))
        sts = self.sts(fetcher)
        self.ask(sts)
        self.set_id(b"two")
        self.assertEqual(self.ask(sts).mode, "enforce")
        self.assertEqual(sts.entries["example.com"].record_id, "one")
        self.assertEqual([(r[0], r[1].mode, r[2]) for r in self.reports],
                         [("example.com", "enforce", "sts-policy-fetch-error")])

    def test_failed_first_fetch_means_no_policy(self) -> None:
        """3.3: no cached policy and no fetch: deliver as without MTA-STS (None)."""
        sts = self.sts(FakeFetcher(FetchError("sts-webpki-invalid", "bad certificate")))
        self.assertIsNone(self.ask(sts))
        self.assertEqual(self.reports, [("example.com", None, "sts-webpki-invalid",
                                         "bad certificate")])

    def test_missing_txt_keeps_cache_but_never_fetches(self) -> None:
        """No TXT record: no fetch; a cached policy is kept and used (3.1's note)."""
        fetcher = FakeFetcher(GOOD)
        sts = self.sts(fetcher)
        self.assertIsNone(self.ask(sts, "nosts.example"))
        self.ask(sts)
        del self.zone.records[("_mta-sts.example.com", dns.TXT)]
        self.assertEqual(self.ask(sts).mode, "enforce")
        self.assertEqual(fetcher.fetched, ["example.com"])

    def test_dns_failure_uses_cache(self) -> None:
        """A TXT look-up that fails (SERVFAIL) uses the cached policy, else none."""
        fetcher = FakeFetcher(GOOD)
        sts = self.sts(fetcher)
        self.ask(sts)
        broken = MXResolver(resolver=FailingTxt({}))
        sts.names = broken
        self.assertEqual(self.ask(sts).mode, "enforce")
        self.assertIsNone(self.ask(sts, "other.example"))

    def test_expiry_and_refresh(self) -> None:
        """Past half of max_age the policy is fetched again (same id); past max_age an
        unrefreshed policy is gone: a failing fetch then means no policy."""
        fetcher = FakeFetcher(GOOD, GOOD.replace(b"86400", b"3600"),
                              FetchError("sts-policy-fetch-error", "down"))
        sts = self.sts(fetcher)
        self.ask(sts)
        self.clock.advance(43199)
        self.ask(sts)
        self.assertEqual(len(fetcher.fetched), 1)
        self.clock.advance(2)
        self.assertEqual(self.ask(sts).max_age, 3600)
        self.clock.advance(3600)
        self.assertIsNone(self.ask(sts))
        self.assertNotIn("example.com", sts.entries)

    def test_cache_survives_restart(self) -> None:
        """The cache file written after a fetch is read by the next MtaSts: no fetch then."""
        self.ask(self.sts(FakeFetcher(GOOD)))
        with open(self.path) as f:
            saved = json.load(f)
        self.assertEqual(saved["policies"]["example.com"]["id"], "one")
        self.assertEqual(oct(os.stat(self.path).st_mode & 0o777), "0o600")
        again = FakeFetcher()
        self.assertEqual(self.ask(self.sts(again)).mode, "enforce")
        self.assertEqual(again.fetched, [])

    def test_bad_cache_file_is_dropped(self) -> None:
        """A cache file that is not JSON, or an entry whose policy is invalid, is ignored."""
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("{not json")
        self.assertEqual(load_cache(self.path), {})
        with open(self.path, "w") as f:
            json.dump({"policies": {"a.test": {"id": "1", "fetched": 1, "text": "junk"},
                                    "b.test": {"id": "2"}}}, f)
        self.assertEqual(load_cache(self.path), {})

    def test_simultaneous_asks_share_one_fetch(self) -> None:
        """Two deliveries asking at once wait for the same fetch."""
        fetcher = FakeFetcher("wait")
        sts = self.sts(fetcher)
        first, second = sts.policy_for("example.com"), sts.policy_for("EXAMPLE.com.")
        self.assertNoResult(first)
        assert fetcher.waiting is not None
        fetcher.waiting.callback(parse_policy(GOOD, "example.com"))
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(fetcher.fetched, ["example.com"])

    def test_mode_none_replaces_policy(self) -> None:
        """A domain withdraws with mode none: it replaces the cached enforce policy and
        filter_hosts then keeps every MX."""
        fetcher = FakeFetcher(GOOD, b"version: STSv1\nmode: none\nmax_age: 86400\n")
        sts = self.sts(fetcher)
        self.ask(sts)
        self.set_id(b"gone")
        policy = self.ask(sts)
        self.assertEqual(policy.mode, "none")
        self.assertEqual(mtasts.filter_hosts(policy, ["evil.test"]), (["evil.test"], []))


    def test_failed_fetch_not_repeated_at_once(self) -> None:
        """After a failed fetch the same id is not fetched again for RETRY_AFTER (each
        delivery would wait for it); a new id is fetched at once; after the pause, again."""
        from mailsuite.mta.mtastscache import RETRY_AFTER
        fetcher = FakeFetcher(FetchError("sts-policy-fetch-error", "down"),
                              FetchError("sts-policy-fetch-error", "down"), GOOD)
        sts = self.sts(fetcher)
        self.assertIsNone(self.ask(sts))
        self.clock.advance(RETRY_AFTER - 1)
        self.assertIsNone(self.ask(sts))
        self.assertEqual(len(fetcher.fetched), 1)
        self.set_id(b"two")
        self.assertIsNone(self.ask(sts))
        self.assertEqual(len(fetcher.fetched), 2)
        self.clock.advance(RETRY_AFTER)
        self.assertEqual(self.ask(sts).mode, "enforce")
        self.assertEqual(len(self.reports), 2)

class DecisionTests(unittest.TestCase):
    """mailsuite.mta.stsdelivery.StsDecision: the 4.7.5 deferral and the TLS-RPT counts of
    one delivery (mailsuite.mta.stsroute makes it; tests/test_stsroute.py the choices)."""

    def setUp(self) -> None:
        from mailsuite.mta.tlsrpt import TLSReportStore
        self.clock = task.Clock()
        self.store = TLSReportStore("", self.clock, inline)
        self.hosts = [MailHost("evil.example.org", ("192.0.2.1",)),
                      MailHost("mx1.example.net", ("192.0.2.2",))]

    def decision(self, policy_text: bytes | None, hosts: list[Any],
                 refused: list[Any]) -> Any:
        from mailsuite.mta.stsdelivery import StsDecision
        policy = None if policy_text is None else parse_policy(policy_text, "example.com")
        return StsDecision("example.com", policy, hosts, refused, self.store)

    def counts(self) -> dict[str, Any]:
        return self.store.days["1970-01-01"]["example.com"]

    def test_sessions_counted_under_the_policy(self) -> None:
        """A session under an active policy counts under it: a failure with its result type,
        a success as ok."""
        decision = self.decision(GOOD, [self.hosts[1]], [self.hosts[0]])
        decision.record("evil.example.org", result_type="validation-failure")
        (entry,) = self.counts().values()
        self.assertEqual((entry["ok"], entry["fail"]), (0, 1))
        self.assertIn("validation-failure", next(iter(entry["details"])))
        decision.record("mx1.example.net", "192.0.2.2")
        self.assertEqual(next(iter(self.counts().values()))["ok"], 1)

    def test_enforce_without_matching_host_defers(self) -> None:
        """No MX host matches: a 4.7.5 deferral naming the hosts."""
        code, dsn, text = self.decision(GOOD, [], self.hosts[:1]).no_host
        self.assertEqual((code, dsn), (450, "4.7.5"))
        self.assertIn("evil.example.org", text)

    def test_no_policy_counts_as_no_policy_found(self) -> None:
        """No policy (or mode none): sessions are counted as no-policy-found."""
        decision = self.decision(None, self.hosts, [])
        self.assertFalse(decision.active)
        decision.record("evil.example.org", "192.0.2.1", "starttls-not-supported")
        (key,) = self.counts()
        self.assertIn("no-policy-found", key)


class ConfigValueTests(unittest.TestCase):
    def test_values(self) -> None:
        """mta_sts_mode, mta_sts_mx and mta_sts_max_age convert and refuse clearly."""
        self.assertEqual(mtasts.parse_mode(" Enforce "), "enforce")
        self.assertRaises(ValueError, mtasts.parse_mode, "strict")
        self.assertEqual(mtasts.parse_mx_patterns("mx.a.test, *.b.test"),
                         ("mx.a.test", "*.b.test"))
        self.assertRaisesRegex(ValueError, "a.\\*.test", mtasts.parse_mx_patterns, "a.*.test")
        self.assertEqual(mtasts.parse_max_age("7d"), 604800)
        self.assertEqual(mtasts.parse_max_age("86400"), 86400)
        self.assertRaisesRegex(ValueError, "limit", mtasts.parse_max_age, "400d")
